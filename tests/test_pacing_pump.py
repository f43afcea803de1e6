"""Paced workspaces without a worker waiting (issue 15): the bucket taken in bulk, the lists a
workspace's leads wait in (urgent first, imports in turn), and the pump that sends what the tokens
pay for and comes back when the next ones are there. Real Redis (the test's private valkey)."""

from __future__ import annotations

import time
from datetime import timedelta

import django_rq
import httpx
import pytest
import respx
from django.utils import timezone

from clayops import breaker, delivery, pacequeue, ratelimit
from clayops.delivery import pump
from clayops.models import Lead
from tests.factories import make_lead_import, make_leads

S = Lead.State


@pytest.fixture(autouse=True)
def _inline(settings):
    settings.CLAYOPS_SEND_CONCURRENCY = 1
    settings.CLAYOPS_RATE_HEADROOM = 1
    settings.CLAYOPS_RATE_JITTER_SECONDS = 0.25


@pytest.fixture
def redis():
    return django_rq.get_connection("default")


def paced(webhook, *, rate=10, burst=6):
    webhook.workspace.rate_limit = rate
    webhook.workspace.burst = burst
    webhook.workspace.save()
    return webhook


def drive(workspace_id: int, *, timeout: float = 15.0) -> None:
    """What the workers' dispatcher does: run each pump as it falls due, until nothing waits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ws in pacequeue.take_due():
            delivery.run_pump(ws)
        if workspace_id not in pacequeue.active_workspaces() and not pacequeue.scheduled(workspace_id):
            return
        time.sleep(0.01)
    raise AssertionError(f"workspace {workspace_id} still has leads waiting after {timeout} s")


# --- the bucket, taken in bulk -------------------------------------------------------------------


def test_a_full_bucket_is_taken_at_once_then_nothing_until_the_goal_is_there(redis):
    assert ratelimit.take_up_to(1, rate=10, burst=19, want=50, goal=15, window=1.25) == (19, 0.0)
    granted, wait = ratelimit.take_up_to(1, rate=10, burst=19, want=50, goal=15, window=1.25)
    # 15 tokens take 1.5 s to come back (the window empties sooner, at 1.25 s).
    assert granted == 0 and 1.4 < wait <= 1.5
    time.sleep(wait)
    granted, _ = ratelimit.take_up_to(1, rate=10, burst=19, want=50, goal=15, window=1.25)
    assert 15 <= granted <= 16


def test_it_never_grants_more_than_wanted_and_a_small_want_needs_only_itself(redis):
    assert ratelimit.take_up_to(2, rate=10, burst=19, want=3, goal=15, window=1.25) == (3, 0.0)
    # 3 more wanted: 16 tokens are there, and 3 of 19 are in the window: granted without waiting.
    assert ratelimit.take_up_to(2, rate=10, burst=19, want=3, goal=15, window=1.25) == (3, 0.0)


def test_the_window_binds_when_the_bucket_holds_less_than_a_window(redis):
    assert ratelimit.take_up_to(3, rate=100, burst=5, want=50, goal=5, window=1.25) == (5, 0.0)
    granted, wait = ratelimit.take_up_to(3, rate=100, burst=5, want=50, goal=5, window=1.25)
    assert granted == 0 and 1.2 < wait <= 1.25  # the bucket is full again, the window is not empty


def test_the_goal_sits_between_the_window_and_a_full_bucket():
    assert ratelimit.pace_goal(rate=10, burst=19, window=1.25) == 15
    assert ratelimit.pace_goal(rate=10, burst=1, window=1.25) == 1
    assert ratelimit.pace_goal(rate=100, burst=5, window=1.25) == 5
    assert ratelimit.pace_goal(rate=1, burst=5, window=1.25) == 3


def test_unused_tokens_go_back_to_the_bucket_and_leave_the_window(redis):
    assert ratelimit.take_up_to(4, rate=10, burst=10, want=10, goal=1, window=1.25) == (10, 0.0)
    assert ratelimit.take_up_to(4, rate=10, burst=10, want=1, goal=1, window=1.25)[0] == 0
    ratelimit.refund(4, 4, burst=10)
    assert redis.zcard("clayops:rate:4:w") == 6
    assert ratelimit.take_up_to(4, rate=10, burst=10, want=10, goal=1, window=1.25)[0] == 4


# --- the lists -----------------------------------------------------------------------------------


def test_urgent_leads_come_first_then_imports_take_turns(redis):
    pacequeue.push(7, {"11": [[1, 2], [3, 4], [5, 6]], "12": [[101]]})
    pacequeue.push(7, {pacequeue.URGENT: [[900, 901]]})
    order = []
    while (item := pacequeue.pop(7)) is not None:
        order.append(item[1])
    assert order == [[900, 901], [1, 2], [101], [3, 4], [5, 6]]
    assert 7 not in pacequeue.active_workspaces()


def test_what_is_given_back_goes_first_in_its_list(redis):
    pacequeue.push(8, {"1": [[1, 2, 3], [4]]})
    source, ids = pacequeue.pop(8)
    pacequeue.give_back(8, source, ids[1:])
    assert pacequeue.pop(8)[1] == [2, 3]
    assert pacequeue.waiting(8) == 1


def test_a_due_pump_is_enqueued_once_on_the_urgent_queue(redis):
    pacequeue.schedule(5, 0)
    pacequeue.schedule(6, 30)
    assert pacequeue.dispatch_due() == 1
    assert pacequeue.dispatch_due() == 0
    jobs = django_rq.get_queue("urgent").jobs
    assert [(job.func_name, job.args) for job in jobs] == [("clayops.jobs.pump_workspace", (5,))]
    # A sooner schedule wins over a later one; a later one never postpones a sooner one.
    pacequeue.schedule(6, 0)
    pacequeue.schedule(6, 60)
    assert pacequeue.take_due() == [6]


# --- the pump ------------------------------------------------------------------------------------


@respx.mock
def test_a_job_sends_what_the_tokens_pay_for_and_the_pump_sends_the_rest_at_the_rate(webhook):
    paced(webhook, rate=10, burst=6)  # 4 usable: one of headroom, one against jitter (a quarter of 5)
    seen: list[float] = []
    respx.post(webhook.url).mock(
        side_effect=lambda request: seen.append(time.monotonic()) or httpx.Response(200)
    )
    ids = [lead.pk for lead in make_leads(12, webhook=webhook)]

    counts = delivery.submit_batch(ids)

    # The job took the 5 tokens there were and did not wait for more: the worker is free.
    assert counts == {"paced": 12, "accepted": 4}
    assert Lead.objects.filter(state=S.QUEUED).count() == 8
    assert pacequeue.waiting(webhook.workspace_id) == 8
    assert pacequeue.scheduled(webhook.workspace_id)
    drive(webhook.workspace_id)
    assert Lead.objects.filter(state=S.ACCEPTED).count() == 12
    # Never more than the usable burst in any 1.25 s (so never in a second), and no faster than the rate.
    assert max(sum(1 for t in seen if start <= t < start + 1.2) for start in seen) <= 4
    assert seen[-1] - seen[0] >= 1.2


def _statements(ids) -> tuple[int, dict]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        counts = delivery.submit_batch(ids)
    return len(captured.captured_queries), counts


@respx.mock
def test_a_pumps_requests_go_out_together_and_their_answers_are_written_together(webhook, settings):
    # With many workspaces paced on few workers, what a pump writes per lead is what limits the
    # aggregate: its requests are marked sent in one statement and their answers applied in one set
    # of statements, so a run of 10 costs what a run of 1 does.
    settings.CLAYOPS_SEND_CONCURRENCY = 16
    respx.post(webhook.url).mock(return_value=httpx.Response(200))
    paced(webhook, rate=10, burst=14)  # 10 usable: one of headroom, three against jitter
    one, counts_one = _statements([lead.pk for lead in make_leads(1, webhook=webhook)])
    assert counts_one == {"paced": 1, "accepted": 1}
    redis = django_rq.get_connection("default")  # the bucket full again for the second run
    redis.delete(f"clayops:rate:{webhook.workspace_id}", f"clayops:rate:{webhook.workspace_id}:w")
    ten, counts_ten = _statements([lead.pk for lead in make_leads(10, webhook=webhook)])
    assert counts_ten == {"paced": 10, "accepted": 10}
    assert ten <= one + 2, (one, ten)


@respx.mock
def test_a_jobs_answers_that_arrive_together_are_written_together(webhook, settings):
    # Without a rate limit too: the answers to a job's requests are written in bulk, not one set of
    # statements per answer (capacity: what a job writes per lead is what its worker spends).
    settings.CLAYOPS_SEND_CONCURRENCY = 16
    respx.post(webhook.url).mock(return_value=httpx.Response(200))
    one, counts_one = _statements([lead.pk for lead in make_leads(1, webhook=webhook)])
    ten, counts_ten = _statements([lead.pk for lead in make_leads(10, webhook=webhook)])
    assert counts_one == {"accepted": 1} and counts_ten == {"accepted": 10}
    assert ten <= one + 2, (one, ten)
    assert Lead.objects.filter(state=S.ACCEPTED).count() == 11


@respx.mock
def test_answers_held_for_writing_are_written_even_when_the_job_then_fails(webhook, settings, monkeypatch):
    # Answers wait up to GATHER_SECONDS to be written together; an error meanwhile (the database
    # going away while the next requests are marked sent) must not leave Clay's 200s unwritten:
    # those leads would be taken for uncertain and sent again.
    from clayops.delivery.sender import Sender

    settings.CLAYOPS_SEND_CONCURRENCY = 16
    respx.post(webhook.url).mock(return_value=httpx.Response(200))
    ids = [lead.pk for lead in make_leads(3, webhook=webhook)]
    original = Sender._next_launch
    calls = []

    def next_launch_then_fail(self):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("database went away")
        return original(self)

    monkeypatch.setattr(Sender, "_next_launch", next_launch_then_fail)
    with pytest.raises(RuntimeError):
        delivery.submit_batch(ids)
    assert Lead.objects.filter(pk__in=ids, state=S.ACCEPTED).count() == 3


@respx.mock
def test_urgent_leads_handed_over_later_go_before_the_waiting_bulk(webhook):
    paced(webhook, rate=10, burst=4)  # 3 usable: goal 3
    order: list[int] = []
    respx.post(webhook.url).mock(
        side_effect=lambda request: (
            order.append(__import__("json").loads(request.content)["clayops_lead_id"]) or httpx.Response(200)
        )
    )
    bulk_import = make_lead_import(webhook=webhook)
    urgent_import = make_lead_import(webhook=webhook, urgent=True)
    bulk = [lead.pk for lead in make_leads(9, webhook=webhook, lead_import=bulk_import)]
    urgent = [lead.pk for lead in make_leads(3, webhook=webhook, lead_import=urgent_import)]

    delivery.submit_batch(bulk)  # 3 go at once, 6 wait
    delivery.submit_batch(urgent)  # no tokens: they wait too, at the head
    drive(webhook.workspace_id)

    assert order[:3] == bulk[:3]
    assert order[3:6] == urgent
    assert order[6:] == bulk[3:]


@respx.mock
def test_tokens_of_requests_the_guards_stopped_go_back(webhook, redis):
    paced(webhook, rate=10, burst=11)  # 10 usable
    route = respx.post(webhook.url).mock(return_value=httpx.Response(200))
    breaker.force_open(webhook.pk, reason="test")
    ids = [lead.pk for lead in make_leads(4, webhook=webhook)]

    assert delivery.submit_batch(ids) == {"paced": 4, "deferred": 4}

    assert route.call_count == 0
    assert redis.zcard(f"clayops:rate:{webhook.workspace_id}:w") == 0  # nothing spent on them


@respx.mock
def test_a_second_pump_of_the_same_workspace_does_nothing_while_one_runs(webhook):
    paced(webhook)
    respx.post(webhook.url).mock(return_value=httpx.Response(200))
    ids = [lead.pk for lead in make_leads(3, webhook=webhook)]
    token = pacequeue.lock(webhook.workspace_id)

    assert delivery.submit_batch(ids) == {"paced": 3}  # handed over; the running pump owns them
    assert pacequeue.waiting(webhook.workspace_id) == 3

    pacequeue.unlock(webhook.workspace_id, token)
    assert pump.run_pump(webhook.workspace_id) == {"accepted": 3}


@respx.mock
def test_leads_handed_over_while_the_pump_ran_get_a_pump_of_their_own(webhook):
    paced(webhook)
    respx.post(webhook.url).mock(return_value=httpx.Response(200))
    first = [lead.pk for lead in make_leads(2, webhook=webhook)]
    late = [lead.pk for lead in make_leads(2, webhook=webhook)]
    original = pump._pump

    def pump_then_hand_over(workspace_id):
        counts = original(workspace_id)  # the lists are empty now
        pacequeue.push(workspace_id, {"0": [late]})  # a job hands over; the lock makes it leave
        assert pump.run_pump(workspace_id) == {}
        return counts

    pump._pump = pump_then_hand_over
    try:
        delivery.submit_batch(first)
    finally:
        pump._pump = original
    assert pacequeue.scheduled(webhook.workspace_id)  # not lost: the lock's holder scheduled one
    drive(webhook.workspace_id)
    assert Lead.objects.filter(pk__in=late, state=S.ACCEPTED).count() == 2


def test_leads_waiting_for_their_pump_are_no_orphans_until_their_lists_are_empty(webhook, settings):
    paced(webhook)
    settings.CLAYOPS_ORPHAN_SECONDS = 60
    ids = [lead.pk for lead in make_leads(3, webhook=webhook)]
    Lead.objects.filter(pk__in=ids).update(state_changed_at=timezone.now() - timedelta(minutes=5))
    pacequeue.push(webhook.workspace_id, {"0": [ids]})

    assert delivery.requeue_orphans(now=timezone.now()) == 0

    pacequeue.pop(webhook.workspace_id)  # a pump took them and died before sending
    assert pacequeue.pop(webhook.workspace_id) is None
    assert delivery.requeue_orphans(now=timezone.now()) == 3


def test_a_dead_pump_is_restarted_by_the_maintenance_tick(webhook):
    paced(webhook)
    ids = [lead.pk for lead in make_leads(2, webhook=webhook)]
    pacequeue.push(webhook.workspace_id, {"0": [ids]})  # no pump runs, none is due

    assert pacequeue.ensure_pumps() == 1
    assert pacequeue.take_due() == [webhook.workspace_id]
    token = pacequeue.lock(webhook.workspace_id)  # one runs: nothing to restart
    assert pacequeue.ensure_pumps() == 0
    pacequeue.unlock(webhook.workspace_id, token)


@respx.mock
def test_a_batch_a_pump_took_when_it_died_goes_first_for_the_next_pump(webhook, redis):
    paced(webhook)
    respx.post(webhook.url).mock(return_value=httpx.Response(200))
    ids = [lead.pk for lead in make_leads(4, webhook=webhook)]
    pacequeue.push(webhook.workspace_id, {"0": [ids[:2], ids[2:]]})
    pacequeue.lock(webhook.workspace_id)
    assert pacequeue.pop(webhook.workspace_id)[1] == ids[:2]  # ... and the pump is SIGKILLed here
    redis.delete(f"clayops:pace:{webhook.workspace_id}:lock")  # its lock expires

    assert pump.run_pump(webhook.workspace_id) == {"accepted": 4}
    assert Lead.objects.filter(pk__in=ids, state=S.ACCEPTED).count() == 4


def test_a_pump_that_finds_the_lock_taken_is_due_again_when_the_lock_expires(webhook, redis):
    paced(webhook)
    redis.set(f"clayops:pace:{webhook.workspace_id}:lock", "a dead pump's", px=300)

    assert pump.run_pump(webhook.workspace_id) == {}
    assert pacequeue.take_due() == []
    time.sleep(0.35)
    assert pacequeue.take_due() == [webhook.workspace_id]
