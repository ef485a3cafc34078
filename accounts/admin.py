"""Users in the Django admin: Django's own user pages (deactivate an account,
reset a password, grant staff), with the bounded count of big tables; and who
holds an API token, never the token itself."""

from __future__ import annotations

from typing import Any

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

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple[Any, ...]:
        """Django's list of what goes with the user names their token by its
        text, which is DRF's key: not shown."""
        to_delete, *rest = super().get_deleted_objects(objs, request)
        keys = set(Token.objects.filter(user__in=[user.pk for user in objs]).values_list("key", flat=True))
        return (_without_keys(to_delete, keys), *rest)


def _without_keys(items: list[Any], keys: set[str]) -> list[Any]:
    shown: list[Any] = []
    for item in items:
        if isinstance(item, list):
            shown.append(_without_keys(item, keys))
        elif any(key in str(item) for key in keys):
            shown.append("API token (not shown)")
        else:
            shown.append(item)
    return shown


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

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest) -> bool:
        # ?key__startswith=a answered whether a key begins so: one character
        # at a time, any key could be read off the row count.
        if lookup == "key" or lookup.startswith("key__"):
            return False
        return super().lookup_allowed(lookup, value, request)

    def response_delete(self, request: HttpRequest, obj_display: str, obj_id: Any) -> Any:
        # Django names the object deleted by its primary key, the key itself,
        # in the pop-up window's answer.
        return super().response_delete(request, obj_display, "")  # type: ignore[arg-type]  # any text

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
