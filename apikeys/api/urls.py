from rest_framework.routers import SimpleRouter

from apikeys.api import views

router = SimpleRouter()
router.register("", views.ApiKeyViewSet, basename="api-key")

urlpatterns = router.urls
