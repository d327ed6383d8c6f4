from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from marketplace import models


@admin.register(models.User)
class SuanliUserAdmin(UserAdmin):
    fieldsets = (*UserAdmin.fieldsets, ("Suanli", {"fields": ("platform_role",)}))
    list_display = ("username", "email", "platform_role", "is_staff", "is_active")
    list_filter = ("platform_role", "is_staff", "is_active")


class MembershipInline(admin.TabularInline):
    model = models.Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(models.Organisation)
class OrganisationAdmin(admin.ModelAdmin):
    list_display = ("name", "credit_code", "kind", "size_class", "registration_region")
    list_filter = ("kind", "size_class")
    search_fields = ("name", "name_zh", "credit_code")
    inlines = [MembershipInline]


class LatencyInline(admin.TabularInline):
    model = models.DataCentreLatency
    extra = 0


class InventoryInline(admin.TabularInline):
    model = models.DeviceInventory
    extra = 0


@admin.register(models.DataCentre)
class DataCentreAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "region", "pue", "renewable_share", "security_level", "is_active")
    list_filter = ("region", "security_level", "is_active")
    search_fields = ("name", "owner__name")
    inlines = [LatencyInline, InventoryInline]


@admin.register(models.DeviceModel)
class DeviceModelAdmin(admin.ModelAdmin):
    list_display = ("vendor", "name", "chip_class", "is_domestic", "fp16_tflops", "fp32_tflops", "fp64_tflops")
    list_filter = ("chip_class", "is_domestic", "vendor")


@admin.register(models.Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ("code", "name", "unit", "chip_class", "window", "reference_price", "is_active")
    list_filter = ("unit", "window", "is_active")


@admin.register(models.Instrument)
class InstrumentAdmin(admin.ModelAdmin):
    list_display = ("code", "product", "status", "delivery_start", "gate_closure")
    list_filter = ("status", "product")
    date_hierarchy = "delivery_start"


@admin.register(models.Listing)
class ListingAdmin(admin.ModelAdmin):
    list_display = ("id", "supplier", "data_centre", "product", "device_model", "device_count", "available_from", "available_until", "is_active")
    list_filter = ("product", "is_active")
