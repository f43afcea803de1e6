"""Sending a group's requests: at most CLAYOPS_SEND_CONCURRENCY in flight, on threads that only do
HTTP (one shared httpx pool; every database write stays on the job's thread and connection), each
request taking the workspace's rate-limit token just before it goes out."""

from __future__ import annotations

import math
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from .. import breaker, budget, ratelimit
from ..client import SendResult, encode, get_client
from ..contract import LEAD_ID_FIELD, SEND_ID_FIELD
from ..enqueue import enqueue_leads
from ..models import CircuitBreaker, Lead, Webhook
from .outcomes import Group, apply_results
from .routing import Send, trim
from .transitions import S, set_claimed, unsend


@dataclass
class Prepaid:
    """A pump's allowance (clayops.delivery.pump): it saw this many rate-limit tokens free before
    the guards ran. The Sender takes them (at most one per request) just before its first launch,
    launches one request per token without waiting, and leaves in `left` the ones it did not use."""

    allowance: int
    left: int = 0


def pace_shape(workspace) -> tuple[int, float]:
    """The bucket's burst and the window of grants, as the Sender uses them.

    Of Clay's burst, CLAYOPS_RATE_HEADROOM tokens stay unused, and so do the tokens of
    CLAYOPS_RATE_JITTER_SECONDS at the rate (at most a quarter of the burst): a request reaches Clay
    a little after its token was taken, and when one batch of requests is late by that much and the
    next one is not, Clay's own bucket sees them closer together than ours did. Grants are spread
    over the same little more than a second, so late requests still reach Clay with no one-second
    window above the burst.
    """
    jitter = settings.CLAYOPS_RATE_JITTER_SECONDS
    usable = workspace.burst - settings.CLAYOPS_RATE_HEADROOM
    reserve = min(math.ceil(workspace.rate_limit * jitter), usable // 4) if workspace.rate_limit > 0 else 0
    return max(1, usable - max(0, reserve)), 1.0 + jitter


class Sender:
    """Sends a group's requests, at most CLAYOPS_SEND_CONCURRENCY in flight, on worker threads that
    only do HTTP (every database write stays on the job's thread and connection).

    Before each launch it takes the workspace's rate-limit token (so the spacing Clay sees is the
    spacing of the tokens) and marks the leads as sent (submitted_at: after this, a dead worker's
    leads are uncertain, not resent blindly). Results are applied in bulk as they arrive. It stops
    launching when the rate limit cannot be had in time, or when the webhook stops taking rows
    (breaker no longer closed, a pause, a 404): the requests not sent go back to the queue, where
    the next job's guards defer or fail them over.
    """

    RECHECK_SECONDS = 0.5
    GATHER_SECONDS = 0.02

    def __init__(self, group: Group, rows: dict[int, dict], prepaid: Prepaid | None = None):
        self.prepaid = prepaid
        self.group = group
        self.webhook = group.webhook
        self.workspace = group.webhook.workspace
        self.token = group.token
        self.rows = rows
        self.reservations = group.reservations
        self.counts: dict[str, int] = {}
        self.checked = time.monotonic()
        # Leads claimed but not yet sent must be launched well before the stuck-lead reaper
        # (CLAYOPS_STUCK_SUBMITTING_SECONDS) or the reservation reaper (its TTL) would take them
        # back; past half of the shorter one, the rest go back to the queue.
        window = min(settings.CLAYOPS_STUCK_SUBMITTING_SECONDS, settings.CLAYOPS_RESERVATION_TTL_SECONDS)
        self.deadline = time.monotonic() + window / 2

    def run(self, sends: list[Send]) -> dict[str, int]:
        self.concurrency = max(1, settings.CLAYOPS_SEND_CONCURRENCY)
        # Paced (a rate limit is set): one launch per token, so the tokens' spacing is the sends'. A
        # pump's tokens were all granted at once (Prepaid): its requests go out together, marked sent
        # in one statement.
        paced = self.workspace.rate_limit and self.workspace.rate_limit > 0
        self.per_launch = 1 if paced and self.prepaid is None else self.concurrency
        self.pending = list(reversed(sends))
        self.stop: str | None = None
        if self.prepaid is not None:
            self._take_allowance(len(sends))
        self.in_flight: dict[Future, Send] = {}
        if self.concurrency == 1:
            self._run_inline()
        else:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="clayops-send") as pool:
                self._run_pooled(pool)
        if self.pending:
            self._give_back(self.pending, self.stop or "stopped")
        return self.counts

    def _take_allowance(self, requests: int) -> None:
        burst, window = pace_shape(self.workspace)
        assert self.prepaid is not None
        self.prepaid.left, _ = ratelimit.take_up_to(
            self.workspace.pk,
            rate=self.workspace.rate_limit,
            burst=burst,
            want=min(self.prepaid.allowance, requests),
            goal=1,
            window=window,
        )

    def _next_launch(self) -> list[Send]:
        """The requests that may go now (each having taken its rate token), marked as sent."""
        launch: list[Send] = []
        while (
            self.stop is None
            and self.pending
            and len(launch) < self.per_launch
            and len(self.in_flight) + len(launch) < self.concurrency
        ):
            self.stop = self._may_launch(probe=self.pending[-1].probe)
            if self.stop is None:
                launch.append(self.pending.pop())
        return self._mark_sent(launch) if launch else []

    def _finish(self, finished: list[Send]) -> None:
        self._add(apply_results(self.group, finished))
        if self.stop is None and any(not (send.result and send.result.accepted) for send in finished):
            self.stop = self._stopped()

    def _run_inline(self) -> None:
        while self.pending and self.stop is None:
            launch = self._next_launch()
            for send in launch:
                send.result = self._post(send)
            self._finish(launch)

    def _run_pooled(self, pool: ThreadPoolExecutor) -> None:
        def top_up() -> None:
            for send in self._next_launch():
                self.in_flight[pool.submit(self._post, send)] = send

        # Answers are written in bulk: those that come within GATHER_SECONDS of the first one not yet
        # written (or a full round of them) go together, one set of statements instead of one per
        # answer. A failure is written at once (it may stop the launches), and so is the last answer.
        held: list[Send] = []
        held_since = 0.0
        try:
            while True:
                top_up()
                if not self.in_flight:
                    if held:
                        batch, held = held, []
                        self._finish(batch)
                        continue
                    if self.stop is not None or not self.pending:
                        return
                    continue
                more = self.stop is None and self.pending and len(self.in_flight) < self.concurrency
                timeout: float | None = 0 if more else None
                if held:
                    left = max(0.0, held_since + self.GATHER_SECONDS - time.monotonic())
                    timeout = left if timeout is None else min(timeout, left)
                done, _ = wait_for(self.in_flight, timeout=timeout, return_when=FIRST_COMPLETED)
                finished = []
                for future in done:
                    send = self.in_flight.pop(future)
                    send.result = future.result()
                    finished.append(send)
                ok = all(send.result and send.result.accepted for send in finished)
                if finished and not held:
                    held_since = time.monotonic()
                held += finished
                if ok:
                    top_up()  # all went well: the next requests go out before these are written
                if held and (
                    not ok
                    or len(held) >= self.concurrency
                    or time.monotonic() - held_since >= self.GATHER_SECONDS
                ):
                    batch, held = held, []
                    self._finish(batch)
        finally:
            if held:  # an error on the way out (the database): what came back is still written
                self._finish(held)

    def _may_launch(self, *, probe: bool) -> str | None:
        """None when the next request may go now; else why not (after waiting for a rate token)."""
        if time.monotonic() - self.checked >= self.RECHECK_SECONDS:
            reason = self._stopped()
            if reason is not None and not probe:
                return reason
        left = self.deadline - time.monotonic()
        if left <= 0:
            return "rate"
        if self.prepaid is not None:  # a pump's tokens: never wait on a worker for more
            if self.prepaid.left <= 0:
                return "rate"
            self.prepaid.left -= 1
            return None
        workspace = self.workspace
        burst, window = pace_shape(workspace)
        if not ratelimit.acquire_blocking(  # no Redis call when no rate limit is set
            workspace.pk,
            rate=workspace.rate_limit,
            burst=burst,
            window=window,
            n=1,
            max_wait=min(settings.CLAYOPS_RATE_WAIT_SECONDS, left),
        ):
            return "rate"
        return None

    def _stopped(self) -> str | None:
        """Re-read whether the webhook still takes ordinary calls (one query)."""
        self.checked = time.monotonic()
        row = (
            Webhook.objects.filter(pk=self.webhook.pk)
            .values_list(
                "is_active", "broken_reason", "paused_until", "workspace__paused_until", "breaker__state"
            )
            .first()
        )
        if row is None:
            return "webhook deleted"
        active, broken, paused, workspace_paused, state = row
        now = timezone.now()
        if not active or broken:
            return "webhook not active"
        if (paused and paused > now) or (workspace_paused and workspace_paused > now):
            return "paused"
        if state not in (None, CircuitBreaker.State.CLOSED):
            return f"circuit {state}"
        return None

    def _mark_sent(self, launch: list[Send]) -> list[Send]:
        """Mark the leads as sent, by claim token; returns the requests still ours to send.

        A lead the stuck-lead reaper took back (the job was slower than it allows) is no longer ours:
        it is dropped from its request here, so it can never be sent twice.
        """
        now = timezone.now()
        ids = [pk for send in launch for pk in send.chunk.lead_ids]
        if set_claimed(ids, self.token, submitted_at=now, state_changed_at=now) < len(ids):
            ours = set(
                Lead.objects.filter(pk__in=ids, state=S.SUBMITTING, claim_token=self.token).values_list(
                    "pk", flat=True
                )
            )
            launch = trim(self.webhook, launch, keep=ours)
        for send in launch:
            send.started = now
        return launch

    def _post(self, send: Send) -> SendResult:
        rows = [
            {**self.rows[pk], LEAD_ID_FIELD: pk, SEND_ID_FIELD: self.reservations.get(pk)}
            for pk in send.chunk.lead_ids
        ]
        body = encode(rows if self.webhook.batch_size > 1 else rows[0])
        return get_client().send(self.webhook.url, self.webhook.headers(), body)

    def _give_back(self, pending: list[Send], reason: str) -> None:
        """Requests never launched: credits, row-cap slots and probe slots back; leads back to the queue."""
        ids = [pk for send in pending for pk in send.chunk.lead_ids]
        budget.release_many([self.reservations[pk] for pk in ids if pk in self.reservations])
        unsend(self.webhook, len(ids))
        for send in pending:
            if send.probe:
                breaker.cancel_probe(self.webhook.pk)
        set_claimed(ids, self.token, state=S.QUEUED, submitted_at=None)
        enqueue_leads(ids)
        self._add({"rate_wait" if reason == "rate" else "requeued": len(ids)})

    def _add(self, more: dict[str, int]) -> None:
        for key, value in more.items():
            self.counts[key] = self.counts.get(key, 0) + value
