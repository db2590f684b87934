"""A walk over EVERY registered admin (admin.site._registry: a new admin is walked without editing
this file) as two view-only staff members, with rows of every kind in both their businesses.

(a) A staff member of business A holding every view permission is offered no action that changes
    data (an offered action must declare it needs only "view" or "export"), POSTing each other
    action anyway changes no row, and every import page answers 403.
(b) A staff member of business B with the same permissions sees no row, name or filter choice of
    business A on any scoped changelist, filter dropdown or export.
"""

from __future__ import annotations

from html import escape
from typing import Any

import pytest
from django.apps import apps
from django.contrib import admin, messages
from django.contrib.auth.models import Permission, User
from django.db.models import Model
from django.test import Client, RequestFactory
from django.urls import NoReverseMatch, reverse
from import_export.admin import ExportMixin, ImportMixin

from tenancy.models import Business
from tenancy.scoping import BusinessScopedAdmin, sees_all_businesses
from tests.backoffice.test_tenancy import ALL_MAKERS
from tests.factories.tenancy import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db

# The only permissions an action offered to a view-only person may ask for: reading, and exporting
# what he can read. Anything else (change, delete, a custom right, or no declaration) changes data.
# "reports": the statement PDF actions (accounts.view_reports) read the books and launch a job, like "export".
READ_ONLY_ACTION_PERMISSIONS = {"view", "export", "reports", "consolidated_reports"}


def _url(model: type[Model], view: str, *args: Any) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def _view_only_staff(business: Business, username: str) -> User:
    """Every view_* permission of the project (not the owner's "see every business"), one business."""
    user = UserFactory.create(username=username)
    user.user_permissions.add(
        *Permission.objects.filter(codename__startswith="view_").exclude(codename="view_all_businesses")
    )
    MembershipFactory.create(user=user, business=business)
    fresh = User.objects.get(pk=user.pk)  # no cached permissions
    assert not sees_all_businesses(fresh)
    return fresh


@pytest.fixture
def rows(water: Business, laundry: Business) -> dict[Business, dict[type[Model], Model]]:
    """One row of every scoped kind in each business (the row makers of the tenancy tests)."""
    return {business: {model: make(business) for model, make in ALL_MAKERS.items()} for business in (water, laundry)}


def _request(user: User, model: type[Model], data: dict[str, Any] | None = None) -> Any:
    request = RequestFactory().get(_url(model, "changelist"), data or {})
    request.user = user
    return request


def _snapshot() -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (sessions aside): what an action could have changed."""
    return {
        model._meta.label: list(model._base_manager.order_by("pk").values_list())
        for model in apps.get_models()
        if not model._meta.proxy and model._meta.label != "sessions.Session"
    }


def _declared_permissions(func: Any) -> set[str]:
    return set(getattr(func, "allowed_permissions", None) or ())


def _unfold_actions(model_admin: Any, request: Any, object_id: Any) -> list[Any]:
    """Unfold's own action places (list, row, detail, submit line), as offered to this request."""
    offered: list[Any] = []
    if hasattr(model_admin, "get_actions_list"):
        offered += model_admin.get_actions_list(request) + model_admin.get_actions_row(request)
        if object_id is not None:
            offered += model_admin.get_actions_detail(request, object_id)
            offered += model_admin.get_actions_submit_line(request, object_id)
    return offered


def _a_visible_pk(model_admin: Any, request: Any) -> Any:
    return model_admin.get_queryset(request).order_by("pk").values_list("pk", flat=True).first()


# What confirmation pages of actions ask for, so a POST would go all the way if it were let through.
ACTION_FORM_ANSWERS = {
    "index": "0",
    "post": "yes",
    "confirm": "1",
    "apply": "1",
    "credit_role": "owner_equity",
    "reference_kind": "customer",
}


def test_a_view_only_staff_member_is_offered_and_can_run_no_action_that_changes_data(
    rows: dict[Business, dict[type[Model], Model]], water: Business
) -> None:
    viewer = _view_only_staff(water, "viewer")

    offered_wrongly = []
    registry: dict[type[Model], Any] = dict(admin.site._registry)  # Any: private admin API below
    for model, model_admin in registry.items():
        request = _request(viewer, model)
        for func, name, _ in model_admin.get_actions(request).values():
            declared = _declared_permissions(func)
            if not declared or not declared <= READ_ONLY_ACTION_PERMISSIONS:
                offered_wrongly.append(f"{model._meta.label}: {name} {sorted(declared)}")
        for unfold_action in _unfold_actions(model_admin, request, _a_visible_pk(model_admin, request)):
            declared = _declared_permissions(unfold_action.method)
            if not declared or not declared <= READ_ONLY_ACTION_PERMISSIONS:
                offered_wrongly.append(f"{model._meta.label}: {unfold_action.action_name} {sorted(declared)}")
    assert offered_wrongly == []

    client = Client()
    client.force_login(viewer)
    before = _snapshot()
    ran = []
    for model, model_admin in registry.items():
        request = _request(viewer, model)
        offered = set(model_admin.get_actions(request))
        selected = list(model_admin.get_queryset(request).values_list("pk", flat=True)[:10])
        for _, name, _ in model_admin._get_base_actions():
            if name in offered:
                continue
            response = client.post(
                _url(model, "changelist"), {"action": name, "_selected_action": selected, **ACTION_FORM_ANSWERS}
            )
            successes = [m for m in messages.get_messages(response.wsgi_request) if m.level == messages.SUCCESS]
            if response.status_code not in (200, 302, 403) or successes:
                ran.append(f"{model._meta.label}: {name} -> {response.status_code} {successes}")
        if hasattr(model_admin, "_get_base_actions_detail") and selected:
            for unfold_action in model_admin._get_base_actions_detail():
                response = client.post(reverse(f"admin:{unfold_action.action_name}", args=[selected[0]]))
                if response.status_code != 403:
                    ran.append(f"{model._meta.label}: {unfold_action.action_name} -> {response.status_code}")
    assert ran == []
    assert _snapshot() == before, "a refused action changed rows"


def test_a_view_only_staff_member_cannot_open_or_post_any_import_page(
    rows: dict[Business, dict[type[Model], Model]], water: Business
) -> None:
    viewer = _view_only_staff(water, "viewer")
    client = Client()
    client.force_login(viewer)
    before = _snapshot()
    walked = []
    for model, model_admin in admin.site._registry.items():
        if not isinstance(model_admin, ImportMixin):
            continue
        walked.append(model)
        assert client.get(_url(model, "import")).status_code == 403, model
        assert client.post(_url(model, "import"), {"format": "0"}).status_code == 403, model
        try:
            process = _url(model, "process_import")
        except NoReverseMatch:
            continue
        assert client.post(process, {"format": "0", "import_file_name": "x.csv"}).status_code == 403, model
        # Exporting what he can read is allowed.
        assert client.get(_url(model, "export")).status_code == 200, model
    assert Business in walked and len(walked) >= 5
    assert _snapshot() == before


def _a_strings(rows: dict[Business, dict[type[Model], Model]], a: Business, b: Business) -> set[str]:
    """What would betray business A on B's pages: its name and its rows' names, leaving out names
    that B's rows share (a chart account "1000 Cash" exists in both)."""
    b_strings = [str(row) for row in rows[b].values()]
    a_strings = {str(row) for row in rows[a].values()}
    distinctive = {s for s in a_strings if len(s) >= 6 and not any(s in other for other in b_strings)}
    return distinctive | {a.name}


def filter_labels(spec: Any, changelist: Any) -> list[str]:
    """What one list filter offers: its links, and the options of a dropdown (Unfold's dropdowns
    yield a form, not links, so their lookup choices are read too)."""
    labels = [str(choice["display"]) for choice in spec.choices(changelist) if "display" in choice]
    for choice in getattr(spec, "lookup_choices", None) or ():
        labels.append(str(choice[1] if isinstance(choice, (list, tuple)) else choice))
    return labels


def _filter_choices(model_admin: Any, request: Any) -> list[str]:
    """Every choice every list filter of this changelist offers (the dropdowns, opened)."""
    changelist = model_admin.get_changelist_instance(request)
    return [label for spec in changelist.filter_specs for label in filter_labels(spec, changelist)]


def test_a_staff_member_of_business_b_sees_nothing_of_business_a(
    rows: dict[Business, dict[type[Model], Model]], water: Business, laundry: Business
) -> None:
    viewer = _view_only_staff(laundry, "other_viewer")
    client = Client()
    client.force_login(viewer)
    secrets = _a_strings(rows, water, laundry)
    assert len(secrets) > 10
    leaks = []
    scoped = [(m, ma) for m, ma in admin.site._registry.items() if isinstance(ma, BusinessScopedAdmin)]
    assert scoped
    for model, model_admin in scoped:
        page = client.get(_url(model, "changelist"))
        assert page.status_code == 200, model
        body = page.content.decode()
        leaks += [f"{model._meta.label} page: {s!r}" for s in secrets if escape(s) in body or s in body]
        if model in rows[water]:
            own_url = _url(model, "change", rows[water][model].pk)
            if f'href="{own_url}"' in body:
                leaks.append(f"{model._meta.label} page links {own_url}")
        choices = _filter_choices(model_admin, _request(viewer, model))
        leaks += [f"{model._meta.label} filter: {c!r}" for c in choices for s in secrets if s in c]
        if isinstance(model_admin, ExportMixin):
            leaks += [f"{model._meta.label} export: {s!r}" for s in secrets if s in _export(client, model)]
    assert leaks == []
    # ... while the same pages show B's own rows (the walk looked at real lists, not empty pages).
    body = client.get(_url(Business, "changelist")).content.decode()
    assert escape(laundry.name) in body


def _export(client: Client, model: type[Model]) -> str:
    """The export file of this admin with every field ticked, as the person downloads it."""
    page = client.get(_url(model, "export"))
    assert page.status_code == 200, model
    form = page.context["form"]
    data: dict[str, Any] = {"format": "0", "resource": "0"}
    data.update({name: "on" for name, field in form.fields.items() if field.initial is True})
    response = client.post(_url(model, "export"), data)
    assert response.status_code == 200 and response.get("Content-Disposition"), (model, response.status_code)
    return response.content.decode()
