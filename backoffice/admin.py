"""Third-party admin pages (users, groups, schedules, login attempts) re-registered through Unfold,
so every page of the back office has the same theme. Their actions name the permission they need
(the packages declare none, so anyone who can open the list would be offered them). The periodic
tasks show their last success and last failure (jobs.TaskEvent, written by the workers)."""

from __future__ import annotations

from typing import Any

from axes.admin import AccessAttemptAdmin as BaseAccessAttemptAdmin
from axes.admin import AccessFailureLogAdmin as BaseAccessFailureLogAdmin
from axes.admin import AccessLogAdmin as BaseAccessLogAdmin
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.contrib import admin, messages
from django.contrib.auth.admin import GroupAdmin as BaseGroupAdmin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.models import Group, User
from django.db.models import BooleanField, F, OuterRef, Q, QuerySet, Subquery, Value
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html
from django_celery_beat import admin as beat_admin
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)
from unfold.admin import ModelAdmin, TabularInline
from unfold.decorators import action, display
from unfold.forms import AdminPasswordChangeForm, UserChangeForm, UserCreationForm
from unfold.widgets import UnfoldAdminSelectWidget, UnfoldAdminTextInputWidget

# The owner's emails and the email log: a module of their own, whose admins register on import.
from backoffice import email_admin  # noqa: F401
from jobs.admin import may_view_task_events
from jobs.models import TaskEvent, TaskEventKind
from jobs.selectors import is_failing
from tenancy.models import Membership
from tenancy.scoping import sees_all_businesses, visible_business_ids

for model in (
    User,
    Group,
    PeriodicTask,
    IntervalSchedule,
    CrontabSchedule,
    SolarSchedule,
    ClockedSchedule,
    AccessAttempt,
    AccessLog,
    AccessFailureLog,
):
    if admin.site.is_registered(model):
        admin.site.unregister(model)


class MembershipInline(TabularInline):  # type: ignore[type-arg]
    model = Membership
    extra = 0
    fields = ["business", "role"]


@admin.register(User)
class UserAdmin(BaseUserAdmin, ModelAdmin):  # type: ignore[type-arg]
    form = UserChangeForm
    add_form = UserCreationForm
    change_password_form = AdminPasswordChangeForm
    inlines = [MembershipInline]
    list_display = ["username", "first_name", "last_name", "is_staff", "is_superuser", "is_active", "last_login"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[User]:
        """Someone other than the owner who may read users (and the user autocomplete) sees only
        the people of his own businesses, never another business's staff."""
        qs = super().get_queryset(request)
        if sees_all_businesses(request.user):
            return qs
        mine = Q(memberships__business__in=visible_business_ids(request.user)) | Q(pk=request.user.pk)
        return qs.filter(pk__in=User.objects.filter(mine).values("pk"))


@admin.register(Group)
class GroupAdmin(BaseGroupAdmin, ModelAdmin):  # type: ignore[type-arg]
    pass


class UnfoldTaskSelectWidget(UnfoldAdminSelectWidget, beat_admin.TaskSelectWidget):  # type: ignore[misc]
    pass


class UnfoldPeriodicTaskForm(beat_admin.PeriodicTaskForm):  # type: ignore[misc]
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fields["task"].widget = UnfoldAdminTextInputWidget()
        self.fields["regtask"].widget = UnfoldTaskSelectWidget()


def _when(value: Any) -> str:
    return date_format(timezone.localtime(value), "j M Y, H:i") if value else ""


PERIODIC_STATUS_LABELS = {"Failing": "danger", "OK": "success", "Not run yet": "info", "Off": "default"}


class PeriodicStatusFilter(admin.SimpleListFilter):
    title = "last result"
    parameter_name = "result"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("failing", "Failing"), ("ok", "Last run succeeded")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> QuerySet[PeriodicTask]:
        failing = Q(last_failure_at__isnull=False) & (
            Q(last_success_at__isnull=True) | Q(last_failure_at__gt=F("last_success_at"))
        )
        if self.value() == "failing":
            return queryset.filter(failing)
        if self.value() == "ok":
            return queryset.filter(last_success_at__isnull=False).exclude(failing)
        return queryset


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(beat_admin.PeriodicTaskAdmin, ModelAdmin):  # type: ignore[misc]
    form = UnfoldPeriodicTaskForm
    list_display = [
        "name",
        "status_display",
        "enabled",
        "scheduler",
        "last_run_at",
        "last_success_display",
        "last_failure_display",
    ]
    list_filter = [PeriodicStatusFilter, "enabled", "one_off", "task"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[PeriodicTask]:
        """Each task with its last success and last failure (jobs.TaskEvent), one subquery each, on the
        (periodic_task, kind, -at) index."""
        events = TaskEvent.objects.filter(periodic_task=OuterRef("name"))
        successes = events.filter(kind=TaskEventKind.SUCCEEDED).order_by("-at")
        failures = events.filter(kind=TaskEventKind.FAILED).order_by("-at", "-id")
        return (
            super()
            .get_queryset(request)
            .annotate(
                last_success_at=Subquery(successes.values("at")[:1]),
                last_failure_at=Subquery(failures.values("at")[:1]),
                last_failure_id=Subquery(failures.values("pk")[:1]),
                last_failure_error=Subquery(failures.values("exception")[:1]),
                # Whether this user may read the failures' exceptions and tracebacks, carried on each
                # row (the admin object serves every request: nothing per request is kept on it).
                reader_sees_events=Value(may_view_task_events(request.user), output_field=BooleanField()),
            )
        )

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        fieldsets = list(super().get_fieldsets(request, obj))
        if obj is not None:
            runs = ("Last runs", {"fields": ("status_display", "last_success_display", "last_failure_display")})
            fieldsets.insert(1, runs)
        return fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [
            *super().get_readonly_fields(request, obj),
            "status_display",
            "last_success_display",
            "last_failure_display",
        ]

    @display(description="Last result", label=PERIODIC_STATUS_LABELS)
    def status_display(self, obj: PeriodicTask) -> str:
        if is_failing(last_success_at=obj.last_success_at, last_failure_at=obj.last_failure_at):  # type: ignore[attr-defined]
            return "Failing"
        if obj.last_success_at:  # type: ignore[attr-defined]
            return "OK"
        return "Not run yet" if obj.enabled else "Off"

    @display(description="Last success")
    def last_success_display(self, obj: PeriodicTask) -> str:
        return _when(obj.last_success_at) or "-"  # type: ignore[attr-defined]

    @display(description="Last failure")
    def last_failure_display(self, obj: PeriodicTask) -> str:
        """Its time and exception, with a link to its traceback for those who may read task events."""
        failed_at = obj.last_failure_at  # type: ignore[attr-defined]
        if not failed_at:
            return "-"
        if not getattr(obj, "reader_sees_events", False):
            return _when(failed_at)
        error = (obj.last_failure_error or "").splitlines()[0] if obj.last_failure_error else ""  # type: ignore[attr-defined]
        url = reverse("admin:jobs_taskevent_change", args=[obj.last_failure_id])  # type: ignore[attr-defined]
        return format_html(
            '{}: <span class="periodic-error">{}</span> <a href="{}" class="text-primary-600">traceback</a>',
            _when(failed_at),
            error if len(error) <= 160 else error[:159] + "...",
            url,
        )

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        failing = [
            t.name
            for t in self.get_queryset(request).filter(enabled=True)
            if is_failing(last_success_at=t.last_success_at, last_failure_at=t.last_failure_at)  # type: ignore[attr-defined]
        ]
        if failing and request.method == "GET":
            self.message_user(
                request,
                f"{len(failing)} periodic task{'s are' if len(failing) != 1 else ' is'} failing: {', '.join(failing)}.",
                messages.WARNING,
            )
        return super().changelist_view(request, extra_context)  # type: ignore[no-any-return]

    @action(description="Enable selected tasks", permissions=["change"])
    def enable_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        super().enable_tasks(request, queryset)

    @action(description="Disable selected tasks", permissions=["change"])
    def disable_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        super().disable_tasks(request, queryset)

    @action(description="Toggle activity of selected tasks", permissions=["change"])
    def toggle_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        super().toggle_tasks(request, queryset)

    @action(description="Run selected tasks", permissions=["change"])
    def run_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        super().run_tasks(request, queryset)


class ScheduleInline(TabularInline):  # type: ignore[type-arg]
    model = PeriodicTask
    fields = ("name", "task", "args", "kwargs")
    readonly_fields = fields
    can_delete = False
    extra = 0
    show_change_link = True

    def has_add_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(IntervalSchedule)
class IntervalScheduleAdmin(ModelAdmin):  # type: ignore[type-arg]
    inlines = [ScheduleInline]


@admin.register(CrontabSchedule)
class CrontabScheduleAdmin(beat_admin.CrontabScheduleAdmin, ModelAdmin):  # type: ignore[misc]
    inlines = [ScheduleInline]


@admin.register(SolarSchedule)
class SolarScheduleAdmin(ModelAdmin):  # type: ignore[type-arg]
    inlines = [ScheduleInline]


@admin.register(ClockedSchedule)
class ClockedScheduleAdmin(beat_admin.ClockedScheduleAdmin, ModelAdmin):  # type: ignore[misc]
    inlines = [ScheduleInline]


@admin.register(AccessAttempt)
class AccessAttemptAdmin(BaseAccessAttemptAdmin, ModelAdmin):  # type: ignore[misc]
    @action(description="Clean up expired attempts", permissions=["delete"])
    def cleanup_expired_attempts(self, request: HttpRequest, queryset: QuerySet[AccessAttempt]) -> None:
        super().cleanup_expired_attempts(request, queryset)


@admin.register(AccessLog)
class AccessLogAdmin(BaseAccessLogAdmin, ModelAdmin):  # type: ignore[misc]
    pass


@admin.register(AccessFailureLog)
class AccessFailureLogAdmin(BaseAccessFailureLogAdmin, ModelAdmin):  # type: ignore[misc]
    pass


# The site's own models, each in its module, registered on import: alert rules and alerts; the Backups
# page (read-only, "Back up now").
from backoffice import admin_alerts, backups_admin  # noqa: E402,F401
