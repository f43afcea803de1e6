"""Hardening, wave 5: the Connect Clay pages, the Timeline, import reports and actions, deferral
reasons and the admin's Alert settings, tried as an attacker and as a careless user. Bad input is a
clear 4xx or a form error, never a 500, and changes nothing; secrets never reach a viewer, the audit
or the logs."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from clayops import alerts, provisioning
from clayops.alert_models import AlertSettings
from clayops.models import (
    AuditEntry,
    CircuitBreaker,
    CreditBudget,
    DeadLetter,
    ImportDuplicate,
    Lead,
    LeadImport,
    Webhook,
    Workspace,
)
from tests.factories import (
    make_dead_letter,
    make_lead,
    make_lead_import,
    make_user,
    make_workspace,
)

S = Lead.State
CLAY_URL = "http://127.0.0.1:9/v3/sources/webhook/t_wave5"  # the test settings allow loopback http
HX = {"HX-Request": "true"}


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


def form_data(**changes) -> dict:
    data = {
        "webhook_url": CLAY_URL,
        "token": "tok-wave5",
        "webhook_name": "people",
        "credits_per_row": "6",
        "row_cap": "",
        "workspace": "",
        "workspace_name": "wave5",
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
        Lead.objects.count(),
    )


def create(client, **changes):
    return client.post(reverse("dashboard:connect_create"), form_data(**changes))


# --- Connect: the form refuses bad input with a form error (400) and creates nothing -----------------

BAD_FIELDS = [
    # numbers
    ("rate_limit", "1e309"),
    ("rate_limit", "NaN"),
    ("rate_limit", "inf"),
    ("rate_limit", "-1"),
    ("rate_limit", "10001"),
    ("rate_limit", "abc"),
    ("rate_limit", "1e-300"),  # the token bucket's wait overflows: Redis refuses every acquire
    ("rate_limit", "5e-324"),
    ("rate_limit", "0.0000001"),
    ("burst", "0"),
    ("burst", "-1"),
    ("burst", str(10**30)),
    ("burst", "1.5"),
    ("burst", "1e3"),
    ("hourly_cap", "-1"),
    ("hourly_cap", str(10**30)),
    ("row_cap", "0"),
    ("row_cap", str(2**31)),
    ("row_cap", "NaN"),
    ("credits_per_row", "NaN"),
    ("credits_per_row", "sNaN"),
    ("credits_per_row", "Infinity"),
    ("credits_per_row", "-1"),
    ("credits_per_row", "1e309"),
    ("credits_per_row", str(10**30)),
    ("credits_per_row", "0.001"),
    ("daily_limit", "NaN"),
    ("daily_limit", "-0.01"),
    ("daily_limit", "1e20"),
    # choices
    ("workspace", "999999999999999999999999"),
    ("workspace", "-1"),
    ("workspace", "abc"),
    ("plan", "platinum"),
    ("plan", ""),
    # text
    ("webhook_name", "x" * 101),
    ("webhook_name", "bad\x00name"),
    ("workspace_name", "y" * 101),
    ("workspace_name", "ws\x00"),
    ("workspace_name", "   "),
    ("token", "t" * 201),
    ("token", "tok\r\nX-Injected: 1"),
    ("token", "tok\x00"),
    ("token", "tök€n"),  # a header value: ASCII only, or every send fails
    ("token", "tok\u2028en"),
    # time zones
    ("budget_timezone", "Mars/Olympus"),
    ("budget_timezone", "Europe"),  # a directory of the tz database
    ("budget_timezone", "America"),
    ("budget_timezone", "../etc/passwd"),
    ("budget_timezone", "/etc/passwd"),
    ("budget_timezone", "UTC\x00"),
    ("budget_timezone", "tzdata.zi"),
    ("budget_timezone", "z" * 65),
    # URLs
    ("webhook_url", ""),
    ("webhook_url", "   "),
    ("webhook_url", "javascript:alert(1)"),
    ("webhook_url", "JaVaScRiPt:alert(1)//http://127.0.0.1/"),
    ("webhook_url", "data:text/html,<script>alert(1)</script>"),
    ("webhook_url", "file:///etc/passwd"),
    ("webhook_url", "ftp://127.0.0.1/x"),
    ("webhook_url", "http://user:pass@127.0.0.1:9/v3/sources/webhook/t"),
    ("webhook_url", "http://:pass@127.0.0.1:9/x"),
    ("webhook_url", "http://127.0.0.1:99999/x"),
    ("webhook_url", "http://127.0.0.1:-1/x"),
    ("webhook_url", "http://[::1]:9/x"),
    ("webhook_url", "http://[::ffff:169.254.169.254]/x"),
    ("webhook_url", "http://[fe80::1%25eth0]/x"),
    ("webhook_url", "http://[::1/x"),
    ("webhook_url", "http://169.254.169.254/latest/meta-data/"),
    ("webhook_url", "http://0x7f.1/x"),
    ("webhook_url", "http://2130706433/x"),
    ("webhook_url", "http://xn--ls8h.example/x"),
    ("webhook_url", "http://xn--/x"),
    ("webhook_url", "http://ünïcode.example/x"),
    ("webhook_url", "http://" + "a" * 64 + ".example/x"),
    ("webhook_url", "http://127.0.0.1:9/" + "p" * 600),
    ("webhook_url", "http://127.0.0.1:9/a b"),
    ("webhook_url", "http://127.0.0.1:9/a\tb"),
    ("webhook_url", "http://127.0.0.1:9/a\x00b"),
    ("webhook_url", "http://127.0.0.1:9/a\u3000b"),
    ("webhook_url", "//127.0.0.1:9/x"),
    ("webhook_url", "http:///x"),
    ("webhook_url", "\"'<>"),
]


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS)
def test_bad_connect_input_is_a_form_error_and_creates_nothing(as_operator, field, value):
    before = counts()

    response = create(as_operator, **{field: value})

    assert response.status_code == 400, (field, value)
    assert response.context["form"].errors, (field, value)
    assert counts() == before


def test_the_slowest_and_the_unlimited_rate_are_accepted(as_operator):
    assert create(as_operator, rate_limit="0.001").status_code == 302
    assert (
        create(as_operator, rate_limit="0", workspace_name="w2", webhook_url=CLAY_URL + "2").status_code
        == 302
    )
    assert sorted(Workspace.objects.values_list("rate_limit", flat=True)) == [0.0, 0.001]


def test_a_pasted_url_in_quotes_and_brackets_is_accepted_once(as_operator):
    response = create(as_operator, webhook_url=f' "<{CLAY_URL}>" ')
    assert response.status_code == 302
    assert Webhook.objects.get().url == CLAY_URL

    # The same URL pasted again, with or without quotes, is refused: one Clay webhook, one clayops one.
    before = counts()
    again = create(as_operator, webhook_url=f"'{CLAY_URL}'", workspace_name="other")
    assert again.status_code == 400 and counts() == before


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("daily_limit", "999999999999.99"),
        ("credits_per_row", "999999999999.99"),
        ("burst", str(2**31 - 1)),
        ("hourly_cap", str(2**31 - 1)),
        ("row_cap", str(2**31 - 1)),
        ("rate_limit", "10000"),
        ("webhook_url", "http://127.0.0.1.:9/v3/sources/webhook/t_dot"),
        ("webhook_url", "http://LOCALHOST:9/v3/sources/webhook/t_upper"),
        ("webhook_name", "名前 " * 20),
        ("workspace_name", "‮evil"),
    ],
)
def test_edge_values_are_created_or_refused_never_a_500(as_operator, field, value):
    response = create(as_operator, **{field: value})
    assert response.status_code in (302, 400), (field, value)
    if response.status_code == 302:
        assert Webhook.objects.count() == 1
        assert as_operator.get(response["Location"]).status_code == 200


def test_a_refused_url_with_credentials_is_not_logged_nor_audited(as_operator, caplog):
    caplog.set_level(logging.DEBUG)
    url = "http://alice:hunter2-secret@127.0.0.1:9/v3/sources/webhook/t"

    response = create(as_operator, webhook_url=url, token="tok-super-secret")

    assert response.status_code == 400
    assert "hunter2-secret" not in caplog.text and "tok-super-secret" not in caplog.text
    assert not AuditEntry.objects.exists()


def test_names_with_markup_are_escaped(as_operator):
    evil = "<script>alert(1)</script>"
    assert create(as_operator, webhook_name=evil, workspace_name=evil).status_code == 302
    webhook = Webhook.objects.get()

    for url in (reverse("dashboard:connect"), reverse("dashboard:connect_webhook", args=[webhook.pk])):
        body = as_operator.get(url).content.decode()
        assert evil not in body and "&lt;script&gt;" in body


def test_a_webhook_name_taken_in_the_workspace_is_a_form_error(as_operator, webhook):
    before = counts()
    response = create(
        as_operator, workspace=str(webhook.workspace_id), workspace_name="", webhook_name="people"
    )
    assert response.status_code == 400 and counts() == before
    assert "webhook_name" in response.context["form"].errors or response.context["form"].non_field_errors()


def test_a_new_workspace_named_like_an_existing_one_is_a_form_error(as_operator, workspace):
    before = counts()
    response = create(as_operator, workspace_name=workspace.name)
    assert response.status_code == 400 and counts() == before


def test_a_100_character_workspace_name_whose_budget_name_is_taken(as_operator):
    name = "w" * 100
    CreditBudget.objects.create(name=name)
    response = create(as_operator, workspace_name=name)
    # Either created with a free budget name, or a form error: never a 500.
    assert response.status_code in (302, 400)


def test_a_workspace_deleted_between_form_and_submit_is_a_form_error(as_operator, monkeypatch):
    ws = make_workspace(name="gone")
    from dashboard import connect

    real = connect.ConnectForm.service_arguments

    def args_then_delete(self):
        arguments = real(self)
        Workspace.objects.filter(pk=ws.pk).delete()
        return arguments

    monkeypatch.setattr(connect.ConnectForm, "service_arguments", args_then_delete)
    response = create(as_operator, workspace=str(ws.pk), workspace_name="")
    assert response.status_code == 400 and not Webhook.objects.exists()


# --- Connect: who may do what ------------------------------------------------------------------------


def connect_urls(webhook_id: int) -> list[tuple[str, str]]:
    return [
        ("post", reverse("dashboard:connect_create")),
        ("post", reverse("dashboard:connect_rotate", args=[webhook_id])),
        ("post", reverse("dashboard:connect_test", args=[webhook_id])),
    ]


def test_viewers_and_outsiders_get_403_and_anonymous_the_login_on_every_connect_write(
    client, webhook, viewer, outsider
):
    secret = webhook.callback_secret
    before = counts()
    for user in (None, viewer, outsider):
        client.logout()
        if user is not None:
            client.force_login(user)
        for _, url in connect_urls(webhook.pk):
            response = client.post(url, form_data(), headers=HX)
            if user is None:
                assert response.status_code in (302, 401, 403) or "/login/" in response["HX-Redirect"], url
            else:
                assert response.status_code == 403, (user, url)
    webhook.refresh_from_db()
    assert webhook.callback_secret == secret and counts() == before


def test_get_on_post_only_connect_urls_is_405_and_changes_nothing(as_operator, webhook):
    secret = webhook.callback_secret
    before = counts()
    for _, url in connect_urls(webhook.pk):
        assert as_operator.get(url).status_code == 405, url
        assert as_operator.head(url).status_code == 405, url
    webhook.refresh_from_db()
    assert webhook.callback_secret == secret and counts() == before


def test_connect_writes_need_the_csrf_token(operator, webhook):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    secret = webhook.callback_secret
    before = counts()
    for _, url in connect_urls(webhook.pk):
        assert client.post(url, form_data()).status_code == 403, url
    webhook.refresh_from_db()
    assert webhook.callback_secret == secret and counts() == before


@pytest.mark.parametrize(
    "webhook_id", ["0", "999999", "999999999999999999", "1234567890123456789", "-1", "abc", "1e3"]
)
def test_unknown_webhook_ids_are_404_on_every_connect_url(as_operator, webhook_id, db):
    before = counts()
    for name in ("connect_webhook", "connect_status"):
        url = f"/connect/{webhook_id}/" + ("status" if name == "connect_status" else "")
        assert as_operator.get(url).status_code == 404, url
    for tail in ("rotate-secret", "test-row"):
        assert as_operator.post(f"/connect/{webhook_id}/{tail}").status_code == 404
        assert as_operator.post(f"/connect/{webhook_id}/{tail}", headers=HX).status_code == 404
    assert counts() == before


def test_rotate_and_test_row_on_an_inactive_webhook(as_operator, webhook):
    webhook.is_active = False
    webhook.save(update_fields=["is_active"])

    assert as_operator.post(reverse("dashboard:connect_rotate", args=[webhook.pk])).status_code == 302
    response = as_operator.post(reverse("dashboard:connect_test", args=[webhook.pk]), headers=HX)
    assert response.status_code in (200, 286)
    page = as_operator.get(reverse("dashboard:connect_status", args=[webhook.pk]), headers=HX)
    assert page.status_code in (200, 286)


def test_a_second_test_row_click_sends_no_second_row(as_operator, webhook):
    url = reverse("dashboard:connect_test", args=[webhook.pk])
    as_operator.post(url)
    as_operator.post(url, headers=HX)
    as_operator.post(url)
    assert Lead.objects.filter(webhook=webhook).count() == 1
    assert AuditEntry.objects.filter(action="test_row_sent").count() == 1


def test_send_test_row_locks_the_webhook_row_so_two_clicks_at_once_send_one_row(webhook, monkeypatch):
    """On PostgreSQL two requests at once would both find no row in flight: the webhook's row is
    locked (SELECT ... FOR UPDATE) for the check and the insert (SQLite serialises writers anyway)."""
    from django.db.models import QuerySet

    locked = []
    real = QuerySet.select_for_update

    def spy(self, *args, **kwargs):
        if self.model is Webhook:
            locked.append(True)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(QuerySet, "select_for_update", spy)
    provisioning.send_test_row(webhook.pk)
    assert locked


def test_the_secret_never_reaches_a_viewer_the_audit_or_the_logs(
    client, as_operator, operator, viewer, caplog
):
    caplog.set_level(logging.DEBUG)
    assert create(as_operator, token="tok-do-not-leak-42").status_code == 302
    webhook = Webhook.objects.get()
    page = as_operator.get(reverse("dashboard:connect_webhook", args=[webhook.pk]))
    assert webhook.callback_secret in page.content.decode()  # once, to the operator who created it
    assert page["Cache-Control"] == "no-store"
    again = as_operator.get(reverse("dashboard:connect_webhook", args=[webhook.pk]))
    assert webhook.callback_secret not in again.content.decode()

    as_operator.post(reverse("dashboard:connect_rotate", args=[webhook.pk]))
    webhook.refresh_from_db()
    # The operator rotated; a viewer's session has no reveal flag, so the viewer sees it masked.
    client.logout()
    client.force_login(viewer)
    for url in (
        reverse("dashboard:connect"),
        reverse("dashboard:connect_webhook", args=[webhook.pk]),
        reverse("dashboard:connect_status", args=[webhook.pk]),
        reverse("dashboard:audit"),
    ):
        body = client.get(url).content.decode()
        assert webhook.callback_secret not in body, url
        assert "tok-do-not-leak-42" not in body, url
        assert webhook.url not in body or url == reverse("dashboard:audit"), url
    audit = json.dumps(list(AuditEntry.objects.values("action", "target", "detail")))
    assert webhook.callback_secret not in audit and "tok-do-not-leak-42" not in audit
    assert webhook.callback_secret not in caplog.text and "tok-do-not-leak-42" not in caplog.text


def test_a_reveal_flag_in_a_viewer_session_shows_nothing(client, viewer, webhook):
    from dashboard.connect import REVEAL_KEY

    client.force_login(viewer)
    session = client.session
    session[REVEAL_KEY] = [webhook.pk]
    session.save()
    body = client.get(reverse("dashboard:connect_webhook", args=[webhook.pk])).content.decode()
    assert webhook.callback_secret not in body


def test_a_garbage_reveal_list_in_the_session_is_no_500(client, operator, webhook):
    from dashboard.connect import REVEAL_KEY

    client.force_login(operator)
    session = client.session
    session[REVEAL_KEY] = ["x", None, {"a": 1}, 10**30]
    session.save()
    assert client.get(reverse("dashboard:connect_webhook", args=[webhook.pk])).status_code == 200


@pytest.mark.parametrize("plan", ["", "nope", "\x00", "x" * 5000, "pro\n", "__class__"])
def test_the_connect_page_ignores_an_unknown_plan(as_viewer, plan, db):
    response = as_viewer.get(reverse("dashboard:connect"), {"plan": plan})
    assert response.status_code == 200


def test_a_test_row_whose_enriched_data_is_odd_renders(as_operator, webhook):
    lead = make_lead(
        webhook=webhook,
        state=S.ENRICHED,
        fingerprint=f"{provisioning.TEST_ROW_PREFIX}{webhook.pk}:x",
        enriched={"<b>": "</pre><script>x</script>", "n": None, "nested": {"a": [1, 2]}},
        enriched_at=timezone.now(),
        last_error="<img src=x onerror=alert(1)>",
    )
    response = as_operator.get(reverse("dashboard:connect_status", args=[webhook.pk]), headers=HX)
    assert response.status_code == 286
    body = response.content.decode()
    assert "<script>x</script>" not in body and "<img src=x" not in body
    assert lead.pk


# --- Timeline ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["", "month", "HOUR", "hour ", "\x00", "x" * 10000, "hour&range=day", "__init__", "buckets"]
)
def test_an_unknown_timeline_range_is_400(as_viewer, value, db):
    for name in ("timeline", "timeline_data"):
        response = as_viewer.get(reverse(f"dashboard:{name}"), {"range": value})
        if value == "":
            assert response.status_code in (200, 400), (name, value)
        else:
            assert response.status_code == 400, (name, value)


def test_repeated_range_parameters_and_htmx_are_no_500(as_viewer, db):
    response = as_viewer.get(reverse("dashboard:timeline") + "?range=day&range=bogus", headers=HX)
    assert response.status_code in (200, 400)
    assert as_viewer.get(reverse("dashboard:timeline_data") + "?range=week&range=week").status_code == 200


def test_timeline_access(client, outsider, db):
    for name in ("timeline", "timeline_data"):
        url = reverse(f"dashboard:{name}")
        assert client.get(url).status_code in (302, 401, 403)
        assert client.post(url).status_code in (302, 401, 403, 405)
    client.force_login(outsider)
    for name in ("timeline", "timeline_data"):
        assert client.get(reverse(f"dashboard:{name}")).status_code == 403


def test_the_timeline_survives_odd_rows(as_viewer, operator, webhook):
    """Rows at the edges of the range, an audit entry with a huge or odd detail, a far-future pause."""
    from clayops.models import Attempt, CircuitEvent

    now = timezone.now()
    lead = make_lead(0, webhook=webhook, state=S.DEAD)
    for at in (now - timedelta(days=8), now - timedelta(days=7), now, now + timedelta(hours=3)):
        Attempt.objects.create(
            lead=lead,
            webhook=webhook,
            outcome=Attempt.Outcome.RATE_LIMITED,
            error_class="rate_limited",
            started_at=at,
            finished_at=at,
        )
        CircuitEvent.objects.create(
            breaker=webhook.breaker, from_state="closed", to_state="open", reason="<b>x</b>", at=at
        )
    # Control characters (NUL never reaches the database: PostgreSQL cannot store it, inputs strip it).
    AuditEntry.objects.create(
        user=operator, action="<script>", target="x" * 100, detail={"a": "\x01\x1b" * 10}
    )
    webhook.paused_until = now.replace(year=9999)
    webhook.save(update_fields=["paused_until"])
    make_dead_letter(webhook=webhook)
    for rng in ("hour", "day", "week"):
        page = as_viewer.get(reverse("dashboard:timeline"), {"range": rng})
        assert page.status_code == 200 and "<script>" not in page.content.decode().split("<main", 1)[-1]
        assert as_viewer.get(reverse("dashboard:timeline_data"), {"range": rng}).status_code == 200


# --- Import report and actions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "after", ["", "-1", "abc", "1e9", str(2**31), str(10**30), "NaN", "\x00", "1.5", "0x10", " 3 ", "٣"]
)
def test_odd_duplicate_cursors_are_no_500(as_viewer, after, db):
    imp = make_lead_import()
    for line in range(1, 4):
        ImportDuplicate.objects.create(lead_import=imp, line=line, email=f"d{line}@x.com", domain="x.com")
    assert (
        as_viewer.get(reverse("dashboard:import_report", args=[imp.pk]), {"after": after}).status_code == 200
    )
    assert (
        as_viewer.get(reverse("dashboard:import_detail", args=[imp.pk]), {"dup_after": after}).status_code
        == 200
    )


@pytest.mark.parametrize("import_id", ["0", "999999999", "999999999999999999", "1234567890123456789", "-1"])
def test_unknown_import_ids_are_404_everywhere(as_operator, import_id, db):
    before = (LeadImport.objects.count(), AuditEntry.objects.count())
    for tail in ("report", "duplicates.csv", ""):
        assert as_operator.get(f"/imports/{import_id}/{tail}").status_code == 404
    for tail in ("cancel", "dlq/retry", "dlq/discard"):
        assert as_operator.post(f"/imports/{import_id}/{tail}").status_code == 404
        assert as_operator.post(f"/imports/{import_id}/{tail}", headers=HX).status_code == 404
    assert (LeadImport.objects.count(), AuditEntry.objects.count()) == before


@pytest.mark.parametrize("state", [s for s, _ in LeadImport.State.choices])
@pytest.mark.parametrize("htmx", [False, True])
def test_cancel_in_every_state(as_operator, webhook, state, htmx):
    imp = make_lead_import(state=state, webhook=webhook)
    lead = make_lead(0, webhook=webhook, lead_import=imp, state=S.QUEUED)

    response = as_operator.post(reverse("dashboard:import_cancel", args=[imp.pk]), headers=HX if htmx else {})

    imp.refresh_from_db()
    lead.refresh_from_db()
    if state in (LeadImport.State.PENDING, LeadImport.State.RUNNING):
        assert response.status_code == (200 if htmx else 302)
        assert imp.state == LeadImport.State.CANCELLED and lead.state == S.DISCARDED
    else:
        assert response.status_code == 409
        assert imp.state == state and lead.state == S.QUEUED
        assert not AuditEntry.objects.filter(action="import_cancel").exists()
        if not htmx:
            assert "only a pending or running import" in response.content.decode() or (
                "cancelled already" in response.content.decode()
            )
    # The import's page still renders afterwards.
    assert as_operator.get(reverse("dashboard:import_detail", args=[imp.pk])).status_code == 200


def test_cancel_twice_acts_once(as_operator, webhook):
    imp = make_lead_import(state=LeadImport.State.RUNNING, webhook=webhook)
    url = reverse("dashboard:import_cancel", args=[imp.pk])
    assert as_operator.post(url).status_code == 302
    assert as_operator.post(url).status_code == 409
    assert AuditEntry.objects.filter(action="import_cancel").count() == 1


@pytest.mark.parametrize("action", ["import_dlq_retry", "import_dlq_discard"])
def test_group_actions_on_an_import_without_entries_or_already_discarded(as_operator, webhook, action):
    empty = make_lead_import(webhook=webhook)
    response = as_operator.post(reverse(f"dashboard:{action}", args=[empty.pk]), follow=True)
    assert response.status_code == 200 and "nothing to do" in response.content.decode()
    assert not AuditEntry.objects.filter(action=action.removeprefix("")).exists()

    imp = make_lead_import(webhook=webhook)
    lead = make_lead(0, webhook=webhook, lead_import=imp, state=S.DEAD)
    entry = make_dead_letter(webhook=webhook, lead=lead)
    assert as_operator.post(reverse("dashboard:import_dlq_discard", args=[imp.pk])).status_code == 302
    entry.refresh_from_db()
    discarded_state = entry.state
    before = AuditEntry.objects.count()
    response = as_operator.post(reverse(f"dashboard:{action}", args=[imp.pk]), headers=HX)
    assert response.status_code == 200 and response["HX-Redirect"]
    entry.refresh_from_db()
    assert entry.state == discarded_state and AuditEntry.objects.count() == before


def test_import_actions_refuse_viewers_get_and_csrf(client, viewer, operator, webhook):
    from django.test import Client

    imp = make_lead_import(state=LeadImport.State.RUNNING, webhook=webhook)
    lead = make_lead(0, webhook=webhook, lead_import=imp, state=S.DEAD)
    make_dead_letter(webhook=webhook, lead=lead)
    urls = [
        reverse(f"dashboard:{n}", args=[imp.pk])
        for n in ("import_cancel", "import_dlq_retry", "import_dlq_discard")
    ]
    client.force_login(viewer)
    for url in urls:
        assert client.post(url, headers=HX).status_code == 403
    client.force_login(operator)
    for url in urls:
        assert client.get(url).status_code == 405
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(operator)
    for url in urls:
        assert strict.post(url).status_code == 403
    imp.refresh_from_db()
    assert imp.state == LeadImport.State.RUNNING
    assert DeadLetter.objects.get().state in ("pending",)
    assert not AuditEntry.objects.exclude(action__startswith="login").exists()


def test_duplicates_csv_neutralises_and_survives_odd_cells(as_viewer, webhook):
    imp = make_lead_import(filename='=cmd|"/c calc"!A1.csv', webhook=webhook)
    original = make_lead(0, webhook=webhook, lead_import=imp, email="=1+1@x.com")
    ImportDuplicate.objects.create(
        lead_import=imp, line=2, email="@SUM(A1)", domain="-x.com", original=original
    )
    ImportDuplicate.objects.create(lead_import=imp, line=3, email="", domain="", original=None)
    response = as_viewer.get(reverse("dashboard:import_duplicates_csv", args=[imp.pk]))
    assert response.status_code == 200
    body = b"".join(response.streaming_content).decode()
    assert "'@SUM(A1)" in body and "'-x.com" in body and "'=cmd" in body


# --- Deferral reasons -------------------------------------------------------------------------------


def test_deferral_reasons_survive_odd_leads_and_budgets(as_viewer, webhook):
    from clayops import deferral

    now = timezone.now()
    odd = [
        make_lead(1, webhook=webhook, state=S.DEFERRED, defer_reason="<script>x</script>"),
        make_lead(2, webhook=webhook, state=S.DEFERRED, defer_reason="\x01\x1b\u2028" * 50),
        make_lead(3, webhook=webhook, state=S.DEFERRED, defer_reason="x" * 200),  # the column's length
        make_lead(4, webhook=None, state=S.DEFERRED, defer_reason="budget"),
        make_lead(
            5,
            webhook=webhook,
            state=S.RETRY_WAIT,
            error_class="rate_limited",
            next_attempt_at=now.replace(year=9999),
        ),
        make_lead(6, webhook=webhook, state=S.RETRY_WAIT, next_attempt_at=now.replace(year=1)),
    ]
    webhook.paused_until = now.replace(year=9999)
    webhook.save(update_fields=["paused_until"])
    explained = deferral.explain_many(odd)
    for lead in odd:
        reason = explained.get(lead.pk)
        if reason is not None:
            assert str(reason)
    deferral.banners([webhook.pk, 999999999], use_cache=False)
    for url in (
        reverse("dashboard:overview"),
        reverse("dashboard:leads"),
        reverse("dashboard:leads") + "?state=deferred",
    ):
        response = as_viewer.get(url)
        assert response.status_code == 200, url
        assert "<script>x</script>" not in response.content.decode()
    for lead in odd:
        assert as_viewer.get(reverse("dashboard:lead_detail", args=[lead.pk])).status_code == 200


# --- Alert settings in the admin --------------------------------------------------------------------


@pytest.fixture
def as_admin(client, db):
    admin = make_user("root", is_staff=True, is_superuser=True)
    client.force_login(admin)
    return client


def settings_form(**changes) -> dict:
    data = {
        "budget_thresholds": "80,90,100",
        "reminder_minutes": "60",
        "breaker_open_minutes": "15",
        "dlq_per_hour": "10",
        "no_tick_minutes": "5",
        "no_worker_minutes": "5",
        "reopen_minutes": "30",
    }
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("budget_thresholds", "0"),
        ("budget_thresholds", ""),
        ("budget_thresholds", ","),
        ("budget_thresholds", " , , "),
        ("budget_thresholds", "99999999999999999999"),
        ("budget_thresholds", "80;90"),
        ("budget_thresholds", "1e2"),
        ("budget_thresholds", "-5"),
        ("budget_thresholds", "1001"),
        ("budget_thresholds", "80,abc"),
        ("budget_thresholds", "8" * 101),
        ("budget_thresholds", "80\x00"),
        ("reminder_minutes", "-1"),
        ("reminder_minutes", "99999999999999999999"),
        ("reminder_minutes", "9223372036854775807"),
        ("reminder_minutes", "2147483647"),
        ("reopen_minutes", "2147483647"),
        ("breaker_open_minutes", "0"),
        ("breaker_open_minutes", "2147483647"),
        ("dlq_per_hour", "9223372036854775808"),
        ("no_tick_minutes", "0"),
        ("no_tick_minutes", "9223372036854775807"),
        ("no_worker_minutes", "1e3"),
        ("no_worker_minutes", "NaN"),
    ],
)
def test_bad_alert_settings_are_form_errors_and_save_nothing(as_admin, field, value):
    response = as_admin.post(reverse("admin:clayops_alertsettings_add"), settings_form(**{field: value}))
    assert response.status_code == 200, (field, value)
    assert response.context["adminform"].form.errors, (field, value)
    assert not AlertSettings.objects.exists()


def test_odd_but_valid_thresholds_are_read_like_they_are_checked(as_admin):
    response = as_admin.post(
        reverse("admin:clayops_alertsettings_add"), settings_form(budget_thresholds="80,,90, 100 ,90")
    )
    assert response.status_code == 302
    assert AlertSettings.current().thresholds() == [80, 90, 100]
    assert alerts.budget_thresholds() == [80, 90, 100]


def test_the_largest_accepted_settings_keep_the_alert_checks_running(as_admin, webhook):
    """Whatever the admin accepts, the alert rules compute with (`now - timedelta(minutes=...)`)."""
    biggest = str(AlertSettings.MAX_MINUTES)
    form = settings_form(**dict.fromkeys(AlertSettings.MINUTE_FIELDS, biggest))
    assert as_admin.post(reverse("admin:clayops_alertsettings_add"), form).status_code == 302
    CircuitBreaker.objects.filter(webhook=webhook).update(state=CircuitBreaker.State.OPEN)

    alerts.evaluate()
    alerts.raise_alert("breaker_open", f"webhook:{webhook.pk}", "x", "y")
    alerts.remind("breaker_open", f"webhook:{webhook.pk}")


def test_the_alert_settings_admin_pages_render(as_admin):
    assert as_admin.get(reverse("admin:clayops_alertsettings_add")).status_code == 200
    assert as_admin.post(reverse("admin:clayops_alertsettings_add"), settings_form()).status_code == 302
    assert as_admin.get(reverse("admin:clayops_alertsettings_changelist")).status_code == 200
    assert as_admin.get(reverse("admin:clayops_alertsettings_change", args=[1])).status_code == 200
    too_long = settings_form(reopen_minutes=str(10**8))
    response = as_admin.post(reverse("admin:clayops_alertsettings_change", args=[1]), too_long)
    assert response.status_code == 200 and "reopen_minutes" in response.context["adminform"].form.errors
    assert AlertSettings.current().reopen_minutes == 30


def test_alert_settings_cannot_be_added_twice_or_deleted(as_admin):
    assert as_admin.post(reverse("admin:clayops_alertsettings_add"), settings_form()).status_code == 302
    assert (
        as_admin.post(
            reverse("admin:clayops_alertsettings_add"), settings_form(reminder_minutes="1")
        ).status_code
        == 403
    )
    assert AlertSettings.objects.count() == 1
    assert (
        as_admin.post(reverse("admin:clayops_alertsettings_delete", args=[1]), {"post": "yes"}).status_code
        == 403
    )
    assert AlertSettings.objects.count() == 1


def test_a_viewer_cannot_reach_the_alert_settings_admin(client, viewer, db):
    client.force_login(viewer)
    response = client.post(reverse("admin:clayops_alertsettings_add"), settings_form())
    assert response.status_code in (302, 403)
    assert not AlertSettings.objects.exists()


# --- Fixed after the review (models and settings) --------------------------------------------------


@pytest.mark.parametrize("zone", ["Europe", "America", "../etc"])
def test_a_time_zone_folder_is_a_validation_error_in_the_model_and_the_admin(db, zone):
    from django.core.exceptions import ValidationError as DjangoValidationError

    from clayops.models import validate_timezone

    with pytest.raises(DjangoValidationError):
        validate_timezone(zone)


@pytest.mark.parametrize("rate, ok", [(0, True), (0.001, True), (10, True), (1e-300, False), (0.0005, False)])
def test_the_workspace_model_refuses_a_rate_too_small_to_pace(db, rate, ok):
    from django.core.exceptions import ValidationError as DjangoValidationError

    from tests.factories import make_workspace

    workspace = make_workspace(name=f"w{rate}")
    workspace.rate_limit = rate
    if ok:
        workspace.full_clean()
    else:
        with pytest.raises(DjangoValidationError, match="at least 0.001"):
            workspace.full_clean()


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("CLAYOPS_ALERT_BUDGET_THRESHOLDS", "abc", "comma-separated percentages"),
        ("CLAYOPS_ALERT_BUDGET_THRESHOLDS", "80,5000", "comma-separated percentages"),
        ("CLAYOPS_ALERT_REOPEN_MINUTES", "99999999999", "ten years"),
    ],
)
def test_bad_alert_settings_in_the_environment_stop_the_start(tmp_path, name, value, message):
    import os
    import subprocess
    import sys

    env = {**os.environ, "CLAYOPS_VAR_DIR": str(tmp_path), name: value}
    result = subprocess.run(
        [sys.executable, "-c", "import clayops.settings"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and message in result.stderr


def test_a_huge_username_at_login_is_a_failed_login_not_a_500(client, db):
    """django-axes records every failed login with its username; a 10,000-character one used to make
    its INSERT fail on PostgreSQL (varchar 255) and the login page answer 500."""
    from axes.models import AccessAttempt

    page = client.get("/login/")
    answer = client.post(
        "/login/",
        {"username": "u" * 10_000, "password": "x", "csrfmiddlewaretoken": page.cookies["csrftoken"].value},
    )
    assert answer.status_code == 200 and b"Please enter a correct" in answer.content
    assert AccessAttempt.objects.get().username == "u" * 150
