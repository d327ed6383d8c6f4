from django.urls import path

from vouchers.api import views

urlpatterns = [
    path("programmes/", views.ProgrammeListCreate.as_view(), name="voucher-programmes"),
    path("programmes/<int:pk>/", views.ProgrammeDetail.as_view(), name="voucher-programme"),
    path("programmes/<int:pk>/fund/", views.ProgrammeFund.as_view(), name="voucher-programme-fund"),
    path("programmes/<int:pk>/report/", views.ProgrammeReport.as_view(), name="voucher-programme-report"),
    path("profile/", views.ProfileDeclare.as_view(), name="voucher-profile"),
    path("applications/", views.ApplicationListCreate.as_view(), name="voucher-applications"),
    path("applications/<int:pk>/", views.ApplicationDetail.as_view(), name="voucher-application"),
    path("applications/<int:pk>/approve/", views.ApplicationApprove.as_view(), name="voucher-application-approve"),
    path("applications/<int:pk>/reject/", views.ApplicationReject.as_view(), name="voucher-application-reject"),
    path("vouchers/", views.VoucherList.as_view(), name="voucher-list"),
    path("vouchers/<int:pk>/", views.VoucherDetail.as_view(), name="voucher-detail"),
    path("redemptions/", views.RedemptionList.as_view(), name="voucher-redemptions"),
    path("redemptions/<int:pk>/evidence/", views.RedemptionEvidence.as_view(), name="voucher-redemption-evidence"),
]
