"""Inputs from the network cannot corrupt the books: each case an attacker or a careless client
tried on the callback and the lead-data endpoint answers 4xx with a reason and changes nothing."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.urls import reverse

from clayops import budget
from clayops.contract import CALLBACK_HEADER
from clayops.models import AuditEntry, CreditReservation, EnrichmentCache, Lead
from tests.factories import make_lead, make_user, make_webhook

S = Lead.State


def post(client, webhook, raw):
    return client.post(
        reverse("clay-callback", args=[webhook.pk]),
        data=raw if isinstance(raw, str | bytes) else json.dumps(raw),
        content_type="application/json",
        headers={CALLBACK_HEADER: webhook.callback_secret},
    )


@pytest.fixture
def sent(webhook):
    """A lead Clay accepted, with its send booked at the estimate."""
    lead = make_lead(0, webhook=webhook, state=S.ACCEPTED)
    holds = budget.reserve_many(budget=webhook.workspace.budget, amount=Decimal("6"), lead_ids=[lead.pk])
    budget.settle_many(holds.values())
    return lead


def books(webhook):
    usage = budget.usage_for(webhook.workspace.budget)
    return usage.spent, usage.reserved


@pytest.mark.parametrize("credits", ["1e20", 1e20, -1, "NaN", "Infinity", "abc", True, [1], 1001])
def test_it_refuses_credits_that_are_not_a_sane_number_and_keeps_the_books(client, webhook, sent, credits):
    before = books(webhook)

    response = post(client, webhook, {"clayops_lead_id": sent.pk, "credits_used": credits})

    assert response.status_code == 400 and "credits_used" in response.json()["error"]
    sent.refresh_from_db()
    assert sent.state == S.ACCEPTED and sent.enriched is None
    assert books(webhook) == before
    assert client.get(reverse("dashboard:overview")).status_code in (200, 302)  # no 500 afterwards


def test_it_accepts_credits_up_to_the_configured_maximum(client, webhook, sent, settings):
    settings.CLAYOPS_MAX_CREDITS_PER_ROW = 50
    assert post(client, webhook, {"clayops_lead_id": sent.pk, "credits_used": 51}).status_code == 400
    assert post(client, webhook, {"clayops_lead_id": sent.pk, "credits_used": "49.5"}).status_code == 200
    assert books(webhook) == (Decimal("49.5"), Decimal("0"))


def test_it_refuses_a_lead_of_another_webhook_and_leaves_the_cache_alone(client, webhook, workspace):
    other_hook = make_webhook(workspace=workspace, name="other")
    theirs = make_lead(1, webhook=other_hook, state=S.ACCEPTED, domain="acme.com")
    EnrichmentCache.objects.create(
        domain="acme.com", data={"company": "Real"}, expires_at="2099-01-01T00:00Z"
    )

    response = post(client, webhook, {"clayops_lead_id": theirs.pk, "company": "Forged"})

    assert response.status_code == 403 and "not sent to this webhook" in response.json()["error"]
    theirs.refresh_from_db()
    assert theirs.state == S.ACCEPTED and theirs.enriched is None
    assert EnrichmentCache.objects.get(domain="acme.com").data == {"company": "Real"}
    refused = AuditEntry.objects.get(action="callback_refused")
    assert refused.detail["status"] == 403 and refused.target == f"webhook:{webhook.pk}"


@pytest.mark.parametrize("state", [S.QUEUED, S.DEFERRED, S.RECEIVED])
def test_it_refuses_a_lead_that_was_never_sent(client, webhook, state):
    lead = make_lead(2, webhook=webhook, state=state)

    response = post(client, webhook, {"clayops_lead_id": lead.pk, "company": "Forged"})

    assert response.status_code == 409
    lead.refresh_from_db()
    assert lead.state == state and lead.enriched is None


def test_it_takes_a_callback_for_a_queued_lead_that_was_sent_before(client, webhook):
    """An uncertain send being resent: the first send's callback still completes the lead."""
    lead = make_lead(3, webhook=webhook, state=S.QUEUED)
    budget.reserve_many(budget=webhook.workspace.budget, amount=Decimal("6"), lead_ids=[lead.pk])

    assert post(client, webhook, {"clayops_lead_id": lead.pk, "company": "Acme"}).status_code == 200
    lead.refresh_from_db()
    assert lead.state == S.ENRICHED


@pytest.mark.parametrize(
    "raw",
    [
        '{"clayops_lead_id": Infinity}',
        '{"clayops_lead_id": NaN}',
        '{"clayops_lead_id": 1e400}',
        '{"clayops_lead_id": 123456789012345678901234567890}',
        '{"clayops_lead_id": "²"}',
        '{"clayops_lead_id": 1.5}',
        '{"clayops_lead_id": -3}',
        '{"clayops_lead_id": true}',
        "[" * 5000 + "]" * 5000,
        '{"clayops_lead_id": 1, "x": ' + "[" * 30 + "]" * 30 + "}",
        "[" + ",".join(['{"clayops_lead_id": 1}'] * 101) + "]",
        b"\xff\xfe",
    ],
)
def test_it_answers_400_to_malformed_bodies(client, webhook, sent, raw):
    response = post(client, webhook, raw)
    assert response.status_code == 400, response.content
    assert response.json()["ok"] is False
    sent.refresh_from_db()
    assert sent.state == S.ACCEPTED


def test_it_answers_404_not_500_for_ids_past_what_the_database_holds(client, operator):
    client.force_login(operator)
    huge = 10**20
    for url in (f"/leads/{huge}/", f"/imports/{huge}/", f"/dlq/{huge}/", f"/api/leads/{huge}/data"):
        assert client.get(url).status_code == 404, url
    assert (
        client.post(f"/api/clay/callback/{huge}/", data="{}", content_type="application/json").status_code
        == 404
    )
    # Numbers in query strings: ignored when out of range, never a 500.
    for query in (
        f"lead_import={huge}",
        f"webhook={huge}",
        f"cursor={huge}",
        "cursor=²",
        "size=²",
        f"size={huge}",
    ):
        assert client.get(f"/leads/?{query}").status_code < 500, query
        assert client.get(f"/dlq/?{query}").status_code < 500, query
        assert client.get(f"/audit/?{query}").status_code < 500, query


def test_it_shows_lead_data_only_to_viewers_and_operators_and_a_get_changes_nothing(client, webhook, viewer):
    lead = make_lead(4, webhook=webhook, state=S.DEFERRED, domain="acme.com")
    url = reverse("lead-data", args=[lead.pk])
    client.force_login(make_user("nobody"))
    assert client.get(url).status_code == 403

    client.force_login(viewer)
    body = client.get(url).json()
    assert body["source"] == "fallback"
    lead.refresh_from_db()
    assert lead.state == S.DEFERRED and lead.served is None  # a GET only reads
    assert client.post(url).status_code == 403  # serving (a write) is for operators


def test_it_records_a_served_answer_when_an_operator_posts(client, webhook, operator):
    lead = make_lead(5, webhook=webhook, state=S.DEFERRED, domain="acme.com")
    client.force_login(operator)

    body = client.post(reverse("lead-data", args=[lead.pk])).json()

    lead.refresh_from_db()
    assert body["source"] == "fallback" and lead.state == S.SERVED_FALLBACK
    assert not CreditReservation.objects.exists()


def test_it_never_renders_a_webhook_secret_back_into_the_admin_and_blank_keeps_it(client, webhook, operator):
    operator.is_staff = operator.is_superuser = True
    operator.save()
    client.force_login(operator)
    url = reverse("admin:clayops_webhook_change", args=[webhook.pk])
    page = client.get(url).content.decode()
    assert webhook.callback_secret not in page and webhook.token not in page

    form = {
        "workspace": webhook.workspace_id,
        "name": webhook.name,
        "url": webhook.url,
        "token": "",
        "callback_secret": "",
        "credits_per_row": "7",
        "actions_per_row": 1,
        "reenrich_served": "on",
        "row_cap": webhook.row_cap,
        "priority": webhook.priority,
        "batch_size": webhook.batch_size,
        "callback_deadline_seconds": 900,
        "is_active": "on",
        "broken_reason": "",
    }
    response = client.post(url, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    before = (webhook.token, webhook.callback_secret)
    webhook.refresh_from_db()
    assert (webhook.token, webhook.callback_secret) == before and webhook.credits_per_row == 7
    audit = AuditEntry.objects.get(action="admin_change")
    assert set(audit.detail) == {"credits_per_row"}


@pytest.mark.slow  # runs manage.py migrate in a process of its own
def test_it_keeps_the_files_it_creates_under_var_private(tmp_path):
    """A fresh var/ directory: the secret key, the SQLite database and the directory itself."""
    import os
    import subprocess
    import sys

    from django.conf import settings as django_settings

    var = tmp_path / "var"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "SECRET_KEY", "DJANGO_SETTINGS_MODULE")
    }
    env.update(CLAYOPS_VAR_DIR=str(var), CLAYOPS_NO_VENV="1")
    manage = str(django_settings.BASE_DIR / "manage.py")
    subprocess.run([sys.executable, manage, "migrate", "-v", "0"], env=env, check=True, timeout=120)

    assert oct(var.stat().st_mode & 0o777) == "0o700"
    for name in ("secret_key", "clayops.sqlite3"):
        assert oct((var / name).stat().st_mode & 0o777) == "0o600", name


def test_it_locks_a_login_out_after_repeated_wrong_passwords_and_audits_it(client, operator, settings):
    from django.core.management import call_command

    settings.AXES_FAILURE_LIMIT = 5
    for _ in range(5):
        wrong = client.post(reverse("login"), {"username": operator.username, "password": "nope"})
        assert wrong.status_code in (200, 429)
    right = client.post(reverse("login"), {"username": operator.username, "password": "pw-operator-1"})
    assert right.status_code == 429  # the right password does not lift a lockout
    assert "_auth_user_id" not in client.session
    assert AuditEntry.objects.filter(action="login_locked_out", target=f"user:{operator.username}").exists()

    call_command("axes_reset", verbosity=0)  # the documented way to unlock
    again = client.post(reverse("login"), {"username": operator.username, "password": "pw-operator-1"})
    assert again.status_code == 302 and "_auth_user_id" in client.session


def test_it_locks_the_admin_login_too(client, operator, settings):
    settings.AXES_FAILURE_LIMIT = 3
    url = reverse("admin:login")
    for _ in range(3):
        client.post(url, {"username": operator.username, "password": "nope"})
    answer = client.post(url, {"username": operator.username, "password": "pw-operator-1"})
    assert answer.status_code == 429


def nested(levels: int):
    """A value whose containers nest `levels` deep (the row itself is level 1)."""
    value: object = []
    for _ in range(levels - 2):
        value = [value]
    return value


def test_it_takes_a_row_nested_up_to_twenty_levels_and_refuses_one_deeper(client, webhook, sent):
    ok = post(client, webhook, {"clayops_lead_id": sent.pk, "extra": nested(20)})
    assert ok.status_code == 200, ok.content
    other = make_lead(6, webhook=webhook, state=S.ACCEPTED)
    deep = post(client, webhook, {"clayops_lead_id": other.pk, "extra": nested(21)})
    assert deep.status_code == 400 and "nested deeper than 20" in deep.json()["error"]
    other.refresh_from_db()
    assert other.enriched is None


def test_it_takes_up_to_a_hundred_rows_in_one_callback(client, webhook, sent):
    answer = post(client, webhook, [{"clayops_lead_id": sent.pk}] * 100)
    assert answer.status_code == 200 and answer.json()["results"] == ["enriched"] + ["duplicate"] * 99
    too_many = post(client, webhook, [{"clayops_lead_id": sent.pk}] * 101)
    assert too_many.status_code == 400 and too_many.json()["error"] == "at most 100 rows per callback"


@pytest.mark.parametrize(
    ("given", "status"),
    [("digits", 200), ("0", 400), ("9" * 19, 400), ("-1", 400), (" 1", 400), (0, 400), (2**63, 400)],
)
def test_it_reads_the_lead_id_as_a_positive_64_bit_integer(client, webhook, sent, given, status):
    value = str(sent.pk) if given == "digits" else given
    answer = post(client, webhook, {"clayops_lead_id": value})
    assert answer.status_code == status, answer.content
    if status == 400:
        assert answer.json() == {"ok": False, "error": "each row needs a positive integer clayops_lead_id"}


@pytest.mark.parametrize("credits", [0, "0", 1000, "1000.00", None])
def test_it_takes_credits_from_zero_to_the_maximum(client, webhook, sent, credits):
    assert post(client, webhook, {"clayops_lead_id": sent.pk, "credits_used": credits}).status_code == 200
    sent.refresh_from_db()
    expected = None if credits is None else Decimal(str(credits))
    assert sent.state == S.ENRICHED and sent.credits_actual == expected


@pytest.mark.parametrize(
    "state", [S.SUBMITTING, S.UNCERTAIN, S.OVERDUE, S.DELIVERED, S.RETRY_WAIT, S.DEAD, S.ACCEPTED]
)
def test_it_takes_a_callback_for_a_lead_in_any_state_it_reaches_after_a_send(client, webhook, state):
    lead = make_lead(7, webhook=webhook, state=state)
    answer = post(client, webhook, {"clayops_lead_id": lead.pk, "company": "Acme"})
    assert answer.status_code == 200 and answer.json()["result"] == "enriched"
    lead.refresh_from_db()
    assert lead.state == S.ENRICHED and lead.enriched == {"company": "Acme"}


def test_it_writes_what_it_refused_to_the_audit_log(client, webhook):
    lead = make_lead(8, webhook=webhook, state=S.QUEUED)
    post(client, webhook, {"clayops_lead_id": lead.pk})
    entry = AuditEntry.objects.get(action="callback_refused")
    assert entry.target == f"webhook:{webhook.pk}"
    assert entry.detail == {
        "status": 409,
        "reason": f"lead {lead.pk} was never sent to Clay",
        "lead": str(lead.pk),
    }
    assert AuditEntry.objects.filter(action="callback_refused").count() == 1
