"""Hardening, wave 7: the inputs added with the Clay Actions meter and re-enrichment, tried as an
attacker and as a careless user. The Connect form's `actions_per_row` and `actions_daily_limit`, the
admin's `actions_daily_limit` (budget), `actions_per_row` and `reenrich_served` (webhook), the import
page's group retry `scope`, and the leads resolve action's `action` / `state` / `ids` / `webhook` /
`next`. Bad input is a clear 4xx or a form error, never a 500, and changes nothing; a viewer's POST is
403; a POST without the CSRF token is 403; `next` never sends the browser off-site."""

from __future__ import annotations

from decimal import Decimal
from urllib.parse import urlsplit

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from clayops import alerts, budget, metrics
from clayops.models import (
    AuditEntry,
    CircuitBreaker,
    CreditBudget,
    DeadLetter,
    Lead,
    Webhook,
    Workspace,
)
from tests.factories import (
    make_budget,
    make_dead_letter,
    make_lead,
    make_lead_import,
    make_user,
    make_webhook,
    make_workspace,
)

S = Lead.State
D = DeadLetter.State
CLAY_URL = "http://127.0.0.1:9/v3/sources/webhook/t_wave7"  # the test settings allow loopback http
HX = {"HX-Request": "true"}
FALLBACK = {"source": "fallback", "data": {"company_name": "Acme"}, "at": "2026-11-30T10:00:00+00:00"}
CACHED = {"source": "cache", "data": {"company_name": "Acme Inc"}, "at": "2026-11-30T09:00:00+00:00"}


@pytest.fixture(autouse=True)
def _inline(settings):
    settings.CLAYOPS_SEND_CONCURRENCY = 1


@pytest.fixture
def as_operator(client, operator):
    client.force_login(operator)
    return client


@pytest.fixture
def as_viewer(client, viewer):
    client.force_login(viewer)
    return client


@pytest.fixture
def as_admin(client, db):
    client.force_login(make_user("root", is_staff=True, is_superuser=True))
    return client


def snapshot() -> dict:
    """Everything a refused request must leave as it was."""
    return {
        "counts": (
            Workspace.objects.count(),
            CreditBudget.objects.count(),
            Webhook.objects.count(),
            CircuitBreaker.objects.count(),
            AuditEntry.objects.count(),
        ),
        "leads": dict(Lead.objects.values_list("pk", "state")),
        "dlq": dict(DeadLetter.objects.values_list("pk", "state")),
        "budgets": list(
            CreditBudget.objects.order_by("pk").values_list(
                "pk", "name", "daily_limit", "actions_daily_limit", "timezone", "alert_percent"
            )
        ),
        "workspaces": list(
            Workspace.objects.order_by("pk").values_list("pk", "name", "budget_id", "rate_limit", "burst")
        ),
        "webhooks": list(
            Webhook.objects.order_by("pk").values_list(
                "pk",
                "name",
                "url",
                "token",
                "callback_secret",
                "credits_per_row",
                "actions_per_row",
                "reenrich_served",
                "row_cap",
                "is_active",
            )
        ),
    }


def no_500_afterwards(client) -> None:
    for url in (reverse("dashboard:overview"), reverse("dashboard:leads"), reverse("dashboard:imports")):
        assert client.get(url).status_code == 200, url


# --- 1. Connect Clay: actions_per_row and actions_daily_limit -------------------------------------------


def form_data(**changes) -> dict:
    data = {
        "webhook_url": CLAY_URL,
        "token": "tok-wave7",
        "webhook_name": "people",
        "credits_per_row": "6",
        "actions_per_row": "",
        "row_cap": "",
        "workspace": "",
        "workspace_name": "wave7",
        "plan": "pro",
        "rate_limit": "",
        "burst": "",
        "hourly_cap": "",
        "daily_limit": "",
        "actions_daily_limit": "",
        "budget_timezone": "",
    }
    data.update(changes)
    return data


def create(client, **changes):
    return client.post(reverse("dashboard:connect_create"), form_data(**changes))


HOSTILE_NUMBERS = [
    "-1",
    "-0.5",
    str(2**31),
    str(2**63),
    str(10**30),
    "1e309",
    "-1e309",
    "1e2",
    "1.5",
    "NaN",
    "Infinity",
    "-inf",
    "abc",
    "\x00",
    "1\x00",
    "\x01\x1b[31m",
    "1\r\n2",
    "9" * 5000,  # past Python's int() digit limit
    "' OR '1'='1",
    "1; DROP TABLE clayops_creditbudget; --",
    "½",
    "0x10",
    "--1",
    "\u22121",  # a Unicode minus sign
    "1,000",
]
BAD_CONNECT = [("actions_per_row", v) for v in [*HOSTILE_NUMBERS, "101", str(2**15), "١٠١"]] + [
    ("actions_daily_limit", v)
    for v in [*HOSTILE_NUMBERS, "٢١٤٧٤٨٣٦٤٨"]  # 2**31 in Arabic-Indic digits
]


@pytest.mark.parametrize(("field", "value"), BAD_CONNECT)
def test_bad_actions_values_on_connect_are_a_form_error_and_create_nothing(as_operator, field, value):
    before = snapshot()

    response = create(as_operator, **{field: value})

    assert response.status_code == 400, (field, value)
    assert field in response.context["form"].errors, (field, value, response.context["form"].errors)
    assert snapshot() == before


@pytest.mark.parametrize(
    ("field", "value", "stored"),
    [
        ("actions_per_row", "0", 0),
        ("actions_per_row", "100", 100),
        ("actions_per_row", " 7 ", 7),
        ("actions_per_row", "7.0", 7),
        ("actions_per_row", "", 1),
        ("actions_daily_limit", "0", 0),
        ("actions_daily_limit", str(2**31 - 1), 2**31 - 1),
        ("actions_daily_limit", "", None),
    ],
)
def test_edge_actions_values_on_connect_are_stored_and_every_page_renders(as_operator, field, value, stored):
    response = create(as_operator, **{field: value})

    assert response.status_code == 302, (field, value)
    webhook = Webhook.objects.select_related("workspace__budget").get()
    got = (
        webhook.actions_per_row
        if field == "actions_per_row"
        else webhook.workspace.budget.actions_daily_limit
    )
    assert got == stored
    assert as_operator.get(response["Location"]).status_code == 200
    no_500_afterwards(as_operator)
    assert as_operator.get(reverse("dashboard:connect")).status_code == 200


@pytest.mark.parametrize(
    ("field", "values", "status"),
    [
        ("actions_per_row", ["1", "101"], 400),
        ("actions_per_row", ["101", "1"], 302),
        ("actions_per_row", ["abc", "\x00", "-1"], 400),
        ("actions_daily_limit", ["5", str(2**63)], 400),
        ("actions_daily_limit", [str(2**63), "5"], 302),
        ("actions_daily_limit", ["", ""], 302),
    ],
)
def test_repeated_actions_parameters_on_connect_take_the_last_one(as_operator, field, values, status):
    before = snapshot()

    response = create(as_operator, **{field: values})

    assert response.status_code == status, (field, values)
    if status == 400:
        assert field in response.context["form"].errors
        assert snapshot() == before
    else:
        webhook = Webhook.objects.select_related("workspace__budget").get()
        last = values[-1]
        if field == "actions_per_row":
            assert webhook.actions_per_row == int(last)
        else:
            assert webhook.workspace.budget.actions_daily_limit == (int(last) if last else None)


def test_an_actions_limit_given_with_an_existing_workspace_leaves_its_budget_alone(as_operator):
    ws = make_workspace(name="existing", budget=make_budget(name="existing", actions_daily_limit=40))
    response = create(
        as_operator, workspace=str(ws.pk), workspace_name="", actions_daily_limit="0", actions_per_row="3"
    )
    assert response.status_code == 302
    assert CreditBudget.objects.get(pk=ws.budget_id).actions_daily_limit == 40
    assert Webhook.objects.get().actions_per_row == 3

    # A bad value is still refused there (the field is checked whatever the workspace).
    before = snapshot()
    again = create(
        as_operator,
        workspace=str(ws.pk),
        workspace_name="",
        webhook_url=CLAY_URL + "2",
        webhook_name="other",
        actions_daily_limit="-1",
    )
    assert again.status_code == 400 and snapshot() == before


def test_connect_with_the_new_fields_is_refused_to_viewers_and_without_csrf(client, viewer, operator, db):
    hostile = form_data(actions_per_row="100", actions_daily_limit=str(2**31 - 1))
    before = snapshot()
    client.force_login(viewer)
    assert client.post(reverse("dashboard:connect_create"), hostile).status_code == 403
    assert client.post(reverse("dashboard:connect_create"), hostile, headers=HX).status_code == 403

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(operator)
    assert strict.post(reverse("dashboard:connect_create"), hostile).status_code == 403
    assert snapshot() == before


# --- 2. The admin: CreditBudget.actions_daily_limit, Webhook.actions_per_row and reenrich_served ------


def budget_form(b: CreditBudget | None = None, **changes) -> dict:
    data = {
        "name": b.name if b else "new-budget",
        "daily_limit": str(b.daily_limit) if b else "1000",
        "timezone": b.timezone if b else "UTC",
        "actions_daily_limit": ""
        if b is None or b.actions_daily_limit is None
        else str(b.actions_daily_limit),
        "alert_percent": str(b.alert_percent) if b else "80",
    }
    data.update(changes)
    return data


def webhook_form(w: Webhook, **changes) -> dict:
    data = {
        "workspace": w.workspace_id,
        "name": w.name,
        "url": w.url,
        "token": "",
        "callback_secret": "",
        "credits_per_row": str(w.credits_per_row),
        "actions_per_row": str(w.actions_per_row),
        "row_cap": w.row_cap,
        "priority": w.priority,
        "batch_size": w.batch_size,
        "callback_deadline_seconds": w.callback_deadline_seconds,
        "is_active": "on",
        "reenrich_served": "on",
        "broken_reason": "",
    }
    data.update(changes)
    return data


ADMIN_BAD_ACTIONS_LIMIT = [
    v
    for v in HOSTILE_NUMBERS
    if v not in (str(2**31),)  # 2**31: database-dependent, see below
] + [["1", "-1"], ["-1", "abc"]]


@pytest.mark.parametrize("value", ADMIN_BAD_ACTIONS_LIMIT)
def test_bad_actions_daily_limit_in_the_budget_admin_is_a_form_error_and_saves_nothing(
    as_admin, budget, value
):
    budget.actions_daily_limit = 25
    budget.save()
    before = snapshot()
    url = reverse("admin:clayops_creditbudget_change", args=[budget.pk])

    response = as_admin.post(url, budget_form(budget, actions_daily_limit=value))

    assert response.status_code == 200, value
    assert "actions_daily_limit" in response.context["adminform"].form.errors, value
    assert snapshot() == before

    added = as_admin.post(reverse("admin:clayops_creditbudget_add"), budget_form(actions_daily_limit=value))
    assert added.status_code == 200 and "actions_daily_limit" in added.context["adminform"].form.errors
    assert snapshot() == before


@pytest.mark.parametrize("value", [str(2**31), str(2**63 - 1)])
def test_a_huge_actions_daily_limit_in_the_admin_is_refused_or_works_everywhere(
    as_admin, webhook, value, django_capture_on_commit_callbacks
):
    """PostgreSQL's integer column refuses 2**31 (a form error); SQLite stores up to 2**63 - 1. If the
    admin takes it, the dashboard, the alert rules and the budget's hold must all work with it."""
    b = webhook.workspace.budget
    before = snapshot()
    response = as_admin.post(
        reverse("admin:clayops_creditbudget_change", args=[b.pk]), budget_form(b, actions_daily_limit=value)
    )
    assert response.status_code in (200, 302), value
    if response.status_code == 200:
        assert "actions_daily_limit" in response.context["adminform"].form.errors
        assert snapshot() == before
        return
    b.refresh_from_db()
    assert b.actions_daily_limit == int(value)
    Webhook.objects.filter(pk=webhook.pk).update(actions_per_row=100)
    lead = make_lead(1, webhook=webhook, state=S.QUEUED)
    assert budget.reserve_many(budget=b, amount=Decimal("6"), actions=100, lead_ids=[lead.pk])
    assert b.actions_remaining() == int(value) - 100
    alerts.evaluate()
    no_500_afterwards(as_admin)
    assert as_admin.get(reverse("admin:clayops_creditbudget_changelist")).status_code == 200
    assert b"budget_actions" in metrics.exposition()  # the Prometheus exposition still renders


WEBHOOK_BAD_ACTIONS = [*HOSTILE_NUMBERS, "101", str(2**15), "", ["1", "101"]]


@pytest.mark.parametrize("value", WEBHOOK_BAD_ACTIONS)
def test_bad_actions_per_row_in_the_webhook_admin_is_a_form_error_and_saves_nothing(as_admin, webhook, value):
    before = snapshot()
    url = reverse("admin:clayops_webhook_change", args=[webhook.pk])

    response = as_admin.post(url, webhook_form(webhook, actions_per_row=value))

    assert response.status_code == 200, value
    assert "actions_per_row" in response.context["adminform"].form.errors, value
    assert snapshot() == before


@pytest.mark.parametrize(
    "value", ["\x00", "x" * 10_000, "' OR 1=1 --", "false", "0", "off", "ÿ", ["on", "false"], ["false", "on"]]
)
def test_odd_reenrich_served_values_in_the_admin_save_a_boolean_never_a_500(as_admin, webhook, value):
    url = reverse("admin:clayops_webhook_change", args=[webhook.pk])
    response = as_admin.post(url, webhook_form(webhook, reenrich_served=value))
    assert response.status_code == 302, value
    webhook.refresh_from_db()
    assert webhook.reenrich_served in (True, False)
    assert as_admin.get(url).status_code == 200


def test_reenrich_served_left_out_of_the_admin_form_is_off(as_admin, webhook):
    form = webhook_form(webhook)
    del form["reenrich_served"]
    assert as_admin.post(reverse("admin:clayops_webhook_change", args=[webhook.pk]), form).status_code == 302
    webhook.refresh_from_db()
    assert webhook.reenrich_served is False


def test_the_admin_forms_for_the_new_fields_refuse_viewers_and_posts_without_csrf(client, viewer, webhook):
    b = webhook.workspace.budget
    posts = [
        (reverse("admin:clayops_creditbudget_change", args=[b.pk]), budget_form(b, actions_daily_limit="0")),
        (reverse("admin:clayops_creditbudget_add"), budget_form(actions_daily_limit="1")),
        (
            reverse("admin:clayops_webhook_change", args=[webhook.pk]),
            webhook_form(webhook, actions_per_row="100", reenrich_served=""),
        ),
    ]
    before = snapshot()

    # A viewer (no staff flag): the admin's login page.
    client.force_login(viewer)
    for url, data in posts:
        response = client.post(url, data)
        assert response.status_code in (302, 403), url
        if response.status_code == 302:
            assert "/admin/login/" in response["Location"]

    # A staff viewer who may only look: 403 on every write.
    staff = make_user("looker", is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(codename__in=["view_creditbudget", "view_webhook"]))
    client.force_login(staff)
    for url, data in posts:
        assert client.post(url, data).status_code == 403, url

    # An admin without the CSRF token: 403.
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(make_user("root2", is_staff=True, is_superuser=True))
    for url, data in posts:
        assert strict.post(url, data).status_code == 403, url

    assert snapshot() == before


# --- 3. The import page's group retry: scope ----------------------------------------------------------


def import_with_dlq(webhook, n: int = 3):
    imp = make_lead_import(webhook=webhook)
    entries = [
        make_dead_letter(
            i,
            webhook=webhook,
            lead=make_lead(i, webhook=webhook, lead_import=imp, line=i + 2, state=S.DEAD, attempt_count=5),
        )
        for i in range(n)
    ]
    return imp, entries


def entry_states(entries) -> list[str]:
    found = dict(DeadLetter.objects.filter(pk__in=[e.pk for e in entries]).values_list("pk", "state"))
    return [found[e.pk] for e in entries]


def retry(client, imp, data=None, **kw):
    return client.post(reverse("dashboard:import_dlq_retry", args=[imp.pk]), data or {}, **kw)


@pytest.fixture
def empty_budget(webhook):
    """Today's budget pays for nothing: a "budget" scope retries none, any other scope retries all."""
    CreditBudget.objects.filter(pk=webhook.workspace.budget_id).update(daily_limit=Decimal("0"))
    return webhook


@pytest.mark.parametrize(
    "scope",
    [
        "",
        "all",
        "BUDGET",
        "Budget",
        " budget",
        "budget ",
        "budget\x00",
        "\x00",
        "budget\r\n",
        "x" * 10_000,
        "' OR 1=1 --",
        "预算",
        "1e309",
        str(2**63),
        "-1",
        ["budget", "all"],
    ],
)
def test_any_scope_but_budget_retries_all_and_is_no_500(as_operator, empty_budget, scope):
    imp, entries = import_with_dlq(empty_budget)

    response = retry(as_operator, imp, {"scope": scope})

    assert response.status_code == 302, scope
    assert response["Location"] == reverse("dashboard:import_detail", args=[imp.pk])
    assert entry_states(entries) == [D.RETRYING] * 3
    assert as_operator.get(response["Location"]).status_code == 200


@pytest.mark.parametrize("data", [{"scope": "budget"}, {"scope": ["all", "budget"]}])
def test_budget_scope_with_an_exhausted_budget_retries_nothing_and_changes_nothing(
    as_operator, empty_budget, data
):
    imp, entries = import_with_dlq(empty_budget)
    leads_before = dict(Lead.objects.values_list("pk", "state"))
    budgets_before = snapshot()["budgets"]

    response = retry(as_operator, imp, data)

    assert response.status_code == 302
    assert entry_states(entries) == [D.PENDING] * 3
    assert dict(Lead.objects.values_list("pk", "state")) == leads_before
    assert snapshot()["budgets"] == budgets_before
    assert not AuditEntry.objects.filter(action__in=["dlq_retry", "import_dlq_retry"]).exists()


def test_budget_scope_that_fits_nothing_does_not_claim_the_dlq_is_empty(as_operator, empty_budget):
    """Three entries wait in the DLQ but none fits today's budget: the message must not say "No lead
    of this import is in the DLQ" (the import page then still lists three)."""
    imp, entries = import_with_dlq(empty_budget)

    page = retry(as_operator, imp, {"scope": "budget"}, follow=True).content.decode()

    assert entry_states(entries) == [D.PENDING] * 3
    assert "No lead of this import is in the DLQ" not in page


@pytest.mark.parametrize(
    ("daily_limit", "actions_limit", "credits_per_row", "actions_per_row", "retried"),
    [
        ("1000", 0, "6", 1, 0),  # no Actions left
        ("1000", 2, "6", 1, 2),  # Actions for two
        ("1000", 2**31 - 1, "6", 100, 3),  # the largest limit the Connect form takes
        ("999999999999.99", None, "999999999999.99", 100, 1),  # the largest credits the fields hold
        ("12", None, "6", 0, 2),  # credits for two, Actions free
        ("0", 0, "0", 0, 3),  # free rows fit any budget, even an empty one
    ],
)
def test_budget_scope_retries_exactly_what_fits_at_the_edges(
    as_operator, webhook, daily_limit, actions_limit, credits_per_row, actions_per_row, retried
):
    CreditBudget.objects.filter(pk=webhook.workspace.budget_id).update(
        daily_limit=Decimal(daily_limit), actions_daily_limit=actions_limit
    )
    Webhook.objects.filter(pk=webhook.pk).update(
        credits_per_row=Decimal(credits_per_row), actions_per_row=actions_per_row
    )
    imp, entries = import_with_dlq(webhook)

    response = retry(as_operator, imp, {"scope": "budget"})

    assert response.status_code == 302
    assert entry_states(entries) == [D.RETRYING] * retried + [D.PENDING] * (3 - retried)
    assert as_operator.get(reverse("dashboard:import_detail", args=[imp.pk])).status_code == 200


def test_group_retry_with_htmx_and_a_hostile_scope_redirects_in_page(as_operator, empty_budget):
    imp, entries = import_with_dlq(empty_budget)
    response = retry(as_operator, imp, {"scope": "budget\x00"}, headers=HX)
    assert response.status_code == 200
    assert response["HX-Redirect"] == reverse("dashboard:import_detail", args=[imp.pk])
    assert entry_states(entries) == [D.RETRYING] * 3


def test_group_retry_by_a_viewer_without_csrf_or_by_get_changes_nothing(client, viewer, operator, webhook):
    imp, entries = import_with_dlq(webhook)
    before = snapshot()
    client.force_login(viewer)
    for data in ({"scope": "budget"}, {"scope": "all"}, {"scope": ["budget", "all"]}, {}):
        assert retry(client, imp, data).status_code == 403
        assert retry(client, imp, data, headers=HX).status_code == 403
    client.force_login(operator)
    assert (
        client.get(reverse("dashboard:import_dlq_retry", args=[imp.pk]), {"scope": "all"}).status_code == 405
    )
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(operator)
    assert retry(strict, imp, {"scope": "all"}).status_code == 403
    assert snapshot() == before
    assert entry_states(entries) == [D.PENDING] * 3


# --- 4. Leads resolve: reenrich, and hostile action / state / ids / webhook / next ----------------------


def resolve(client, data, **kw):
    return client.post(reverse("dashboard:leads_resolve"), data, **kw)


@pytest.fixture
def served(webhook):
    """Leads in every state the resolve action knows, and one it does not."""
    return {
        "cache": [make_lead(i, webhook=webhook, state=S.SERVED_CACHE, served=CACHED) for i in (1, 2)],
        "fallback": [make_lead(i, webhook=webhook, state=S.SERVED_FALLBACK, served=FALLBACK) for i in (3, 4)],
        "overdue": [make_lead(5, webhook=webhook, state=S.OVERDUE)],
        "uncertain": [make_lead(6, webhook=webhook, state=S.UNCERTAIN)],
        "queued": [make_lead(7, webhook=webhook, state=S.QUEUED)],
        "enriched": [make_lead(8, webhook=webhook, state=S.ENRICHED, enriched={"company": "Acme"})],
    }


def lead_states(leads) -> list[str]:
    found = dict(Lead.objects.filter(pk__in=[lead.pk for lead in leads]).values_list("pk", "state"))
    return [found[lead.pk] for lead in leads]


BAD_ACTION_STATE = [
    *[
        (action, "served_cache")
        for action in (
            "",
            "REENRICH",
            "Reenrich",
            "reenrich ",
            " reenrich",
            "reenrich\x00",
            "re-enrich",
            "re_enrich",
            "x" * 10_000,
            "' OR 1=1 --",
            "__class__",
            "resolve",
            "wait",
            "resend",
            "deliver",
            "再",
            "reenrich\r\nX-Injected: 1",
        )
    ],
    *[
        ("reenrich", state)
        for state in (
            "",
            "SERVED_CACHE",
            "served_cache ",
            "served_cache\x00",
            "served",
            "served_%",
            "*",
            "queued",
            "dead",
            "enriched",
            "deferred",
            "overdue",
            "uncertain",
            "' OR state='served_cache",
            "x" * 10_000,
            "served\u200bcache",
        )
    ],
    (["reenrich", "deliver"], "served_cache"),  # the last one counts: deliver, not for this state
    ("reenrich", ["served_cache", "overdue"]),
    (["reenrich", "wait"], ["served_fallback", "served_cache"]),
    (None, "served_cache"),
    ("reenrich", None),
]


@pytest.mark.parametrize(("action", "state"), BAD_ACTION_STATE)
def test_an_action_not_allowed_for_the_state_is_400_and_changes_nothing(as_operator, served, action, state):
    before = snapshot()
    data = {"ids": [lead.pk for leads in served.values() for lead in leads]}
    if action is not None:
        data["action"] = action
    if state is not None:
        data["state"] = state

    response = resolve(as_operator, data)

    assert response.status_code == 400, (action, state)
    assert response["Content-Type"].startswith("text/plain")
    assert snapshot() == before


def test_a_json_body_is_no_form_and_is_refused(as_operator, served):
    before = snapshot()
    response = as_operator.post(
        reverse("dashboard:leads_resolve"),
        data={"action": "reenrich", "state": "served_cache"},
        content_type="application/json",
    )
    assert response.status_code == 400 and snapshot() == before


GARBAGE_IDS = [
    ["abc"],
    ["-1"],
    ["0"],
    [str(2**63)],
    [str(10**30)],
    ["1e3"],
    ["1.0"],
    ["\x00"],
    ["1\x00"],
    ["' OR 1=1 --"],
    ["１"],
    ["٣"],
    ["true"],
    ["[1, 2]"],
    ["x" * 10_000],
]


@pytest.mark.parametrize("ids", GARBAGE_IDS)
def test_ids_that_are_no_ids_do_not_widen_the_action_to_every_lead_of_the_state(as_operator, served, ids):
    """The operator picked leads, but none of the ids is one: refuse (4xx) or move nothing. Moving
    every served lead instead turns a malformed request into the widest action there is."""
    before = snapshot()

    response = resolve(as_operator, {"action": "reenrich", "state": "served_fallback", "ids": ids})

    assert response.status_code in (302, 400), ids
    assert lead_states(served["fallback"]) == [S.SERVED_FALLBACK] * 2, (ids, response.status_code)
    if response.status_code == 400:
        assert snapshot() == before


@pytest.mark.parametrize("only", ["abc", "-1", str(2**63), "\x00"])
def test_a_garbage_only_id_does_not_widen_the_action_either(as_operator, served, only):
    response = resolve(as_operator, {"action": "reenrich", "state": "served_cache", "only": only})
    assert response.status_code in (302, 400), only
    assert lead_states(served["cache"]) == [S.SERVED_CACHE] * 2, (only, response.status_code)


def test_ids_of_leads_in_other_states_or_unknown_are_left_alone(as_operator, served):
    others = [*served["overdue"], *served["uncertain"], *served["queued"], *served["enriched"]]
    others_before = lead_states(others)
    ids = [lead.pk for lead in others] + [2**63 - 1, 999_999_999, served["cache"][0].pk]

    response = resolve(as_operator, {"action": "reenrich", "state": "served_cache", "ids": ids})

    assert response.status_code == 302
    assert lead_states(others) == others_before
    assert lead_states(served["cache"]) == [S.QUEUED, S.SERVED_CACHE]
    assert lead_states(served["fallback"]) == [S.SERVED_FALLBACK] * 2


def test_garbage_mixed_with_a_real_id_moves_only_the_real_one(as_operator, served):
    target = served["fallback"][1]
    ids = ["abc", "-1", "0", str(2**63), "\x00", "١", str(target.pk), str(target.pk)]

    response = resolve(as_operator, {"action": "reenrich", "state": "served_fallback", "ids": ids})

    assert response.status_code == 302
    assert lead_states(served["fallback"]) == [S.SERVED_FALLBACK, S.QUEUED]
    assert lead_states(served["cache"]) == [S.SERVED_CACHE] * 2
    assert AuditEntry.objects.get(action="lead_reenrich").count == 1


def test_nine_hundred_large_ids_are_no_500(as_operator, served):
    target = served["cache"][1]
    ids = [str(2**63 - 1 - i) for i in range(900)] + [str(target.pk)]
    response = resolve(as_operator, {"action": "reenrich", "state": "served_cache", "ids": ids})
    assert response.status_code == 302
    assert lead_states(served["cache"]) == [S.SERVED_CACHE, S.QUEUED]


def test_more_fields_than_django_takes_is_400_and_changes_nothing(as_operator, served):
    before = snapshot()
    ids = [str(served["cache"][0].pk)] * 1500
    response = resolve(as_operator, {"action": "reenrich", "state": "served_cache", "ids": ids})
    assert response.status_code == 400
    assert snapshot() == before


@pytest.fixture
def two_hooks(workspace):
    first = make_webhook(workspace=workspace, name="first", url=CLAY_URL + "_1")
    second = make_webhook(workspace=workspace, name="second", url=CLAY_URL + "_2")
    leads = {
        first.pk: [make_lead(i, webhook=first, state=S.SERVED_FALLBACK, served=FALLBACK) for i in (1, 2)],
        second.pk: [make_lead(i, webhook=second, state=S.SERVED_FALLBACK, served=FALLBACK) for i in (3, 4)],
    }
    return first, second, leads


@pytest.mark.parametrize(
    "webhook_value",
    ["abc", "-1", "0", str(2**63), str(10**30), "1.5", "1e3", "\x00", "' OR 1=1 --", "１", "null", "[1]"],
)
def test_a_webhook_that_is_no_id_does_not_widen_the_action_to_every_webhook(
    as_operator, two_hooks, webhook_value
):
    """Asked for one webhook's served leads with a malformed webhook id: refuse (4xx) or move nothing,
    never every webhook's leads."""
    first, second, leads = two_hooks
    before = snapshot()

    response = resolve(
        as_operator, {"action": "reenrich", "state": "served_fallback", "webhook": webhook_value}
    )

    assert response.status_code in (302, 400), webhook_value
    moved = [
        lead.pk for group in leads.values() for lead in group if lead_states([lead]) != [S.SERVED_FALLBACK]
    ]
    assert moved == [], (webhook_value, response.status_code)
    if response.status_code == 400:
        assert snapshot() == before


def test_a_valid_webhook_moves_only_its_own_leads_and_an_unknown_one_moves_none(as_operator, two_hooks):
    first, second, leads = two_hooks
    assert (
        resolve(
            as_operator, {"action": "reenrich", "state": "served_fallback", "webhook": "999999999"}
        ).status_code
        == 302
    )
    assert lead_states(leads[first.pk] + leads[second.pk]) == [S.SERVED_FALLBACK] * 4

    # Repeated: the last one counts.
    data = {"action": "reenrich", "state": "served_fallback", "webhook": [str(first.pk), str(second.pk)]}
    assert resolve(as_operator, data).status_code == 302
    assert lead_states(leads[first.pk]) == [S.SERVED_FALLBACK] * 2
    assert lead_states(leads[second.pk]) == [S.QUEUED] * 2

    # ids of the other webhook's leads with this webhook: nothing.
    data = {
        "action": "reenrich",
        "state": "served_fallback",
        "webhook": str(second.pk),
        "ids": [lead.pk for lead in leads[first.pk]],
    }
    assert resolve(as_operator, data).status_code == 302
    assert lead_states(leads[first.pk]) == [S.SERVED_FALLBACK] * 2


OFFSITE_NEXT = [
    "https://evil.example/",
    "http://evil.example",
    "//evil.example/",
    "///evil.example/",
    "////evil.example",
    "\\\\evil.example",
    "/\\evil.example",
    "\\/evil.example",
    "/\\/evil.example",
    "http:/evil.example",
    "https:evil.example",
    "http:\\\\evil.example",
    " //evil.example",
    "\t//evil.example",
    "\n//evil.example",
    "\x00//evil.example",
    "/\t/evil.example",
    "http://testserver@evil.example/",
    "http://evil.example\\@testserver/",
    "http://evil.example#@testserver/",
    "http://evil.example?@testserver/",
    "https://testserver.evil.example/",
    "http://[::1]/",
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    " javascript:alert(1)",
    "java\tscript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "ftp://evil.example/",
    "mailto:a@evil.example",
    "https://evil.example/" + "a" * 3000,
    "/" + "a" * 3000,
    "https://ｅｖｉｌ.example/",
    "https://evil。example/",
    "//evil%2Eexample",
    ["/leads/", "//evil.example/"],
    ["//evil.example/", "https://evil.example/"],
]


def stays_on_site(location: str) -> bool:
    parts = urlsplit(location)
    return (
        parts.scheme in ("", "http", "https")
        and parts.netloc in ("", "testserver")
        and not location.startswith(("//", "/\\", "\\"))
        and not any(ch in location for ch in "\r\n\t\x00\\")
    )


@pytest.mark.parametrize("nxt", OFFSITE_NEXT)
def test_an_off_site_next_never_redirects_off_site(as_operator, served, nxt):
    response = resolve(as_operator, {"action": "reenrich", "state": "served_cache", "next": nxt})

    assert response.status_code in (302, 400), nxt
    if response.status_code == 302:
        assert stays_on_site(response["Location"]), (nxt, response["Location"])


@pytest.mark.parametrize("nxt", OFFSITE_NEXT[:6])
def test_an_off_site_next_on_a_refused_action_is_400_and_changes_nothing(as_operator, served, nxt):
    before = snapshot()
    response = resolve(as_operator, {"action": "reenrich", "state": "overdue", "next": nxt})
    assert response.status_code == 400 and "Location" not in response
    assert snapshot() == before


@pytest.mark.parametrize(
    "nxt",
    [
        "/leads/?state=served_cache",
        "/leads/\r\nSet-Cookie: pwned=1",
        "/leads/%0d%0aSet-Cookie:%20pwned=1",
        "/leads/?q=<script>alert(1)</script>",
        "/leads/?q=ünïcødé&x=💥",
        "/leads/?q=\x00",
        "http://testserver/leads/",
    ],
)
def test_an_on_site_next_is_followed_without_header_injection(as_operator, served, nxt):
    response = resolve(as_operator, {"action": "reenrich", "state": "served_cache", "next": nxt})
    assert response.status_code == 302, nxt
    location = response["Location"]
    assert stays_on_site(location), location
    assert "pwned" not in response.cookies
    assert "\r" not in location and "\n" not in location and "<script>" not in location
    assert lead_states(served["cache"]) == [S.QUEUED] * 2


def test_reenrich_moves_only_the_served_leads_of_its_state_back_to_the_queue(as_operator, served):
    others = [*served["fallback"], *served["overdue"], *served["uncertain"], *served["queued"]]
    others_before = lead_states(others)
    response = resolve(as_operator, {"action": "reenrich", "state": "served_cache"})
    assert response.status_code == 302
    assert response["Location"] == reverse("dashboard:leads") + "?state=served_cache"
    assert lead_states(served["cache"]) == [S.QUEUED] * 2
    assert lead_states(others) == others_before
    assert [lead.served for lead in Lead.objects.filter(pk__in=[x.pk for x in served["cache"]])] == [
        CACHED
    ] * 2

    # Again: nothing left in that state, nothing moves, still no 500.
    again = resolve(as_operator, {"action": "reenrich", "state": "served_cache"})
    assert again.status_code == 302
    assert AuditEntry.objects.filter(action="lead_reenrich").count() == 1
    no_500_afterwards(as_operator)


def test_leads_resolve_is_refused_to_viewers_without_csrf_and_by_get(client, viewer, operator, served):
    before = snapshot()
    hostile = [
        {"action": "reenrich", "state": "served_cache"},
        {"action": "reenrich", "state": "served_fallback", "ids": ["abc"], "next": "//evil.example/"},
        {"action": "reenrich", "state": "served_fallback", "webhook": "abc"},
        {"action": "deliver", "state": "overdue"},
        {"action": "resend", "state": "uncertain", "ids": [served["uncertain"][0].pk]},
        {"action": "wait", "state": "overdue"},
        {"action": ["reenrich", "reenrich"], "state": "served_cache", "only": "1"},
        {},
    ]
    client.force_login(viewer)
    for data in hostile:
        assert resolve(client, data).status_code == 403, data
        assert resolve(client, data, headers=HX).status_code == 403, data

    client.force_login(operator)
    assert client.get(reverse("dashboard:leads_resolve"), hostile[0]).status_code == 405
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(operator)
    for data in hostile[:3]:
        assert resolve(strict, data).status_code == 403, data

    anonymous = Client()
    response = resolve(anonymous, hostile[0])
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert snapshot() == before
