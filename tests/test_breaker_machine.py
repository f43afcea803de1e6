"""The real breaker (database + Redis window) driven by hypothesis against a small reference model."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import django_rq
import pytest
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from clayops import breaker
from clayops.models import CircuitBreaker, CreditBudget, Webhook, Workspace

PARAMS = dict(
    failure_threshold=2,
    failure_rate_threshold=50,
    window_seconds=60,
    minimum_calls=6,
    cooldown_seconds=30,
    half_open_max_probes=2,
    success_threshold=2,
)
_counter = itertools.count()


class Model:
    """What the breaker should do, written as plainly as possible."""

    def __init__(self):
        self.state = "closed"
        self.opened_at = None
        self.consecutive = 0
        self.in_flight = 0
        self.successes = 0
        self.updated_at = None
        self.window: list[tuple[int, bool]] = []

    def _count(self, now, ok):
        sec = int(now.timestamp())
        self.window.append((sec, ok))
        self.window = [(s, o) for s, o in self.window if s > sec - PARAMS["window_seconds"]]
        live = [(s, o) for s, o in self.window if s <= sec]
        return sum(o for _, o in live), sum(not o for _, o in live)

    def allow(self, now):
        if self.state == "closed":
            return True, False
        if self.state == "forced_open":
            return False, False
        if self.state == "open":
            if (now - self.opened_at).total_seconds() < PARAMS["cooldown_seconds"]:
                return False, False
            self.state, self.in_flight, self.successes, self.updated_at = "half_open", 0, 0, now
        elif self.in_flight > 0 and self.updated_at < now - timedelta(
            seconds=max(PARAMS["cooldown_seconds"], 60)
        ):
            self.in_flight, self.updated_at = 0, now
        if self.in_flight < PARAMS["half_open_max_probes"]:
            self.in_flight += 1
            self.updated_at = now
            return True, True
        return False, False

    def success(self, now, probe):
        self._count(now, True)
        if not probe:
            if self.state == "closed":
                self.consecutive = 0
            return
        if self.state == "half_open" and self.in_flight > 0:
            self.in_flight -= 1
            self.successes += 1
            self.updated_at = now
            if self.successes >= PARAMS["success_threshold"]:
                self.state, self.opened_at, self.consecutive, self.in_flight, self.successes = (
                    "closed",
                    None,
                    0,
                    0,
                    0,
                )
                self.window = []

    def failure(self, now, probe):
        ok, bad = self._count(now, False)
        if probe:
            if self.state == "half_open":
                self.state, self.opened_at, self.in_flight, self.successes = "open", now, 0, 0
            return
        if self.state != "closed":
            return
        self.consecutive += 1
        calls = ok + bad
        if self.consecutive >= PARAMS["failure_threshold"] or (
            calls >= PARAMS["minimum_calls"] and bad * 100 >= PARAMS["failure_rate_threshold"] * calls
        ):
            self.state, self.opened_at, self.in_flight, self.successes = "open", now, 0, 0

    def cancel(self):
        if self.state == "half_open" and self.in_flight > 0:
            self.in_flight -= 1

    def force_open(self, now):
        if self.state != "forced_open":
            self.state, self.opened_at, self.in_flight, self.successes = "forced_open", now, 0, 0

    def reset(self):
        self.state, self.opened_at, self.consecutive, self.in_flight, self.successes = "closed", None, 0, 0, 0
        self.window = []


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        n = next(_counter)
        budget = CreditBudget.objects.create(name=f"m{n}")
        workspace = Workspace.objects.create(name=f"m{n}", budget=budget)
        self.webhook = Webhook.objects.create(workspace=workspace, name=f"m{n}", url="http://127.0.0.1:9/x")
        CircuitBreaker.objects.create(webhook=self.webhook, **PARAMS)
        self.now = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=n)
        self.model = Model()
        self.calls: list[bool] = []  # outstanding admitted calls: probe or not

    @rule()
    def allow(self):
        expected_allowed, expected_probe = self.model.allow(self.now)
        admission = breaker.allow(self.webhook.pk, now=self.now)
        assert (admission.allowed, admission.probe) == (expected_allowed, expected_probe)
        if admission.allowed:
            self.calls.append(admission.probe)

    @precondition(lambda self: self.calls)
    @rule(i=st.integers(min_value=0, max_value=100), ok=st.booleans())
    def finish(self, i, ok):
        probe = self.calls.pop(i % len(self.calls))
        if ok:
            self.model.success(self.now, probe)
            breaker.record_success(self.webhook.pk, probe=probe, now=self.now)
        else:
            self.model.failure(self.now, probe)
            breaker.record_failure(self.webhook.pk, probe=probe, reason="HTTP 503", now=self.now)

    @precondition(lambda self: any(self.calls))
    @rule()
    def cancel_probe(self):
        self.calls.remove(True)
        self.model.cancel()
        breaker.cancel_probe(self.webhook.pk)

    @rule(seconds=st.sampled_from([1, 29, 29, 30, 61]))
    def tick(self, seconds):
        self.now += timedelta(seconds=seconds)

    @rule(action=st.sampled_from(["force_open", "reset"]))
    def operator(self, action):
        if action == "force_open":
            self.model.force_open(self.now)
            breaker.force_open(self.webhook.pk, now=self.now)
        else:
            self.model.reset()
            breaker.reset(self.webhook.pk, now=self.now)

    @invariant()
    def agrees_with_the_model(self):
        row = CircuitBreaker.objects.get(webhook=self.webhook)
        assert row.state == self.model.state
        assert row.half_open_in_flight == self.model.in_flight
        assert row.half_open_in_flight <= row.half_open_max_probes
        if row.state == "open":
            assert breaker.cooldown_remaining(row, now=self.now) == max(
                0.0, PARAMS["cooldown_seconds"] - (self.now - row.opened_at).total_seconds()
            )


@pytest.mark.django_db
def test_it_behaves_like_the_reference_model():
    django_rq.get_connection("default").flushdb()
    BreakerMachine.TestCase.settings = hsettings(
        max_examples=150, stateful_step_count=50, deadline=None, derandomize=True
    )
    run_state_machine_as_test(BreakerMachine, settings=BreakerMachine.TestCase.settings)
