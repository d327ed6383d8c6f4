from django.urls import path

from exchange.api import risk, views

urlpatterns = [
    path("orders/", views.OrderListCreate.as_view(), name="orders"),
    path("orders/cancel-all/", views.CancelAll.as_view(), name="orders-cancel-all"),
    path("orders/by-client-id/<str:client_order_id>/", views.OrderDetail.as_view(), name="order-by-client-id"),
    path("orders/<int:pk>/", views.OrderDetail.as_view(), name="order-detail"),
    path("fills/", views.FillList.as_view(), name="fills"),
    path("trades/", views.TradeList.as_view(), name="trades"),
    path("instruments/<int:pk>/book/", views.BookView.as_view(), name="instrument-book"),
    path("instruments/<int:pk>/ticker/", views.TickerView.as_view(), name="instrument-ticker"),
    path("instruments/<int:pk>/candles/", views.CandlesView.as_view(), name="instrument-candles"),
    path("risk/kill-switches/", risk.KillSwitchListCreate.as_view(), name="risk-kill-switches"),
    path("risk/kill-switches/<int:pk>/", risk.KillSwitchDetail.as_view(), name="risk-kill-switch"),
    path("risk/limits/", risk.RiskLimitList.as_view(), name="risk-limits"),
    path("risk/matchers/", risk.MatcherLoadList.as_view(), name="risk-matchers"),
    path("risk/limits/<int:organisation>/", risk.RiskLimitDetail.as_view(), name="risk-limit"),
]
