"""The project's URLs plus POST /bench/validate-order/: authenticate the token, validate the order payload
as order entry does (`order_in_validated`, which reads the instrument, as the real endpoint does), answer 200. No
writes, no matcher: the baseline that REST order entry is compared with in bench/exchange_bench.py."""

from django.urls import path
from rest_framework import permissions
from rest_framework.response import Response
from rest_framework.views import APIView

from config.urls import urlpatterns as project_urlpatterns
from exchange.api.serializers import order_in_validated


class ValidateOrder(APIView):
    permission_classes = [permissions.IsAuthenticated]

    def post(self, request):
        v = order_in_validated(request.data)
        return Response(
            {
                "client_order_id": v["client_order_id"],
                "instrument": v["instrument"].pk,
                "side": v["side"],
                "price": None if v.get("price") is None else str(v["price"]),
                "quantity": v["quantity"],
                "status": "valid",
            }
        )


urlpatterns = [
    *project_urlpatterns,
    path("bench/validate-order/", ValidateOrder.as_view(), name="bench-validate-order"),
]
