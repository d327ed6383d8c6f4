from django.urls import path
from rest_framework.routers import DefaultRouter

from marketplace.api import views

router = DefaultRouter()
router.register("organisations", views.OrganisationViewSet, basename="organisation")
router.register("data-centres", views.DataCentreViewSet, basename="data-centre")
router.register("device-models", views.DeviceModelViewSet, basename="device-model")
router.register("products", views.ProductViewSet, basename="product")
router.register("instruments", views.InstrumentViewSet, basename="instrument")
router.register("listings", views.ListingViewSet, basename="listing")

urlpatterns = [
    path("inventory/", views.InventoryView.as_view(), name="inventory"),
    *router.urls,
]
