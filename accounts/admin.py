"""Users in the Django admin: Django's own user pages (deactivate an account,
reset a password, grant staff), with the bounded count of big tables; and who
holds an API token, never the token itself."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.http import HttpRequest
from rest_framework.authtoken.admin import TokenAdmin as DrfTokenAdmin
from rest_framework.authtoken.models import Token, TokenProxy

from tasklight.admin_paging import LargeTableAdminMixin

from .models import ApiToken
from .views import ThrottledAdminAuthenticationForm

# The admin's log-in page counts failures as the site's does (docs/security.md).
admin.site.login_form = ThrottledAdminAuthenticationForm
admin.site.unregister(User)


@admin.register(User)
class UserAdmin(LargeTableAdminMixin, DjangoUserAdmin):
    list_display = ("username", "email", "is_active", "is_staff", "date_joined", "last_login")
    list_filter = ("is_active", "is_staff", "is_superuser", "date_joined", "last_login")
    search_fields = ("username", "email")


# DRF's own token admin lists every key: any staff member allowed to look
# could then act as any user through the API.
admin.site.unregister(TokenProxy)


@admin.register(ApiToken)
class ApiTokenAdmin(DrfTokenAdmin):
    """Who has an API token and since when. A token is revoked by deleting
    it here, as the owner's DELETE /api/auth/token/ does; never shown, never
    made here (its owner gets one from POST /api/auth/token/)."""

    list_display = ("user", "created")
    fields = ("user", "created")
    readonly_fields = ("user", "created")
    list_select_related = ("user",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: ApiToken) -> None:
        # Through Token, not its proxy: signals are sent for the class deleted,
        # and the token cache and the token's sockets listen for Token's.
        Token.objects.filter(key=obj.key).delete()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        Token.objects.filter(key__in=queryset.values("key")).delete()
