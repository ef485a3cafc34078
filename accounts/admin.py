"""Users in the Django admin: Django's own user pages (deactivate an account,
reset a password, grant staff), with the bounded count of big tables, and a
delete that takes all that is the user's (tasks and events are read-only here
otherwise); and who holds an API token, never the token itself."""

from __future__ import annotations

from typing import Any, cast

from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.contrib.admin.utils import NestedObjects, quote
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import User
from django.db import models, router
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html
from django.utils.text import capfirst
from rest_framework.authtoken.admin import TokenAdmin as DrfTokenAdmin
from rest_framework.authtoken.models import Token, TokenProxy

from live.models import Event, EventStream
from tasklight.admin_paging import LargeTableAdminMixin
from workloads.models import IdempotencyKey, Task, TaskStatus

from . import services
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
        """What goes with the users, for the delete page and the "delete
        selected users" action: their tasks, events and admin log entries
        counted, the rest listed as Django lists it, the token without its key."""
        return deletion_preview(list(objs), request, self.admin_site)

    def delete_model(self, request: HttpRequest, obj: User) -> None:
        services.delete_accounts(users=User.objects.filter(pk=obj.pk))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        services.delete_accounts(users=queryset)


# What a user owns by the thousand, each by a foreign key to the user:
# counted on the delete page, not listed. Django's list fetched and
# formatted every row (100,000 tasks and 200,000 events: 23 s and 470 MB
# for the page). A task's idempotency keys are its owner's: counted by owner.
COUNTED: dict[type[models.Model], str] = {Task: "owner", Event: "user", IdempotencyKey: "owner", LogEntry: "user"}
# Read-only in the admin (nothing deletes one on its own there), deleted with
# their user: the staff member deleting the user needs no permission on them.
GOES_WITH_ITS_USER: tuple[type[models.Model], ...] = (Task, Event, EventStream, IdempotencyKey)


class _Collector(NestedObjects):
    """Django's collector for the delete page, without the counted rows."""

    def related_objects(self, related_model: Any, related_fields: Any, objs: Any) -> Any:
        if any(COUNTED.get(related_model) == field.name for field in related_fields):
            return related_model._base_manager.none()
        return super().related_objects(related_model, related_fields, objs)


def deletion_preview(users: list[User], request: HttpRequest, site: admin.AdminSite) -> tuple[Any, ...]:
    """As django.contrib.admin.utils.get_deleted_objects (the nested list
    shown, the count of each kind, the kinds the staff member may not delete,
    the protected rows), with COUNTED's rows counted under each user."""
    if not users:
        return [], {}, set(), []
    collector = _Collector(using=router.db_for_write(User), origin=users)
    collector.collect(users)
    perms_needed: set[str] = set()

    def shown(obj: Any) -> Any:
        opts = obj._meta
        if isinstance(obj, Token):
            return "API token (not shown)"  # its text is the key
        if not site.is_registered(type(obj)):
            return f"{capfirst(opts.verbose_name)}: {obj}"
        if not isinstance(obj, GOES_WITH_ITS_USER) and not site.get_model_admin(type(obj)).has_delete_permission(
            request, obj
        ):
            perms_needed.add(opts.verbose_name)
        try:
            url = reverse(f"{site.name}:{opts.app_label}_{opts.model_name}_change", args=(quote(obj.pk),))
        except NoReverseMatch:
            return f"{capfirst(opts.verbose_name)}: {obj}"
        return format_html('{}: <a href="{}">{}</a>', capfirst(opts.verbose_name), url, obj)

    counted = _counted([user.pk for user in users])
    listed: list[Any] = []
    for obj, children in _pairs(collector.nested()):
        below = _formatted(children, shown) + (_lines(counted, obj.pk) if isinstance(obj, User) else [])
        listed += [shown(obj), below] if below else [shown(obj)]
    model_count = {
        cast("type[models.Model]", model)._meta.verbose_name_plural: len(objs)
        for model, objs in collector.model_objs.items()
    }
    for model, per_user in counted.items():
        if per_user:
            model_count[model._meta.verbose_name_plural] = sum(sum(n.values()) for n in per_user.values())
    protected = [shown(obj) for obj in collector.protected]
    return listed, model_count, perms_needed, protected


def _pairs(nested: list[Any]) -> list[tuple[Any, list[Any]]]:
    """Django's nested list ([obj, [its children], obj, ...]) as (obj, children)."""
    pairs: list[tuple[Any, list[Any]]] = []
    for item in nested:
        if isinstance(item, list):
            pairs[-1][1].extend(item)
        else:
            pairs.append((item, []))
    return pairs


def _formatted(nested: list[Any], shown: Any) -> list[Any]:
    return [_formatted(item, shown) if isinstance(item, list) else shown(item) for item in nested]


def _counted(user_ids: list[int]) -> dict[type[models.Model], dict[int, dict[str, int]]]:
    """COUNTED's rows of these users, by model and user, and tasks by status
    (one query per model, on indexes that start with the user)."""
    counted: dict[type[models.Model], dict[int, dict[str, int]]] = {}
    for model, field in COUNTED.items():
        by = (field, "status") if model is Task else (field,)
        rows = model._base_manager.filter(**{f"{field}__in": user_ids}).values(*by).annotate(n=Count("*")).order_by()
        per_user: dict[int, dict[str, int]] = counted.setdefault(model, {})
        for row in rows:
            per_user.setdefault(row[field], {})[row.get("status", "")] = row["n"]
    return counted


def _lines(counted: dict[type[models.Model], dict[int, dict[str, int]]], user_id: int) -> list[str]:
    lines = []
    for model, per_user in counted.items():
        if user_id not in per_user:
            continue
        by_status = per_user[user_id]
        line = f"{capfirst(model._meta.verbose_name_plural)}: {sum(by_status.values()):,}"
        notes = [
            f"{by_status[status]:,} {status}, {what}"
            for status, what in ((TaskStatus.RUNNING, "stopped by its worker"), (TaskStatus.QUEUED, "never to start"))
            if by_status.get(status)
        ]
        lines.append(f"{line} ({'; '.join(notes)})" if notes else line)
    return lines


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
