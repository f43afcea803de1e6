"""The "Connect Clay" page (dashboard/connect.py, clayops/provisioning.py, clayops/plans.py): one form
creates the workspace, its budget and the webhook atomically; presets fill the limits; a pasted URL
passes the destination policy or nothing is created; the callback secret is shown once, rotated
(audited; the old one stops authenticating); the test row takes the normal path through the budget."""

from __future__ import annotations

import csv
import json
from decimal import Decimal
from pathlib import Path

import django_rq
import httpx
import pytest
import respx
from django.conf import settings as django_settings
from django.db import IntegrityError
from django.urls import reverse

from clayops import budget, plans, provisioning
from clayops.contract import CALLBACK_HEADER, LEAD_ID_FIELD, SEND_ID_FIELD
from clayops.models import (
    Attempt,
    AuditEntry,
    CircuitBreaker,
    CreditBudget,
    CreditReservation,
    Lead,
    Webhook,
    Workspace,
)
from tests.factories import make_budget, make_lead, make_leads, make_webhook, make_workspace

S = Lead.State
CLAY_URL = "http://127.0.0.1:9/v3/sources/webhook/t_connect"  # the test settings allow loopback http
SAMPLE = Path(django_settings.BASE_DIR) / "docs" / "sample-leads.csv"


@pytest.fixture(autouse=True)
def _inline(settings):
    # Unit tests run inside one transaction: keep every request on this thread's connection.
    settings.CLAYOPS_SEND_CONCURRENCY = 1


@pytest.fixture
def as_operator(client, operator):
    client.force_login(operator)
    return client


@pytest.fixture
def as_viewer(client, viewer):
    client.force_login(viewer)
    return client


def form_data(**changes) -> dict:
    data = {
        "webhook_url": CLAY_URL,
        "token": "tok-connect",
        "webhook_name": "people",
        "credits_per_row": "6",
        "row_cap": "",
        "workspace": "",
        "workspace_name": "acme-clay",
        "plan": "pro",
        "rate_limit": "",
        "burst": "",
        "hourly_cap": "",
        "daily_limit": "",
        "budget_timezone": "",
    }
    data.update(changes)
    return data


def counts() -> tuple[int, ...]:
    return (
        Workspace.objects.count(),
        CreditBudget.objects.count(),
        Webhook.objects.count(),
        CircuitBreaker.objects.count(),
        AuditEntry.objects.count(),
    )


def create(client, **changes):
    return client.post(reverse("dashboard:connect_create"), form_data(**changes))


# --- The form -------------------------------------------------------------------------------------


def test_it_creates_the_workspace_its_budget_and_the_webhook_in_one_step(as_operator, operator):
    response = create(as_operator, daily_limit="2500", budget_timezone="Europe/Berlin")

    webhook = Webhook.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("dashboard:connect_webhook", args=[webhook.pk])
    workspace = webhook.workspace
    assert (workspace.name, workspace.budget.name) == ("acme-clay", "acme-clay")
    assert workspace.budget.daily_limit == Decimal("2500") and workspace.budget.timezone == "Europe/Berlin"
    assert (webhook.name, webhook.url, webhook.token) == ("people", CLAY_URL, "tok-connect")
    assert webhook.credits_per_row == Decimal("6") and webhook.row_cap == 50_000
    assert CircuitBreaker.objects.get(webhook=webhook).state == CircuitBreaker.State.CLOSED
    entry = AuditEntry.objects.get(action="clay_connected")
    assert entry.user == operator and entry.target == f"webhook:{webhook.pk}"
    assert entry.detail["created_workspace"] is True and entry.detail["plan"] == "pro"
    assert webhook.callback_secret not in json.dumps(entry.detail)


def test_it_adds_a_webhook_to_an_existing_workspace_and_leaves_its_limits_alone(as_operator):
    workspace = make_workspace(name="existing", rate_limit=3, burst=5, hourly_cap=77)
    before = (Workspace.objects.count(), CreditBudget.objects.count())

    response = create(
        as_operator, workspace=str(workspace.pk), workspace_name="", webhook_name="", rate_limit="99"
    )

    assert response.status_code == 302
    assert (Workspace.objects.count(), CreditBudget.objects.count()) == before
    webhook = Webhook.objects.get()
    assert webhook.workspace == workspace and webhook.name == "Clay table"
    workspace.refresh_from_db()
    assert (workspace.rate_limit, workspace.burst, workspace.hourly_cap) == (3, 5, 77)
    # A second one gets the next free name.
    create(as_operator, workspace=str(workspace.pk), webhook_name="", webhook_url=CLAY_URL + "2")
    assert sorted(Webhook.objects.values_list("name", flat=True)) == ["Clay table", "Clay table 2"]


@pytest.mark.parametrize("key", sorted(plans.PLANS))
def test_a_plan_fills_the_limits_left_empty(as_operator, key):
    plan = plans.PLANS[key]

    assert create(as_operator, plan=key).status_code == 302

    webhook = Webhook.objects.select_related("workspace").get()
    workspace = webhook.workspace
    assert workspace.rate_limit == plan.rate_limit and workspace.burst == plan.burst
    assert workspace.hourly_cap == plan.hourly_cap and webhook.row_cap == plan.row_cap


def test_typed_limits_win_over_the_plan_and_an_hourly_cap_of_0_means_none(as_operator):
    create(as_operator, plan="free", rate_limit="2.5", burst="4", hourly_cap="0", row_cap="1000")

    webhook = Webhook.objects.select_related("workspace").get()
    assert (webhook.workspace.rate_limit, webhook.workspace.burst) == (2.5, 4)
    assert webhook.workspace.hourly_cap is None  # the free plan's 500 was overridden by 0: none
    assert webhook.row_cap == 1000


def test_the_page_shows_the_chosen_plans_values_and_the_presets(as_operator):
    page = as_operator.get(reverse("dashboard:connect"), {"plan": "free"})

    form = page.context["form"]
    assert form["plan"].value() == "free"
    assert form["hourly_cap"].value() == 500 and form["burst"].value() == 20
    assert form["row_cap"].value() == 50_000 and form["rate_limit"].value() == 10.0
    presets = json.loads(form.fields["plan"].widget.attrs["data-presets"])
    assert presets["free"] == {"rate_limit": 10.0, "burst": 20, "hourly_cap": 500, "row_cap": 50_000}
    assert 'name="hourly_cap" value="500"' in page.content.decode()


def test_the_published_clay_limits_are_the_presets_and_the_model_defaults():
    for plan in plans.PLANS.values():
        assert plan.burst == 20 and plan.row_cap == 50_000 and plan.rate_limit == 10.0
    assert Workspace._meta.get_field("rate_limit").default == plans.RATE_PER_SECOND
    assert Workspace._meta.get_field("burst").default == plans.BURST
    assert Webhook._meta.get_field("row_cap").default == plans.ROW_CAP
    assert Webhook._meta.get_field("credits_per_row").default == plans.DEFAULT_CREDITS_PER_ROW


def test_the_default_budget_pays_for_the_readme_sample(as_operator):
    with SAMPLE.open(newline="") as f:
        rows = sum(1 for _ in csv.DictReader(f))
    assert rows >= plans.SAMPLE_ROWS == 200
    create(as_operator)  # daily budget left empty: the default
    webhook = Webhook.objects.select_related("workspace__budget").get()
    credit_budget = webhook.workspace.budget
    assert credit_budget.daily_limit == plans.DEFAULT_DAILY_LIMIT

    leads = make_leads(plans.SAMPLE_ROWS, webhook=webhook)
    held = budget.reserve_many(
        budget=credit_budget, amount=webhook.credits_per_row, lead_ids=[lead.pk for lead in leads]
    )

    assert len(held) == plans.SAMPLE_ROWS  # every row of the sample is paid for today


@pytest.mark.parametrize(
    ("url", "policy", "message"),
    [
        ("http://api.clay.com/v3/sources/webhook/abc", "clay", "only https URLs are allowed"),
        (
            "https://evil.example.com/v3/sources/webhook/abc",
            "clay",
            "host evil.example.com is not an allowed",
        ),
        ("https://10.1.2.3/v3/sources/webhook/abc", "any host", "10.1.2.3 is a private address"),
        ("https://169.254.169.254/latest/meta-data", "any host", "a cloud metadata address"),
        ("https://user:pw@api.clay.com/v3/sources/webhook/abc", "clay", "credentials in the URL"),
        ("https://api.clay.com/v3/sources/webhook/a b", "clay", "Paste only the webhook URL"),
        ("not a url", "clay", "Paste only the webhook URL"),
        ("ftp://api.clay.com/x", "clay", "only https URLs are allowed"),
    ],
)
def test_a_refused_url_is_a_form_error_and_creates_nothing(as_operator, settings, url, policy, message):
    settings.CLAYOPS_DESTINATION_ALLOW_HTTP = False
    settings.CLAYOPS_DESTINATION_PRIVATE_NETWORKS = []
    settings.CLAYOPS_DESTINATION_HOSTS = ["api.clay.com", "*.clay.com"] if policy == "clay" else ["*"]
    before = counts()

    response = create(as_operator, webhook_url=url)

    assert response.status_code == 400
    assert message in response.context["form"].errors["webhook_url"][0]
    assert message in response.content.decode()
    assert "Nothing was created" in response.content.decode()
    assert counts() == before


def test_a_pasted_url_is_trimmed_of_quotes_and_spaces(as_operator):
    assert create(as_operator, webhook_url=f'  "{CLAY_URL}"\n').status_code == 302
    assert Webhook.objects.get().url == CLAY_URL


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"workspace_name": ""}, "workspace_name"),
        ({"workspace": "999999"}, "workspace"),
        ({"rate_limit": "-1"}, "rate_limit"),
        ({"rate_limit": "nan"}, "rate_limit"),
        ({"burst": "0"}, "burst"),
        ({"row_cap": "99999999999"}, "row_cap"),
        ({"daily_limit": "-5"}, "daily_limit"),
        ({"budget_timezone": "Mars/Olympus"}, "budget_timezone"),
        ({"credits_per_row": "abc"}, "credits_per_row"),
        ({"plan": "platinum"}, "plan"),
        ({"token": "a\nb"}, "token"),
        ({"webhook_url": ""}, "webhook_url"),
        ({"webhook_name": "x" * 101}, "webhook_name"),
    ],
)
def test_bad_input_is_a_form_error_and_creates_nothing(as_operator, changes, field):
    before = counts()

    response = create(as_operator, **changes)

    assert response.status_code == 400
    assert field in response.context["form"].errors
    assert counts() == before


def test_a_taken_workspace_name_is_a_form_error(as_operator):
    make_workspace(name="acme-clay")
    before = counts()

    response = create(as_operator)

    assert response.status_code == 400
    assert "exists" in response.context["form"].errors["workspace_name"][0]
    assert counts() == before


def test_a_budget_name_taken_by_another_budget_gets_a_suffix(as_operator):
    make_budget(name="acme-clay")

    assert create(as_operator).status_code == 302

    assert Workspace.objects.get(name="acme-clay").budget.name == "acme-clay budget"


def test_nothing_is_half_created_when_the_webhook_fails_after_the_workspace(as_operator):
    """The workspace and budget are written before the webhook is checked against the others: a URL
    that is already another webhook's fails after them, and the transaction takes them back."""
    make_webhook(workspace=make_workspace(name="other"), name="taken", url=CLAY_URL)
    before = counts()

    response = create(as_operator)

    assert response.status_code == 400
    assert "already webhook 'taken'" in response.context["form"].errors["webhook_url"][0]
    assert counts() == before
    assert not Workspace.objects.filter(name="acme-clay").exists()


def test_nothing_is_half_created_when_the_last_write_fails(as_operator, monkeypatch):
    """A race (another request took a name between the checks and the insert) ends in an
    IntegrityError at the very last write: a form error, and no workspace, budget or webhook."""
    before = counts()

    def collide(*args, **kwargs):
        raise IntegrityError("UNIQUE constraint failed")

    monkeypatch.setattr(CircuitBreaker.objects, "create", collide)
    response = create(as_operator)

    assert response.status_code == 400
    assert "at the same moment" in response.context["form"].non_field_errors()[0]
    assert counts() == before


def test_viewers_see_the_page_but_not_the_form_and_cannot_post(as_viewer, webhook):
    page = as_viewer.get(reverse("dashboard:connect"))
    assert page.status_code == 200
    assert "Only operators can connect" in page.content.decode()
    assert 'name="webhook_url"' not in page.content.decode()
    before = counts(), webhook.callback_secret, Lead.objects.count()

    assert create(as_viewer).status_code == 403
    assert as_viewer.post(reverse("dashboard:connect_rotate", args=[webhook.pk])).status_code == 403
    assert as_viewer.post(reverse("dashboard:connect_test", args=[webhook.pk])).status_code == 403

    webhook.refresh_from_db()
    assert (counts(), webhook.callback_secret, Lead.objects.count()) == before


def test_the_nav_link_is_for_operators(client, operator, viewer):
    client.force_login(viewer)
    assert "Connect Clay</a>" not in client.get(reverse("dashboard:overview")).content.decode()
    client.force_login(operator)
    assert "Connect Clay</a>" in client.get(reverse("dashboard:overview")).content.decode()


# --- What to type into Clay, and the secret ------------------------------------------------------------


def test_the_instructions_show_the_callback_url_header_and_body(as_operator, settings):
    settings.CLAYOPS_PUBLIC_URL = "https://clayops.example.com"
    create(as_operator)
    webhook = Webhook.objects.get()

    page = as_operator.get(reverse("dashboard:connect_webhook", args=[webhook.pk]))

    text = page.content.decode()
    assert page.context["callback_url"] == f"https://clayops.example.com/api/clay/callback/{webhook.pk}/"
    assert page.context["callback_url"] in text and page.context["url_warnings"] == []
    assert CALLBACK_HEADER in text
    body = json.loads(page.context["body_template"])
    assert list(body)[:2] == [LEAD_ID_FIELD, SEND_ID_FIELD]
    assert page["Cache-Control"] == "no-store"


def test_a_loopback_public_url_takes_the_requests_address_and_warns(as_operator, settings, webhook):
    settings.CLAYOPS_PUBLIC_URL = "http://127.0.0.1:8000"
    settings.ALLOWED_HOSTS = ["clayops.internal.example", "127.0.0.1"]

    page = as_operator.get(
        reverse("dashboard:connect_webhook", args=[webhook.pk]), HTTP_HOST="clayops.internal.example"
    )

    assert page.context["callback_url"] == f"http://clayops.internal.example/api/clay/callback/{webhook.pk}/"
    assert any("plain http" in w for w in page.context["url_warnings"])
    local = as_operator.get(reverse("dashboard:connect_webhook", args=[webhook.pk]), HTTP_HOST="127.0.0.1")
    assert any("not reachable from Clay" in w for w in local.context["url_warnings"])


def test_the_secret_is_shown_once_then_masked(as_operator):
    response = create(as_operator)
    webhook = Webhook.objects.get()
    url = response["Location"]

    first = as_operator.get(url).content.decode()
    second = as_operator.get(url).content.decode()

    assert webhook.callback_secret in first and "Shown this once" in first
    assert webhook.callback_secret not in second
    assert webhook.callback_secret[:4] + "…" + webhook.callback_secret[-4:] in second


def test_a_viewer_never_sees_the_secret(as_viewer, webhook):
    page = as_viewer.get(reverse("dashboard:connect_webhook", args=[webhook.pk])).content.decode()
    assert webhook.callback_secret not in page
    assert "Rotate secret" not in page and "Send a test row</button>" not in page


def _callback(client, webhook_id: int, secret: str, lead_id: int):
    return client.post(
        reverse("clay-callback", args=[webhook_id]),
        data=json.dumps({LEAD_ID_FIELD: lead_id, "company_name": "Acme"}),
        content_type="application/json",
        headers={CALLBACK_HEADER: secret},
    )


def test_rotating_changes_the_secret_audits_it_and_the_old_one_stops_working(as_operator, operator, webhook):
    old = webhook.callback_secret
    lead = make_lead(0, webhook=webhook, state=S.ACCEPTED)
    assert as_operator.get(reverse("dashboard:connect_webhook", args=[webhook.pk])).context["secret"] == ""

    response = as_operator.post(reverse("dashboard:connect_rotate", args=[webhook.pk]))

    webhook.refresh_from_db()
    new = webhook.callback_secret
    assert response.status_code == 302 and new != old and len(new) >= 40
    entry = AuditEntry.objects.get(action="callback_secret_rotated")
    assert entry.user == operator and entry.target == f"webhook:{webhook.pk}"
    assert old not in json.dumps(entry.detail) and new not in json.dumps(entry.detail)
    page = as_operator.get(response["Location"]).content.decode()
    assert new in page and old not in page  # shown once, after the rotation
    assert new not in as_operator.get(response["Location"]).content.decode()

    assert _callback(as_operator, webhook.pk, old, lead.pk).status_code == 401
    lead.refresh_from_db()
    assert lead.state == S.ACCEPTED
    assert _callback(as_operator, webhook.pk, new, lead.pk).status_code == 200
    lead.refresh_from_db()
    assert lead.state == S.ENRICHED


def test_rotating_or_testing_an_unknown_webhook_is_a_404(as_operator):
    before = counts(), Lead.objects.count()
    assert as_operator.post(reverse("dashboard:connect_rotate", args=[999999])).status_code == 404
    assert as_operator.post(reverse("dashboard:connect_test", args=[999999])).status_code == 404
    assert as_operator.get(reverse("dashboard:connect_webhook", args=[999999])).status_code == 404
    assert as_operator.get(reverse("dashboard:connect_status", args=[999999])).status_code == 404
    assert (counts(), Lead.objects.count()) == before


# --- The test row ---------------------------------------------------------------------------------------


def _send_test_row(client, webhook, django_capture_on_commit_callbacks):
    """Press the button; return the test lead and the submission job RQ got for it."""
    queue = django_rq.get_queue("submit")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("dashboard:connect_test", args=[webhook.pk]), headers={"HX-Request": "true"}
        )
    assert response.status_code == 200
    lead = Lead.objects.get(fingerprint__startswith=f"{provisioning.TEST_ROW_PREFIX}{webhook.pk}:")
    jobs = [job for job in queue.jobs if lead.pk in job.args[0]]
    assert len(jobs) == 1 and jobs[0].func_name == "clayops.jobs.submit_leads"
    return lead, jobs[0], response


@respx.mock
def test_the_test_row_is_deferred_not_sent_when_the_budget_is_exhausted(
    as_operator, webhook, django_capture_on_commit_callbacks
):
    route = respx.post(webhook.url).mock(return_value=httpx.Response(200))
    budget.set_daily_limit(budget=webhook.workspace.budget, limit=Decimal("0"))

    lead, job, response = _send_test_row(as_operator, webhook, django_capture_on_commit_callbacks)
    assert lead.state == S.QUEUED and 'hx-trigger="every 2s"' in response.content.decode()
    job.func(*job.args)  # the job a worker would run, in this process

    lead.refresh_from_db()
    assert lead.state == S.DEFERRED and "budget" in lead.defer_reason.lower()
    assert route.call_count == 0
    assert not Attempt.objects.filter(lead=lead).exists()
    assert not CreditReservation.objects.filter(lead=lead).exists()
    status = as_operator.get(
        reverse("dashboard:connect_status", args=[webhook.pk]), headers={"HX-Request": "true"}
    )
    assert status.status_code == 200  # still polling: a deferred row goes out once the budget allows
    assert 'hx-trigger="every 2s"' in status.content.decode()
    assert lead.defer_reason in status.content.decode()


@respx.mock
def test_the_test_row_goes_out_through_the_guards_and_turns_green_on_the_callback(
    as_operator, webhook, django_capture_on_commit_callbacks
):
    route = respx.post(webhook.url).mock(return_value=httpx.Response(200))

    lead, job, _ = _send_test_row(as_operator, webhook, django_capture_on_commit_callbacks)
    assert AuditEntry.objects.filter(action="test_row_sent", target=f"webhook:{webhook.pk}").count() == 1
    job.func(*job.args)

    lead.refresh_from_db()
    assert lead.state == S.ACCEPTED and route.call_count == 1
    sent = json.loads(route.calls.last.request.content)
    send = CreditReservation.objects.get(lead=lead)  # the budget paid for it
    assert sent == {**provisioning.TEST_ROW, LEAD_ID_FIELD: lead.pk, SEND_ID_FIELD: send.pk}
    assert budget.usage_for(webhook.workspace.budget).spent == webhook.credits_per_row
    waiting = as_operator.get(
        reverse("dashboard:connect_status", args=[webhook.pk]), headers={"HX-Request": "true"}
    )
    assert waiting.status_code == 200 and "waiting for the HTTP API column" in waiting.content.decode()

    assert _callback(as_operator, webhook.pk, webhook.callback_secret, lead.pk).status_code == 200

    done = as_operator.get(
        reverse("dashboard:connect_status", args=[webhook.pk]), headers={"HX-Request": "true"}
    )
    assert done.status_code == 286  # htmx swaps it in and stops polling
    assert "Callback received at" in done.content.decode() and "tone-ok" in done.content.decode()
    lead.refresh_from_db()
    assert lead.state == S.ENRICHED and lead.domain == ""  # a test row fills no domain cache


def test_a_second_click_sends_no_second_row_while_the_first_is_on_its_way(as_operator, webhook):
    first = as_operator.post(reverse("dashboard:connect_test", args=[webhook.pk]))
    second = as_operator.post(reverse("dashboard:connect_test", args=[webhook.pk]))

    assert first.status_code == second.status_code == 302
    assert Lead.objects.filter(fingerprint__startswith=provisioning.TEST_ROW_PREFIX).count() == 1
    Lead.objects.update(state=S.DEAD)  # finished (refused): a new test row may go
    as_operator.post(reverse("dashboard:connect_test", args=[webhook.pk]))
    assert Lead.objects.filter(fingerprint__startswith=provisioning.TEST_ROW_PREFIX).count() == 2


def test_the_status_shows_a_refused_row_as_failed_and_stops_polling(as_operator, webhook):
    lead, _ = provisioning.send_test_row(webhook.pk)
    Lead.objects.filter(pk=lead.pk).update(state=S.DEAD, last_error="HTTP 422: bad row")

    status = as_operator.get(
        reverse("dashboard:connect_status", args=[webhook.pk]), headers={"HX-Request": "true"}
    )

    text = status.content.decode()
    assert status.status_code == 286 and "tone-bad" in text and "HTTP 422: bad row" in text
    assert "every 2s" not in text


def test_status_of_another_webhooks_test_row_is_not_shown(as_operator, webhook):
    other = make_webhook(workspace=webhook.workspace, name="other")
    provisioning.send_test_row(other.pk)

    status = as_operator.get(reverse("dashboard:connect_status", args=[webhook.pk]))

    assert "No test row sent yet" in status.content.decode()
