"""Users in the Django admin: Django's own user pages (deactivate an account,
reset a password, grant staff), with the bounded count of big tables."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import User

from tasklight.admin_paging import LargeTableAdminMixin

from .views import ThrottledAdminAuthenticationForm

# The admin's log-in page counts failures as the site's does (docs/security.md).
admin.site.login_form = ThrottledAdminAuthenticationForm
admin.site.unregister(User)


@admin.register(User)
class UserAdmin(LargeTableAdminMixin, DjangoUserAdmin):
    list_display = ("username", "email", "is_active", "is_staff", "date_joined", "last_login")
    list_filter = ("is_active", "is_staff", "is_superuser", "date_joined", "last_login")
    search_fields = ("username", "email")
