from django.contrib.auth import views as auth_views
from django.urls import path

from apikeys.portal import api_keys
from portal import consoles, scheduling_views, views, vouchers_views

app_name = "portal"

urlpatterns = [
    path("", views.home, name="home"),
    path("products/", views.products, name="products"),
    path("inventory/", views.inventory, name="inventory"),
    path("instruments/<int:pk>/", views.instrument, name="instrument"),
    path("organisation/", views.organisation_switch, name="organisation-switch"),
    path("orders/", views.orders, name="orders"),
    path("wallet/", views.wallet, name="wallet"),
    path("wallet/statement.csv", views.statement_csv, name="statement-csv"),
    path("supplier/", views.supplier, name="supplier"),
    path("regulator/", views.regulator, name="regulator"),
    path("regulator/metrics/", views.metrics, name="metrics"),
    path("regulator/alerts/<int:pk>/review/", consoles.alert_review, name="alert-review"),
    path("regulator/audit/", consoles.audit_verify, name="audit"),
    path("supplier/metering/", consoles.metering_upload, name="metering-upload"),
    path("vouchers/", vouchers_views.desk, name="vouchers"),
    path("vouchers/review/", vouchers_views.review, name="voucher-review"),
    path("api-keys/", api_keys, name="api-keys"),
    path("demands/", scheduling_views.demands, name="demands"),
    path("demands/<int:pk>/", scheduling_views.demand, name="demand"),
    path("demands/<int:pk>/plan/", scheduling_views.demand_replan, name="demand-plan"),
    path("demands/<int:pk>/execute/", scheduling_views.demand_execute, name="demand-execute"),
]

# Sign-in and sign-out under the names Django's auth expects (settings.LOGIN_URL = "login").
auth_urlpatterns = [
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
]
