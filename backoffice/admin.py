"""Third-party admin pages (users, groups, schedules, login attempts) re-registered through Unfold,
so every page of the back office has the same theme. Their actions name the permission they need
(the packages declare none, so anyone who can open the list would be offered them)."""

from __future__ import annotations

from axes.admin import AccessAttemptAdmin as BaseAccessAttemptAdmin
from axes.admin import AccessFailureLogAdmin as BaseAccessFailureLogAdmin
from axes.admin import AccessLogAdmin as BaseAccessLogAdmin
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin as BaseGroupAdmin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.models import Group, User
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django_celery_beat import admin as beat_admin
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)
from unfold.admin import ModelAdmin, TabularInline
from unfold.decorators import action
from unfold.forms import AdminPasswordChangeForm, UserChangeForm, UserCreationForm
from unfold.widgets import UnfoldAdminSelectWidget, UnfoldAdminTextInputWidget

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


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(beat_admin.PeriodicTaskAdmin, ModelAdmin):  # type: ignore[misc]
    form = UnfoldPeriodicTaskForm

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


# The Backups page (read-only, "Back up now"): its own module, registered with the admin here.
from backoffice import backups_admin  # noqa: E402,F401
