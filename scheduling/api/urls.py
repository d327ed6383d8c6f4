from django.urls import path

from scheduling.api import views

urlpatterns = [
    path("", views.DemandListCreate.as_view(), name="demands"),
    path("<int:pk>/", views.DemandDetail.as_view(), name="demand-detail"),
    path("<int:pk>/plan/", views.DemandPlan.as_view(), name="demand-plan"),
    path("<int:pk>/execute/", views.DemandExecute.as_view(), name="demand-execute"),
]
