from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.authtoken.views import obtain_auth_token

from common.views import healthz
from portal.urls import auth_urlpatterns

api_v1 = [
    path("auth/token/", obtain_auth_token, name="api-token"),
    path("api-keys/", include("apikeys.api.urls")),
    path("ledger/", include("ledger.api.urls")),
    path("metering/", include("metering.api.urls")),
    path("oversight/", include("oversight.api.urls")),
    path("vouchers/", include("vouchers.api.urls")),
    path("demands/", include("scheduling.api.urls")),
    path("", include("exchange.api.urls")),
    path("", include("marketplace.api.urls")),
]

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="api-redoc"),
    path("i18n/", include("django.conf.urls.i18n")),
    *auth_urlpatterns,
    path("", include("portal.urls")),
]

handler404 = "common.views.not_found"  # JSON under /api/
