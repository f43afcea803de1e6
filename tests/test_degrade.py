"""What clayops serves for a lead while Clay cannot: cache by domain, else a local fallback."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from clayops.degrade import company_from_domain, lead_data
from clayops.models import EnrichmentCache, Lead
from tests.factories import make_lead


@pytest.mark.parametrize(
    ("domain", "name"),
    [("acme.com", "Acme"), ("www.acme-widgets.co.uk", "Acme Widgets"), ("sub.big_co.io", "Big Co"), ("", "")],
)
def test_it_guesses_a_company_name_from_the_domain(domain, name):
    assert company_from_domain(domain) == name


@pytest.fixture
def deferred(webhook):
    return make_lead(webhook=webhook, state=Lead.State.DEFERRED, domain="acme.com")


def test_it_serves_the_cache_by_domain_and_keeps_the_lead_in_the_offline_queue(deferred):
    EnrichmentCache.objects.create(
        domain="acme.com", data={"company_name": "Acme Inc"}, expires_at=timezone.now() + timedelta(days=1)
    )

    answer = lead_data(deferred)

    assert answer["source"] == "cache" and answer["data"] == {"company_name": "Acme Inc"}
    deferred.refresh_from_db()
    assert deferred.state == Lead.State.SERVED_CACHE and deferred.served["source"] == "cache"
    assert EnrichmentCache.objects.get(domain="acme.com").hits == 1


def test_it_falls_back_to_a_local_guess_when_the_cache_is_cold_or_expired(deferred):
    EnrichmentCache.objects.create(
        domain="acme.com", data={"company_name": "Old"}, expires_at=timezone.now() - timedelta(seconds=1)
    )

    answer = lead_data(deferred)

    assert answer["source"] == "fallback" and answer["data"]["company_name"] == "Acme"
    deferred.refresh_from_db()
    assert deferred.state == Lead.State.SERVED_FALLBACK


def test_it_prefers_clays_own_enrichment(deferred):
    Lead.objects.filter(pk=deferred.pk).update(
        enriched={"company_name": "Real"}, enriched_at=timezone.now(), state=Lead.State.ENRICHED
    )
    deferred.refresh_from_db()
    assert lead_data(deferred)["source"] == "clay"


def test_it_answers_the_lead_data_endpoint_only_when_logged_in(client, deferred, operator):
    url = reverse("lead-data", args=[deferred.pk])
    assert client.get(url).status_code == 401
    client.force_login(operator)
    body = client.get(url).json()
    assert body["source"] == "fallback" and body["data"]["company_name"] == "Acme"
