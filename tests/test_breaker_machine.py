"""The real breaker (database rows + Redis window) driven by hypothesis against a plain reference model.

Rules: allow, a call finishing (success or failure, probe or not), cancel_probe, the clock moving
(`now` is passed, no sleeping), force_open and reset. After every step the row must agree with the
model (state, counters, the sequence of CircuitEvents), half-open never has more probes in flight
than allowed, and an open breaker never admits before its cooldown has passed.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from clayops import breaker
from clayops.models import CircuitBreaker, CircuitEvent
from tests.factories import make_webhook, make_workspace

PARAMS = {
    "failure_threshold": 3,
    "failure_rate_threshold": 50,
    "window_seconds": 60,  # longer than the cooldown, as by default: old calls outlive an outage
    "minimum_calls": 4,
    "cooldown_seconds": 30,
    "half_open_max_probes": 2,
    "success_threshold": 2,
}
OUTCOMES = st.booleans()
STUCK_AFTER = timedelta(seconds=max(PARAMS["cooldown_seconds"], 60))
_ids = itertools.count()


class Model:
    """What the breaker should do, written as plainly as possible."""

    def __init__(self):
        self.state = "closed"
        self.opened_at: datetime | None = None
        self.consecutive = 0
        self.in_flight = 0
        self.successes = 0
        self.probe_activity: datetime | None = None  # last probe admitted or answered (stuck detection)
        self.calls: list[tuple[int, bool]] = []  # (second, ok) of calls made while closed
        self.events: list[tuple[str, str]] = []

    def _move(self, to_state: str) -> None:
        self.events.append((self.state, to_state))
        self.state = to_state

    def _open(self, now: datetime) -> None:
        self._move("open")
        self.opened_at, self.in_flight, self.successes = now, 0, 0

    def _close(self) -> None:
        self._move("closed")
        self.opened_at, self.consecutive, self.in_flight, self.successes = None, 0, 0, 0
        self.calls = []

    def allow(self, now: datetime) -> tuple[bool, bool]:
        if self.state == "closed":
            return True, False
        if self.state == "forced_open":
            return False, False
        if self.state == "open":
            if now - self.opened_at < timedelta(seconds=PARAMS["cooldown_seconds"]):
                return False, False
            self._move("half_open")
            self.in_flight, self.successes, self.probe_activity = 0, 0, now
        elif self.in_flight > 0 and self.probe_activity < now - STUCK_AFTER:
            self.events.append(("half_open", "half_open"))  # slots of dead probes freed
            self.in_flight, self.probe_activity = 0, now
        if self.in_flight < PARAMS["half_open_max_probes"]:
            self.in_flight += 1
            self.probe_activity = now
            return True, True
        return False, False

    def _window(self, now: datetime) -> tuple[int, int]:
        second = int(now.timestamp())
        live = [ok for at, ok in self.calls if at > second - PARAMS["window_seconds"]]
        return sum(live), len(live) - sum(live)

    def success(self, now: datetime, probe: bool) -> None:
        if probe and self.state == "half_open":
            self.in_flight = max(0, self.in_flight - 1)
            self.successes += 1
            self.probe_activity = now
            if self.successes >= PARAMS["success_threshold"]:
                self._close()
            return
        if self.state == "closed":  # results arriving in other states are stale: ignored
            self.calls.append((int(now.timestamp()), True))
            self.consecutive = 0

    def failure(self, now: datetime, probe: bool) -> None:
        if probe and self.state == "half_open":
            self._open(now)
            return
        if self.state != "closed":
            return
        self.consecutive += 1
        self.calls.append((int(now.timestamp()), False))
        ok, bad = self._window(now)
        calls = ok + bad
        if self.consecutive >= PARAMS["failure_threshold"] or (
            calls >= PARAMS["minimum_calls"] and bad * 100 >= PARAMS["failure_rate_threshold"] * calls
        ):
            self._open(now)

    def cancel(self) -> None:
        if self.state == "half_open" and self.in_flight > 0:
            self.in_flight -= 1

    def force_open(self, now: datetime) -> None:
        if self.state != "forced_open":
            self._move("forced_open")
            self.opened_at, self.in_flight, self.successes = now, 0, 0

    def reset(self) -> None:
        if self.state == "closed":
            self.consecutive, self.in_flight, self.successes, self.calls = 0, 0, 0, []
        else:
            self._close()


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        n = next(_ids)
        workspace = make_workspace(name=f"machine-{n}")  # with its own budget
        self.webhook = make_webhook(workspace=workspace, name=f"m{n}", breaker=PARAMS)
        self.now = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=n)  # own window keys per example
        self.model = Model()
        self.outstanding: list[bool] = []  # admitted calls not finished yet: is each a probe?

    def teardown(self):
        budget = self.webhook.workspace.budget
        self.webhook.delete()
        budget.workspaces.all().delete()
        budget.delete()

    @initialize(start=st.sampled_from(["closed", "open", "half_open", "half_open_probe_died"]))
    def start_in(self, start):
        """Begin some examples already open or half-open (through real calls), to explore further."""
        if start == "closed":
            return
        for _ in range(PARAMS["failure_threshold"]):
            self.call(ok=False)
        if start.startswith("half_open"):
            self.tick(PARAMS["cooldown_seconds"])
            self.admit()
        if start == "half_open_probe_died":
            self.drop_probe(dies=True)

    def _finish(self, probe: bool, ok: bool) -> None:
        if ok:
            self.model.success(self.now, probe)
            breaker.record_success(self.webhook.pk, probe=probe, now=self.now)
        else:
            self.model.failure(self.now, probe)
            breaker.record_failure(self.webhook.pk, probe=probe, reason="HTTP 503", now=self.now)

    def _allow(self) -> bool | None:
        """Ask like a worker would; the probe flag of an admitted call, None if refused."""
        expected = self.model.allow(self.now)
        admission = breaker.allow(self.webhook.pk, now=self.now)
        assert (admission.allowed, admission.probe) == expected
        if not admission.allowed:
            assert admission.retry_in is None or admission.retry_in > 0
            return None
        return admission.probe

    @rule(ok=OUTCOMES)
    def call(self, ok):
        """A worker is admitted and Clay answers at once."""
        probe = self._allow()
        if probe is not None:
            self._finish(probe, ok)

    @rule()
    def admit(self):
        """A worker is admitted; its call stays out (other workers go on meanwhile)."""
        probe = self._allow()
        if probe is not None:
            self.outstanding.append(probe)

    @precondition(lambda self: self.outstanding)
    @rule(pick=st.integers(min_value=0, max_value=50), ok=OUTCOMES)
    def answer(self, pick, ok):
        """One of the calls still out gets its answer."""
        self._finish(self.outstanding.pop(pick % len(self.outstanding)), ok)

    @precondition(lambda self: any(self.outstanding))
    @rule(dies=st.booleans())
    def drop_probe(self, dies):
        """A probe never calls Clay: cancelled (budget refused it), or its worker was SIGKILLed."""
        self.outstanding.remove(True)
        if not dies:  # a dead worker cancels nothing: only the stuck-probe timeout frees its slot
            self.model.cancel()
            breaker.cancel_probe(self.webhook.pk)

    @rule(seconds=st.sampled_from([0.5, 1, 5, 29, 30, 31, 61]))
    def tick(self, seconds):
        self.now += timedelta(seconds=seconds)

    @rule(action=st.sampled_from(["force_open", "reset"] + ["nothing"] * 6))
    def operator(self, action):
        if action == "force_open":
            self.model.force_open(self.now)
            breaker.force_open(self.webhook.pk, now=self.now)
        elif action == "reset":
            self.model.reset()
            breaker.reset(self.webhook.pk, now=self.now)

    @invariant()
    def agrees_with_the_model(self):
        row = CircuitBreaker.objects.get(webhook=self.webhook)
        model = self.model
        assert row.state == model.state
        assert (row.half_open_in_flight, row.half_open_successes) == (model.in_flight, model.successes)
        assert row.consecutive_failures == model.consecutive
        assert row.opened_at == model.opened_at
        events = CircuitEvent.objects.filter(breaker=row).order_by("id").values_list("from_state", "to_state")
        assert list(events) == model.events

    @invariant()
    def half_open_never_exceeds_the_probe_limit(self):
        row = CircuitBreaker.objects.get(webhook=self.webhook)
        assert row.half_open_in_flight <= row.half_open_max_probes

    @invariant()
    def open_never_admits_before_the_cooldown(self):
        row = CircuitBreaker.objects.get(webhook=self.webhook)
        if row.state == "open" and self.now - row.opened_at < timedelta(seconds=row.cooldown_seconds):
            admission = breaker.allow(self.webhook.pk, now=self.now)  # read-only while cooling down
            assert not admission.allowed
            assert admission.retry_in == breaker.cooldown_remaining(row, now=self.now) > 0


def test_it_behaves_like_the_reference_model(db):
    run_state_machine_as_test(
        BreakerMachine, settings=hsettings(max_examples=80, stateful_step_count=40, deadline=None)
    )
