"""Re-enrichment: leads given a cache or fallback answer while Clay could not take them get Clay's own
data later, automatically (the default, per webhook) or when an operator asks; always after new
work and through the budget and the breaker; the lead page says where its data came from."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest
import respx
from django.urls import reverse
from django.utils import timezone

from clayops import delivery
from clayops.models import AuditEntry, CreditBudget, Lead, Webhook
from tests.factories import make_lead, make_leads

S = Lead.State
FALLBACK = {"source": "fallback", "data": {"company_name": "Acme"}, "at": "2026-11-30T10:00:00+00:00"}
CACHED = {"source": "cache", "data": {"company_name": "Acme Inc"}, "at": "2026-11-30T09:00:00+00:00"}


def served(i: int, webhook: Webhook, state=S.SERVED_FALLBACK, answer=FALLBACK) -> Lead:
    return make_lead(i, webhook=webhook, state=state, served=answer, defer_reason="circuit open")


def states(leads) -> list[str]:
    found = dict(Lead.objects.filter(pk__in=[lead.pk for lead in leads]).values_list("pk", "state"))
    return [found[lead.pk] for lead in leads]


def test_automatic_reenrichment_waits_for_new_work_first(webhook):
    old = served(1, webhook)
    new = make_lead(2, webhook=webhook, state=S.DEFERRED, defer_reason="circuit open")
    now = timezone.now()

    assert delivery.drain_offline_step(now=now) == 1
    assert states([old, new]) == [S.SERVED_FALLBACK, S.QUEUED]  # the new work goes first

    assert delivery.drain_offline_step(now=now) == 0  # it still waits in the queue: served ones wait too
    Lead.objects.filter(pk=new.pk).update(state=S.ACCEPTED)
    assert delivery.drain_offline_step(now=now) == 1
    assert states([old]) == [S.QUEUED]
    assert Lead.objects.get(pk=old.pk).served == FALLBACK  # the served answer stays until Clay's comes


def test_a_webhook_set_to_reenrich_on_request_keeps_served_leads_until_asked(webhook):
    Webhook.objects.filter(pk=webhook.pk).update(reenrich_served=False)
    leads = [served(1, webhook), served(2, webhook, S.SERVED_CACHE, CACHED)]
    deferred = make_lead(3, webhook=webhook, state=S.DEFERRED, defer_reason="circuit open")
    now = timezone.now()

    assert delivery.drain_offline_step(now=now) == 1  # the deferred one only
    Lead.objects.filter(pk=deferred.pk).update(state=S.ACCEPTED)
    assert delivery.drain_offline_step(now=now) == 0
    assert states(leads) == [S.SERVED_FALLBACK, S.SERVED_CACHE]


@respx.mock
def test_an_operator_reenriches_served_leads_through_the_budget(client, operator, webhook):
    Webhook.objects.filter(pk=webhook.pk).update(reenrich_served=False)
    route = respx.post(webhook.url).mock(return_value=httpx.Response(200))
    CreditBudget.objects.filter(pk=webhook.workspace.budget_id).update(daily_limit=Decimal("6"))
    leads = [served(i, webhook) for i in range(3)]
    client.force_login(operator)

    page = client.get(reverse("dashboard:leads"), {"state": "served_fallback"}).content.decode()
    assert "Served during an outage" in page and "Re-enrich 3 (18 credits)" in page
    assert "Re-enriching costs about" in page

    r = client.post(reverse("dashboard:leads_resolve"), {"action": "reenrich", "state": "served_fallback"})

    assert r.status_code == 302
    assert states(leads) == [S.QUEUED] * 3
    entry = AuditEntry.objects.get(action="lead_reenrich")
    assert (entry.user, entry.count, entry.detail["credits_forecast"]) == (operator, 3, "18.00")
    delivery.submit_batch([lead.pk for lead in leads])
    assert route.call_count == 1  # the budget pays for one: the others wait for it, deferred
    assert sorted(states(leads)) == [S.ACCEPTED, S.DEFERRED, S.DEFERRED]


@pytest.mark.parametrize(
    "action,state",
    [
        ("reenrich", "overdue"),
        ("reenrich", "uncertain"),
        ("deliver", "served_cache"),
        ("wait", "served_fallback"),
    ],
)
def test_an_action_is_refused_for_a_state_it_does_not_apply_to(client, operator, webhook, action, state):
    lead = served(1, webhook, S.SERVED_CACHE, CACHED)
    client.force_login(operator)
    r = client.post(reverse("dashboard:leads_resolve"), {"action": action, "state": state})
    assert r.status_code == 400
    assert Lead.objects.get(pk=lead.pk).state == S.SERVED_CACHE


def test_a_viewer_cannot_reenrich(client, viewer, webhook):
    lead = served(1, webhook)
    client.force_login(viewer)
    r = client.post(reverse("dashboard:leads_resolve"), {"action": "reenrich", "state": "served_fallback"})
    assert r.status_code == 403
    assert Lead.objects.get(pk=lead.pk).state == S.SERVED_FALLBACK


def test_the_lead_page_says_where_the_data_came_from(client, operator, webhook):
    fallback = served(1, webhook)
    cached = served(2, webhook, S.SERVED_CACHE, CACHED)
    reenriched = make_lead(
        3, webhook=webhook, state=S.ENRICHED, served=FALLBACK, enriched={"company_name": "Acme Corp"}
    )
    client.force_login(operator)

    def source(lead):
        page = client.get(reverse("dashboard:lead_detail", args=[lead.pk])).content.decode()
        return page.split('data-testid="data-source">')[1].split("</span>")[0], page

    text, page = source(fallback)
    assert text == "none from Clay yet; served a local fallback (a guess from the domain) meanwhile"
    assert "Re-enrich now" in page and "sent to Clay by itself once Clay can take it again" in page
    text, _ = source(cached)
    assert text.startswith("none from Clay yet; served from the cache (another lead of the same company")
    text, page = source(reenriched)
    assert text == "from Clay's callback (re-enriched after a fallback answer was served)"
    assert "Re-enrich now" not in page


def test_reenrichment_on_one_webhook_leaves_another_workspaces_leads_alone(webhook):
    from tests.factories import make_webhook, make_workspace

    other = make_webhook(workspace=make_workspace(name="other"), name="other")
    Webhook.objects.filter(pk=other.pk).update(reenrich_served=False)
    mine, theirs = served(1, webhook), served(2, other)
    make_leads(0)
    delivery.drain_offline_step(now=timezone.now())
    assert states([mine, theirs]) == [S.QUEUED, S.SERVED_FALLBACK]
