"""Clay's HTTP API column posting enriched rows back (authenticated, matched, idempotent)."""

from __future__ import annotations

import hmac
import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from clayops import budget, callbacks
from clayops.contract import CALLBACK_HEADER
from clayops.models import AuditEntry, EnrichmentCache, Lead
from tests.factories import make_dead_letter, make_lead


@pytest.fixture
def lead(webhook):
    return make_lead(webhook=webhook, state=Lead.State.ACCEPTED, email="ann@acme.com", domain="acme.com")


def post(client, webhook, body, secret=None, raw=None):
    headers = {CALLBACK_HEADER: webhook.callback_secret if secret is None else secret}
    return client.post(
        reverse("clay-callback", args=[webhook.pk]),
        data=raw if raw is not None else json.dumps(body),
        content_type="application/json",
        headers=headers,
    )


def test_it_stores_the_enrichment_and_fills_the_domain_cache(client, webhook, lead):
    response = post(
        client, webhook, {"clayops_lead_id": lead.pk, "company_name": "Acme", "credits_used": 7.5}
    )

    assert response.status_code == 200 and response.json()["result"] == "enriched"
    lead.refresh_from_db()
    assert lead.state == Lead.State.ENRICHED
    assert lead.enriched == {"company_name": "Acme"} and lead.credits_actual == Decimal("7.5")
    assert EnrichmentCache.objects.get(domain="acme.com").data == {"company_name": "Acme"}


def test_it_settles_the_reservation_at_the_reported_cost(client, webhook, lead):
    reservation = budget.reserve(budget=webhook.workspace.budget, amount=Decimal("6"), lead=lead)
    budget.settle(reservation_id=reservation.pk)

    post(client, webhook, {"clayops_lead_id": lead.pk, "credits_used": 9})
    post(client, webhook, {"clayops_lead_id": lead.pk, "credits_used": 9})  # repeated callback

    usage = budget.usage_for(webhook.workspace.budget)
    assert usage.spent == Decimal("9") and usage.reserved == 0


def test_it_changes_nothing_on_a_repeated_callback(client, webhook, lead):
    post(client, webhook, {"clayops_lead_id": lead.pk, "company_name": "Acme"})
    response = post(client, webhook, {"clayops_lead_id": lead.pk, "company_name": "Changed"})

    assert response.status_code == 200 and response.json()["result"] == "duplicate"
    lead.refresh_from_db()
    assert lead.enriched == {"company_name": "Acme"}


def test_it_rejects_a_wrong_or_missing_secret_with_401(client, webhook, lead, caplog):
    assert post(client, webhook, {"clayops_lead_id": lead.pk}, secret="wrong").status_code == 401
    assert post(client, webhook, {"clayops_lead_id": lead.pk}, secret="").status_code == 401
    lead.refresh_from_db()
    assert lead.state == Lead.State.ACCEPTED
    assert "rejected" in caplog.text


def test_it_answers_bad_json_and_unknown_ids_with_clear_4xx(client, webhook, lead):
    assert post(client, webhook, None, raw="{not json").status_code == 400
    assert post(client, webhook, ["x"]).status_code == 400
    missing = post(client, webhook, {"company_name": "x"})
    assert missing.status_code == 400 and "clayops_lead_id" in missing.json()["error"]
    assert post(client, webhook, {"clayops_lead_id": 999999}).status_code == 404
    assert (
        client.post(
            reverse("clay-callback", args=[999]), data="{}", content_type="application/json"
        ).status_code
        == 404
    )


def test_it_rejects_get_requests(client, webhook):
    assert client.get(reverse("clay-callback", args=[webhook.pk])).status_code == 405


def test_it_resolves_the_dlq_entry_of_a_lead_clay_enriched_after_all(client, webhook, lead):
    Lead.objects.filter(pk=lead.pk).update(state=Lead.State.DEAD)
    entry = make_dead_letter(lead=lead, error="timeout", error_class="timeout")

    post(client, webhook, {"clayops_lead_id": lead.pk, "company_name": "Acme"})

    entry.refresh_from_db()
    lead.refresh_from_db()
    assert entry.state == "resolved" and lead.state == Lead.State.ENRICHED
    assert not AuditEntry.objects.filter(action="dlq_retry").exists()


def test_it_compares_the_secret_in_constant_time(client, webhook, lead, monkeypatch):
    seen = []
    compare_digest = hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return compare_digest(a, b)

    monkeypatch.setattr(callbacks.hmac, "compare_digest", spy)

    assert post(client, webhook, {"clayops_lead_id": lead.pk}, secret="wrong").status_code == 401
    assert post(client, webhook, {"clayops_lead_id": lead.pk}).status_code == 200

    secret = webhook.callback_secret.encode()
    assert sorted(seen) == sorted([(b"wrong", secret), (secret, secret)])


def test_it_keeps_a_failed_enrichment_out_of_the_domain_cache(client, webhook, lead):
    fetched = timezone.now() - timedelta(hours=1)
    cached = EnrichmentCache.objects.create(
        domain="acme.com",
        data={"company_name": "Acme"},
        fetched_at=fetched,
        expires_at=fetched + timedelta(days=1),
    )
    other = make_lead(webhook=webhook, state=Lead.State.ACCEPTED, email="bob@beta.com", domain="beta.com")

    for one in (lead, other):
        response = post(
            client, webhook, {"clayops_lead_id": one.pk, "enrichment_status": "failed", "error": "no match"}
        )
        assert response.status_code == 200 and response.json()["result"] == "enriched"

    lead.refresh_from_db()
    assert lead.last_error == "enrichment failed at Clay"
    cached.refresh_from_db()
    assert cached.data == {"company_name": "Acme"} and cached.fetched_at == fetched
    assert not EnrichmentCache.objects.filter(domain="beta.com").exists()


def test_it_refuses_an_oversized_body_with_413_and_changes_nothing(client, webhook, lead):
    body = {"clayops_lead_id": lead.pk, "company_name": "Acme", "padding": "x" * callbacks.MAX_CALLBACK_BYTES}

    response = post(client, webhook, body)

    assert response.status_code == 413
    lead.refresh_from_db()
    assert lead.state == Lead.State.ACCEPTED and lead.enriched_at is None
    assert not EnrichmentCache.objects.exists()
