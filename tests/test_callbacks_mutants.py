"""Clay's callback, pinned where mutation testing (bench/mutation.sh) found it unasserted: the exact
answer of every refusal, batch callbacks, the size limit at its boundary, what an enrichment clears on
the lead, credits of zero, and the domain cache's times."""

from __future__ import annotations

import contextlib
import json
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.db import IntegrityError
from django.urls import reverse

from clayops import budget, callbacks
from clayops.contract import CALLBACK_HEADER
from clayops.models import CreditReservation, EnrichmentCache, Lead
from tests.factories import make_lead

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def lead(webhook):
    return make_lead(webhook=webhook, state=Lead.State.ACCEPTED, email="ann@acme.com", domain="acme.com")


def post(client, webhook, body=None, *, raw=None, headers=None):
    return client.post(
        reverse("clay-callback", args=[webhook.pk]),
        data=raw if raw is not None else json.dumps(body),
        content_type="application/json",
        headers={CALLBACK_HEADER: webhook.callback_secret} if headers is None else headers,
        REMOTE_ADDR="10.1.2.3",
    )


def test_it_answers_an_unknown_webhook_with_its_id(client, webhook):
    response = client.post(
        reverse("clay-callback", args=[987654]), data="{}", content_type="application/json"
    )
    assert (response.status_code, response.json()) == (404, {"ok": False, "error": "unknown webhook 987654"})


def test_it_refuses_a_missing_secret_and_logs_who_sent_it(client, webhook, lead, caplog):
    with caplog.at_level(logging.WARNING, logger="clayops.callbacks"):
        response = post(client, webhook, {"clayops_lead_id": lead.pk}, headers={})
    assert (response.status_code, response.json()) == (
        401,
        {"ok": False, "error": f"missing or wrong {CALLBACK_HEADER} header"},
    )
    assert [r.getMessage() for r in caplog.records if r.name == "clayops.callbacks"] == [
        f"callback for webhook {webhook.pk} rejected: bad or missing {CALLBACK_HEADER} header from 10.1.2.3"
    ]


def test_it_accepts_a_body_of_exactly_the_limit_and_refuses_one_byte_more(client, webhook, lead):
    body = {"clayops_lead_id": lead.pk, "note": ""}
    body["note"] = "x" * (callbacks.MAX_CALLBACK_BYTES - len(json.dumps(body)))
    raw = json.dumps(body)
    assert len(raw) == callbacks.MAX_CALLBACK_BYTES
    assert post(client, webhook, raw=raw).status_code == 200
    response = post(client, webhook, raw=raw + " ")
    assert (response.status_code, response.json()) == (413, {"ok": False, "error": "callback body too large"})


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("{not json", "body is not valid JSON"),
        ("[]", "body must be a JSON object (or an array of objects)"),
        ('[{"clayops_lead_id": 1}, 2]', "body must be a JSON object (or an array of objects)"),
    ],
)
def test_it_refuses_a_malformed_body_with_the_reason(client, webhook, raw, error):
    response = post(client, webhook, raw=raw)
    assert (response.status_code, response.json()) == (400, {"ok": False, "error": error})


def test_it_answers_one_row_with_its_result_and_an_unknown_lead_with_its_id(client, webhook, lead):
    response = post(client, webhook, {"clayops_lead_id": lead.pk})
    assert (response.status_code, response.json()) == (200, {"ok": True, "result": "enriched"})
    response = post(client, webhook, {"clayops_lead_id": 987654})
    assert (response.status_code, response.json()) == (404, {"ok": False, "error": "unknown lead 987654"})


def test_it_stores_a_batch_callback_row_by_row(client, webhook, lead):
    other = make_lead(webhook=webhook, state=Lead.State.ACCEPTED, email="bob@beta.com", domain="beta.com")
    rows = [
        {"clayops_lead_id": lead.pk, "company_name": "Acme"},
        {"clayops_lead_id": other.pk, "company_name": "Beta"},
        {"clayops_lead_id": lead.pk, "company_name": "Acme again"},
    ]
    response = post(client, webhook, rows)
    assert (response.status_code, response.json()) == (
        200,
        {"ok": True, "results": ["enriched", "enriched", "duplicate"]},
    )
    other.refresh_from_db()
    assert other.enriched == {"company_name": "Beta"}


@pytest.mark.parametrize(("credits_used", "stored"), [(0, Decimal("0")), (0.5, Decimal("0.5")), (-3, None)])
def test_it_stores_the_reported_cost_when_it_is_zero_or_more(webhook, lead, credits_used, stored):
    callbacks.apply_enrichment(lead.pk, {"clayops_lead_id": lead.pk, "credits_used": credits_used})
    lead.refresh_from_db()
    assert lead.credits_actual == stored


@pytest.mark.parametrize("status", ["error", "ERROR", "failed"])
def test_it_marks_a_failed_enrichment_and_keeps_it_out_of_the_cache(webhook, lead, status):
    callbacks.apply_enrichment(lead.pk, {"clayops_lead_id": lead.pk, "enrichment_status": status})
    lead.refresh_from_db()
    assert (lead.state, lead.last_error) == (Lead.State.ENRICHED, "enrichment failed at Clay")
    assert not EnrichmentCache.objects.exists()


def test_it_clears_the_leads_retry_state_and_dates_everything_at_the_callback(webhook, lead):
    Lead.objects.filter(pk=lead.pk).update(
        state_changed_at=NOW, next_attempt_at=NOW, defer_reason="budget", last_error="HTTP 503"
    )
    reservation = budget.reserve(budget=webhook.workspace.budget, amount=Decimal("6"), lead=lead)
    callbacks.apply_enrichment(lead.pk, {"clayops_lead_id": lead.pk, "company_name": "Acme"})
    lead.refresh_from_db()
    assert (lead.next_attempt_at, lead.defer_reason, lead.last_error) == (None, "", "")
    assert lead.state_changed_at == lead.enriched_at
    reservation.refresh_from_db()
    assert (reservation.state, reservation.closed_at) == (CreditReservation.State.SETTLED, lead.enriched_at)
    assert EnrichmentCache.objects.get(domain="acme.com").fetched_at == lead.enriched_at


def test_it_writes_the_cache_entry_with_its_lifetime(db, settings):
    settings.CLAYOPS_CACHE_TTL_SECONDS = 3600
    callbacks.cache_put("acme.com", {"company_name": "Acme"}, now=NOW)
    entry = EnrichmentCache.objects.get(domain="acme.com")
    assert (entry.data, entry.fetched_at, entry.expires_at) == (
        {"company_name": "Acme"},
        NOW,
        NOW + timedelta(hours=1),
    )
    later = NOW + timedelta(days=1)
    callbacks.cache_put("acme.com", {"company_name": "Acme Inc"}, now=later)
    entry.refresh_from_db()
    assert (entry.data, entry.fetched_at, entry.expires_at) == (
        {"company_name": "Acme Inc"},
        later,
        later + timedelta(hours=1),
    )


def test_it_overwrites_the_entry_another_callback_inserted_first(db, settings, monkeypatch):
    settings.CLAYOPS_CACHE_TTL_SECONDS = 3600
    real_create = EnrichmentCache.objects.create

    def lose_the_race(**fields):
        real_create(domain=fields["domain"], data={"theirs": True}, fetched_at=NOW, expires_at=NOW)
        raise IntegrityError("UNIQUE constraint failed: domain")

    monkeypatch.setattr(EnrichmentCache.objects, "create", lose_the_race)
    # No savepoint around the insert here, so the winner's row outlives the failed insert.
    monkeypatch.setattr(callbacks, "transaction", SimpleNamespace(atomic=contextlib.nullcontext))
    later = NOW + timedelta(minutes=1)
    callbacks.cache_put("acme.com", {"company_name": "Acme"}, now=later)
    entry = EnrichmentCache.objects.get(domain="acme.com")
    assert (entry.data, entry.fetched_at, entry.expires_at) == (
        {"company_name": "Acme"},
        later,
        later + timedelta(hours=1),
    )


def two_sends(webhook, lead):
    """An uncertain send of the lead and its resend: two reservations, the resend the latest."""
    b = webhook.workspace.budget
    first = budget.reserve(budget=b, amount=Decimal("6"), lead=lead)
    resend = budget.reserve(budget=b, amount=Decimal("6"), lead=lead)
    return first, resend


def charged(*reservations) -> list:
    for r in reservations:
        r.refresh_from_db()
    return [(r.state, r.actual) for r in reservations]


@pytest.mark.parametrize("send_id", [lambda r: r.pk, lambda r: str(r.pk)])
def test_it_books_the_charge_on_the_send_the_callback_names(webhook, lead, send_id):
    first, resend = two_sends(webhook, lead)
    row = {"clayops_lead_id": lead.pk, "clayops_send_id": send_id(first), "credits_used": 4}
    assert callbacks.apply_enrichment(lead.pk, row) == "enriched"
    assert charged(first, resend) == [("settled", Decimal("4")), ("held", None)]


@pytest.mark.parametrize("send_id", [0, -3, 2**63, True, "abc", 1.5, None])
def test_it_books_an_unusable_send_id_on_the_latest_send(webhook, lead, send_id):
    first, resend = two_sends(webhook, lead)
    row = {"clayops_lead_id": lead.pk, "clayops_send_id": send_id, "credits_used": 4}
    callbacks.apply_enrichment(lead.pk, row)
    assert charged(first, resend) == [("held", None), ("settled", Decimal("4"))]


def test_it_books_a_send_whose_id_has_three_digits(webhook, lead):
    usage = budget.usage_for(webhook.workspace.budget)
    CreditReservation.objects.bulk_create(
        CreditReservation(usage=usage, amount=Decimal("0"), expires_at=NOW) for _ in range(130)
    )
    first, resend = two_sends(webhook, lead)
    assert first.pk > 126
    callbacks.apply_enrichment(
        lead.pk, {"clayops_lead_id": lead.pk, "clayops_send_id": first.pk, "credits_used": 4}
    )
    assert charged(first, resend) == [("settled", Decimal("4")), ("held", None)]


def test_it_books_the_charge_of_another_send_of_a_lead_already_enriched(webhook, lead, monkeypatch):
    monkeypatch.setattr(callbacks.timezone, "now", lambda: NOW)
    first, resend = two_sends(webhook, lead)
    callbacks.apply_enrichment(
        lead.pk, {"clayops_lead_id": lead.pk, "clayops_send_id": resend.pk, "credits_used": 5}
    )
    row = {"clayops_lead_id": lead.pk, "clayops_send_id": first.pk, "credits_used": 4}
    assert callbacks.apply_enrichment(lead.pk, row) == "duplicate"
    assert charged(first, resend) == [("settled", Decimal("4")), ("settled", Decimal("5"))]
    assert first.closed_at == NOW
    assert callbacks.apply_enrichment(lead.pk, {"clayops_lead_id": lead.pk, "credits_used": 9}) == "duplicate"
    assert charged(first, resend) == [("settled", Decimal("4")), ("settled", Decimal("5"))]
