"""Clay's second meter, Actions: each HTTP API call Clay makes for a row (the callback column is one)
costs one. A budget may have a daily Actions limit beside its credit limit; a send holds both in the
same conditional UPDATE, and the gauge, the forecasts, the deferral reasons, the alerts and the
metrics show both."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest
import respx
from django.urls import reverse
from django.utils import timezone

from clayops import alerts, budget, deferral, delivery, dlq
from clayops.models import Alert, CreditBudget, CreditUsage, Lead, Webhook
from tests.factories import make_budget, make_dead_letter, make_lead, make_leads, make_webhook, make_workspace

D = Decimal
NOON = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
S = Lead.State


@pytest.fixture
def metered(db) -> CreditBudget:
    return make_budget(name="metered", daily_limit=D("1000"), actions_daily_limit=5)


def actions(b: CreditBudget, now=NOON) -> tuple[int, int]:
    u = budget.usage_for(b, now=now)
    return u.actions_reserved, u.actions_spent


# --- the books ------------------------------------------------------------------------------------


def test_the_actions_limit_refuses_a_send_even_with_credits_to_spare(metered):
    held = [budget.reserve(budget=metered, amount=D("6"), actions=2, now=NOON) for _ in range(2)]
    assert all(r is not None for r in held)
    assert budget.reserve(budget=metered, amount=D("6"), actions=2, now=NOON) is None  # 4 + 2 > 5
    assert budget.reserve(budget=metered, amount=D("6"), actions=1, now=NOON) is not None  # exactly 5
    assert actions(metered) == (5, 0)
    assert budget.usage_for(metered, now=NOON).reserved == D("18")  # the refused one held no credits
    assert metered.actions_remaining(NOON) == 0


def test_without_an_actions_limit_actions_are_counted_but_never_refuse(db):
    b = make_budget(name="free", daily_limit=D("100"))
    for _ in range(10):
        assert budget.reserve(budget=b, amount=D("1"), actions=3, now=NOON) is not None
    assert actions(b) == (30, 0)
    assert b.actions_remaining(NOON) is None


def test_settle_release_and_late_charges_move_actions_like_credits(metered):
    a, b, c = (budget.reserve(budget=metered, amount=D("6"), actions=1, now=NOON) for _ in range(3))
    budget.settle(reservation_id=a.pk, now=NOON)
    budget.release(reservation_id=b.pk, now=NOON)
    assert actions(metered) == (1, 1)
    budget.record_actual(reservation_id=b.pk, actual=D("4"), now=NOON)  # released, yet Clay took it
    assert actions(metered) == (1, 2)
    budget.settle_many([c.pk], now=NOON)
    assert actions(metered) == (0, 3)
    assert metered.actions_remaining(NOON) == 2


def test_a_doubtful_send_taken_off_the_books_gives_its_actions_back(metered, settings):
    settings.CLAYOPS_UNCERTAIN_GRACE_SECONDS = 0
    lead = make_lead(1, state=S.ENRICHED, enriched_at=timezone.now() - timezone.timedelta(minutes=5))
    budget.reserve(budget=metered, amount=D("6"), actions=2, lead=lead)
    budget.settle_held_for_leads([lead.pk], doubtful=True)
    b = CreditBudget.objects.get(pk=metered.pk)
    assert actions(b, now=timezone.now()) == (0, 2)
    assert budget.release_doubtful() == 1
    assert actions(b, now=timezone.now()) == (0, 0)


def test_batch_reservations_take_as_many_rows_as_the_actions_allow(metered):
    ids = [lead.pk for lead in make_leads(4)]
    got = budget.reserve_many(budget=metered, amount=D("1"), actions=2, lead_ids=ids, now=NOON)
    assert list(got) == ids[:2]  # 2 rows x 2 Actions = 4 of 5
    assert actions(metered) == (4, 0)


def test_a_higher_actions_limit_applies_at_once(metered):
    assert budget.reserve(budget=metered, amount=D("0"), actions=5, now=NOON) is not None
    assert budget.reserve(budget=metered, amount=D("0"), actions=1, now=NOON) is None
    CreditBudget.objects.filter(pk=metered.pk).update(actions_daily_limit=6)
    assert budget.reserve(budget=metered, amount=D("0"), actions=1, now=NOON) is not None


def test_rows_that_use_no_actions_pass_a_used_up_actions_limit(metered):
    assert budget.reserve(budget=metered, amount=D("1"), actions=5, now=NOON) is not None
    CreditBudget.objects.filter(pk=metered.pk).update(actions_daily_limit=0)  # lowered below the use
    assert budget.reserve(budget=metered, amount=D("1"), actions=1, now=NOON) is None
    assert budget.reserve(budget=metered, amount=D("1"), actions=0, now=NOON) is not None


# --- sends, deferrals, forecasts -------------------------------------------------------------------


@pytest.fixture
def hook(metered) -> Webhook:
    workspace = make_workspace(name="metered", budget=metered)
    return make_webhook(workspace=workspace, name="people", actions_per_row=1, credits_per_row=D("6"))


@respx.mock
def test_sends_stop_at_the_actions_limit_and_the_rest_say_why_and_until_when(hook):
    route = respx.post(hook.url).mock(return_value=httpx.Response(200))
    leads = make_leads(8, webhook=hook)

    delivery.submit_batch([lead.pk for lead in leads])

    assert route.call_count == 5
    deferred = list(Lead.objects.filter(state=S.DEFERRED))
    assert len(deferred) == 3
    d = deferral.explain(deferred[0])
    assert d.kind == deferral.BUDGET
    assert d.text.startswith("Clay Actions used up: resumes at 00:00 UTC (in ")
    usage = CreditUsage.objects.get(budget=hook.workspace.budget)
    assert (usage.actions_reserved + usage.actions_spent, usage.reserved + usage.spent) == (5, D("30"))


def test_a_row_needing_more_actions_than_the_limit_says_so(hook):
    Webhook.objects.filter(pk=hook.pk).update(actions_per_row=9)
    lead = make_lead(1, webhook=hook, state=S.DEFERRED, defer_reason=deferral.REASON_BUDGET)
    d = deferral.explain(lead)
    assert d.text == ("Actions limit too small: a row's 9 Actions are more than the daily Actions limit of 5")


def test_the_drain_forecast_counts_actions_and_parks_what_they_cannot_pay_for(hook):
    for i in range(8):
        make_dead_letter(i, webhook=hook)
    preview = dlq.drain_preview()
    assert preview["actions"] == 8
    [line] = preview["budgets"]
    assert (line["actions_needed"], line["actions_remaining"], line["fits"], line["parked"]) == (8, 5, 5, 3)
    assert preview["within_budget"] == 5


def test_the_resend_forecast_names_the_actions(hook):
    from clayops.delivery import resolution

    ids = [lead.pk for lead in make_leads(6, webhook=hook)]
    forecast = resolution.resend_forecast(ids)
    assert (forecast["actions"], forecast["actions_remaining"], forecast["fits"]) == (6, 5, False)


# --- what operators see ----------------------------------------------------------------------------


def test_the_overview_shows_both_meters(client, operator, hook):
    budget.reserve(budget=hook.workspace.budget, amount=D("6"), actions=3)
    client.force_login(operator)
    page = client.get(reverse("dashboard:overview")).content.decode()
    meter = page.split('data-testid="actions-meter"')[1].split("</div>\n        ")[0]
    assert "Clay Actions today" in meter
    assert "Actions used 0, reserved 3 of 5 (60%)" in meter


def test_the_alerts_raise_and_resolve_on_the_actions_share(hook):
    b = hook.workspace.budget
    now = timezone.now()
    budget.reserve(budget=b, amount=D("1"), actions=5, now=now)
    alerts.evaluate(now=now, only=["budgets"])
    opened = set(Alert.objects.filter(state="open").values_list("rule", flat=True))
    assert {"budget_actions_80", "budget_actions_100"} <= opened
    assert "budget_80" not in opened  # 1 credit of 1,000: the credit meter is fine
    CreditBudget.objects.filter(pk=b.pk).update(actions_daily_limit=1000)
    alerts.evaluate(now=now, only=["budgets"])
    assert not Alert.objects.filter(state="open", rule__startswith="budget_actions_").exists()


def test_the_metrics_carry_both_meters(client, hook, settings):
    from clayops import metrics

    budget.reserve(budget=hook.workspace.budget, amount=D("6"), actions=2)
    settings.CLAYOPS_METRICS_TOKEN = "metrics-token-0123456789abcdef"
    settings.CLAYOPS_METRICS_ALLOWED_NETWORKS = []
    metrics.reset()
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {settings.CLAYOPS_METRICS_TOKEN}")
    body = response.content.decode()
    pk = hook.workspace.budget.pk
    assert f'clayops_budget_actions_limit{{budget="{pk}"}} 5.0' in body
    assert f'clayops_budget_actions{{budget="{pk}",state="reserved"}} 2.0' in body
    assert f'clayops_budget_actions{{budget="{pk}",state="spent"}} 0.0' in body
    metrics.reset()


def test_connect_sets_actions_per_row_and_the_daily_actions_limit(client, operator):
    client.force_login(operator)
    r = client.post(
        reverse("dashboard:connect_create"),
        {
            "webhook_url": "http://127.0.0.1:9/v3/sources/webhook/t_actions",  # test settings allow loopback
            "plan": "pro",
            "workspace_name": "acme-actions",
            "actions_per_row": "3",
            "actions_daily_limit": "12000",
        },
    )
    assert r.status_code == 302, r.context["form"].errors
    hook = Webhook.objects.get(workspace__name="acme-actions")
    assert hook.actions_per_row == 3
    assert hook.workspace.budget.actions_daily_limit == 12000
