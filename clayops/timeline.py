"""Read side of the dashboard's Timeline page: what happened per time bucket, on one time axis.

For a range (the last hour in 1-minute buckets, the last day in 15-minute buckets, the last week in
2-hour buckets) it counts, per bucket:

- lead sends (`Attempt` rows, one per lead per request) by outcome (accepted, retry, 429, uncertain,
  dead), and over the whole range by error class;
- credits booked as spent: `CreditReservation.charged` of settled reservations, at the time the
  reservation was closed (`closed_at`: when `budget.settle`/`record_actual` settled it, or when a
  reservation released earlier was closed, if Clay charged it after all);
- DLQ inflow (`DeadLetter` rows created);

and lists the marks in the range: breaker transitions (`CircuitEvent`), pauses (pauses are not rows
of their own: a 429 answer pauses the workspace's webhooks, a 402 the workspace, both seen here as
the attempts with those error classes, one mark per webhook, class and run of consecutive buckets;
plus the end of a pause still on record in `Webhook.paused_until` / `Workspace.paused_until`) and
operator actions (`AuditEntry` rows with a user).

Every count is a GROUP BY in the database over the bucket: the minute (`TruncMinute`), or the hour
(day) plus the minute (hour) divided by 15 (2), in UTC, so the rows returned are bounded by
buckets × outcomes whatever the number of attempts. Marks are capped at MAX_MARKS per kind (newest
kept). Reads only; functions return plain dicts and lists (datetimes where a template formats them;
`as_json` turns them into epoch seconds and ISO strings).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Count, IntegerField, Max, Min, Q, QuerySet, Sum, Value
from django.db.models.functions import (
    Cast,
    ExtractHour,
    ExtractMinute,
    TruncDay,
    TruncHour,
    TruncMinute,
)
from django.utils import timezone

from .models import (
    Attempt,
    AuditEntry,
    CircuitEvent,
    CreditReservation,
    DeadLetter,
    Webhook,
    Workspace,
)

MAX_MARKS = 200  # per kind: breaker transitions, pauses, operator actions
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Range:
    name: str
    label: str
    span: timedelta
    step: timedelta
    step_label: str
    trunc: Any  # TruncMinute / TruncHour / TruncDay: the coarse part of the bucket
    extract: Any = None  # ExtractMinute / ExtractHour: the fine part, divided by `divisor`
    divisor: int = 1
    unit: timedelta = timedelta(0)  # what one unit of `extract` is

    @property
    def buckets(self) -> int:
        return int(self.span / self.step)


RANGES: dict[str, Range] = {
    "hour": Range(
        name="hour",
        label="Last hour",
        span=timedelta(hours=1),
        step=timedelta(minutes=1),
        step_label="1-minute",
        trunc=TruncMinute,
    ),
    "day": Range(
        name="day",
        label="Last day",
        span=timedelta(days=1),
        step=timedelta(minutes=15),
        step_label="15-minute",
        trunc=TruncHour,
        extract=ExtractMinute,
        divisor=15,
        unit=timedelta(minutes=1),
    ),
    "week": Range(
        name="week",
        label="Last week",
        span=timedelta(days=7),
        step=timedelta(hours=2),
        step_label="2-hour",
        trunc=TruncDay,
        extract=ExtractHour,
        divisor=2,
        unit=timedelta(hours=1),
    ),
}
DEFAULT_RANGE = "hour"

# Attempt outcomes in the order the page shows them, with their words (never colour alone).
OUTCOMES: list[tuple[str, str]] = [
    (Attempt.Outcome.ACCEPTED, "Accepted"),
    (Attempt.Outcome.RETRY, "Retry later"),
    (Attempt.Outcome.RATE_LIMITED, "Rate-limited (429)"),
    (Attempt.Outcome.UNCERTAIN, "Uncertain"),
    (Attempt.Outcome.DEAD, "Dead"),
]
OUTCOME_KEYS = [key for key, _ in OUTCOMES]
PAUSE_CLASSES = {
    "rate_limited": "429",  # retry.ErrorClass.RATE_LIMITED: the workspace's webhooks pause
    "payment_required": "402",  # retry.ErrorClass.PAYMENT: the workspace pauses
}
MARK_KINDS = {"breaker": ("B", "Breaker"), "pause": ("P", "Pause"), "operator": ("O", "Operator")}


class UnknownRange(ValueError):
    pass


def parse_range(value: str | None) -> Range:
    """The range named by `?range=`; none given is the last hour. Raises UnknownRange otherwise."""
    if value is None or value == "":
        return RANGES[DEFAULT_RANGE]
    try:
        return RANGES[value]
    except (KeyError, TypeError):
        raise UnknownRange(f"unknown range {value!r}: use one of {', '.join(RANGES)}") from None


def window(rng: Range, *, now: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the range: `rng.buckets` whole buckets (UTC-aligned), the last one holding `now`."""
    step = int(rng.step.total_seconds())
    seconds = int((now - EPOCH).total_seconds())
    last = EPOCH + timedelta(seconds=seconds - seconds % step)
    end = last + rng.step
    return end - rng.span, end


def _bucketed(
    qs: QuerySet, *, field: str, rng: Range, start: datetime, end: datetime, by: Iterable[str] = (), **agg
) -> list[tuple[datetime, dict[str, Any]]]:
    """GROUP BY (bucket, *by) over the rows whose `field` is in [start, end): [(bucket start, row)]."""
    parts: dict[str, Any] = {"_b0": rng.trunc(field, tzinfo=UTC)}
    if rng.extract is not None:
        # An integer division in SQL (both sides integers) on SQLite and PostgreSQL alike. The cast
        # because PostgreSQL's EXTRACT returns numeric.
        parts["_b1"] = Cast(rng.extract(field, tzinfo=UTC), IntegerField()) / Value(rng.divisor)
    rows = (
        qs.filter(**{f"{field}__gte": start, f"{field}__lt": end})
        .order_by()
        .values(*by, **parts)
        .annotate(**agg)
    )
    out = []
    for row in rows:
        at = row.pop("_b0")
        if at is None:
            continue
        if timezone.is_naive(at):
            at = at.replace(tzinfo=UTC)
        fine = row.pop("_b1", None)
        if fine is not None:
            at = at + rng.unit * (int(fine) * rng.divisor)
        out.append((at, row))
    return out


def _index(at: datetime, *, start: datetime, rng: Range) -> int | None:
    i = int((at - start) / rng.step)
    return i if 0 <= i < rng.buckets else None


def _credits(value: Any) -> float:
    return float(Decimal(str(value or 0)).quantize(Decimal("0.01")))


def _fill(buckets: list[dict[str, Any]], span: dict[str, Any]) -> None:
    """Sends by outcome, credits settled and DLQ inflow, each one GROUP BY per bucket."""
    start, rng = span["start"], span["rng"]
    sends = _bucketed(Attempt.objects.all(), field="started_at", by=["outcome"], n=Count("pk"), **span)
    for at, row in sends:
        i = _index(at, start=start, rng=rng)
        if i is None:
            continue
        buckets[i]["sends"] += row["n"]
        key = row["outcome"] if row["outcome"] in OUTCOME_KEYS else "other"
        buckets[i][key] += row["n"]

    settled = CreditReservation.objects.filter(state=CreditReservation.State.SETTLED, charged__isnull=False)
    for at, row in _bucketed(settled, field="closed_at", total=Sum("charged"), **span):
        i = _index(at, start=start, rng=rng)
        if i is not None:
            buckets[i]["credits"] = round(buckets[i]["credits"] + _credits(row["total"]), 2)

    for at, row in _bucketed(DeadLetter.objects.all(), field="created_at", n=Count("pk"), **span):
        i = _index(at, start=start, rng=rng)
        if i is not None:
            buckets[i]["dlq"] += row["n"]


def timeline(*, range_name: str = DEFAULT_RANGE, now: datetime | None = None) -> dict[str, Any]:
    """Everything the Timeline page shows for one range. See the module's docstring."""
    rng = parse_range(range_name)
    now = now or timezone.now()
    start, end = window(rng, now=now)
    n = rng.buckets
    buckets: list[dict[str, Any]] = [
        {
            "start": start + rng.step * i,
            "sends": 0,
            **{key: 0 for key in OUTCOME_KEYS},
            "other": 0,
            "credits": 0.0,
            "dlq": 0,
        }
        for i in range(n)
    ]
    span: dict[str, Any] = {"rng": rng, "start": start, "end": end}

    _fill(buckets, span)

    error_classes = [
        {"error_class": cls, "count": count}
        for cls, count in Attempt.objects.filter(started_at__gte=start, started_at__lt=end)
        .exclude(error_class="")
        .order_by()
        .values_list("error_class")
        .annotate(n=Count("pk"))
        .order_by("-n", "error_class")
    ]

    marks, truncated = _marks(rng=rng, start=start, end=end)
    totals = {key: sum(b[key] for b in buckets) for key in ["sends", *OUTCOME_KEYS, "other", "dlq"]}
    totals["credits"] = round(sum(b["credits"] for b in buckets), 2)
    return {
        "range": rng.name,
        "label": rng.label,
        "step_seconds": int(rng.step.total_seconds()),
        "step_label": rng.step_label,
        "start": start,
        "end": end,
        "now": now,
        "buckets": buckets,
        "totals": totals,
        "outcomes": [{"key": key, "label": label, "total": totals[key]} for key, label in OUTCOMES],
        "error_classes": error_classes,
        "marks": marks,
        "marks_truncated": truncated,
        "max_marks": MAX_MARKS,
        "empty": totals["sends"] == 0,
    }


def _marks(*, rng: Range, start: datetime, end: datetime) -> tuple[list[dict[str, Any]], bool]:
    """Breaker transitions, pauses and operator actions in [start, end), oldest first, labelled
    B1, P2, O3 … (kind letter, then the mark's number in the list)."""
    found: list[tuple[datetime, str, str]] = []
    truncated = False

    events = list(
        CircuitEvent.objects.filter(at__gte=start, at__lt=end)
        .select_related("breaker__webhook", "by")
        .order_by("-at", "-id")[: MAX_MARKS + 1]
    )
    truncated |= len(events) > MAX_MARKS
    for e in events[:MAX_MARKS]:
        by = f" (by {e.by})" if e.by else ""
        reason = f": {e.reason}" if e.reason else ""
        text = f"{e.breaker.webhook}: {_words(e.from_state)} → {_words(e.to_state)}{reason}{by}"
        found.append((e.at, "breaker", text))

    pauses = _pause_marks(rng=rng, start=start, end=end)
    truncated |= len(pauses) > MAX_MARKS
    found += sorted(pauses, key=lambda m: m[0], reverse=True)[:MAX_MARKS]

    entries = list(
        AuditEntry.objects.filter(at__gte=start, at__lt=end, user__isnull=False)
        .select_related("user")
        .order_by("-at", "-id")[: MAX_MARKS + 1]
    )
    truncated |= len(entries) > MAX_MARKS
    for a in entries[:MAX_MARKS]:
        times = f" ×{a.count}" if a.count != 1 else ""
        target = f" {a.target}" if a.target else ""
        found.append((a.at, "operator", f"{a.user}: {_words(a.action)}{target}{times}"))

    found.sort(key=lambda m: m[0])
    marks = []
    for number, (at, kind, text) in enumerate(found, start=1):
        letter, kind_label = MARK_KINDS[kind]
        label = f"{letter}{number}"
        marks.append({"at": at, "kind": kind, "kind_label": kind_label, "label": label, "text": text})
    return marks, truncated


def _pause_marks(*, rng: Range, start: datetime, end: datetime) -> list[tuple[datetime, str, str]]:
    """One mark per webhook, class and run of consecutive buckets with attempts Clay answered 429 or
    402 (each pauses sending), at the first such attempt; and the end of each pause on record that
    falls in the range."""
    rows = _bucketed(
        Attempt.objects.filter(error_class__in=list(PAUSE_CLASSES)),
        field="started_at",
        rng=rng,
        start=start,
        end=end,
        by=["webhook_id", "error_class"],
        first=Min("started_at"),
        last=Max("started_at"),
        n=Count("pk"),
    )
    hook_ids = {row["webhook_id"] for _, row in rows if row["webhook_id"] is not None}
    hooks = {
        pk: (name, workspace)
        for pk, name, workspace in Webhook.objects.filter(pk__in=hook_ids).values_list(
            "pk", "name", "workspace__name"
        )
    }
    # A storm of 429s answers in bucket after bucket: one mark per run of consecutive buckets.
    runs: list[dict[str, Any]] = []
    ordered = sorted(rows, key=lambda r: (r[1]["webhook_id"] or 0, r[1]["error_class"], r[0]))
    for bucket, row in ordered:
        last = runs[-1] if runs else None
        if (
            last is not None
            and (last["webhook_id"], last["error_class"]) == (row["webhook_id"], row["error_class"])
            and bucket - last["bucket"] == rng.step
        ):
            last.update(bucket=bucket, n=last["n"] + row["n"], last=max(last["last"], row["last"]))
            last["first"] = min(last["first"], row["first"])
        else:
            runs.append({**row, "bucket": bucket})
    marks = []
    for run in runs:
        name, workspace = hooks.get(run["webhook_id"], ("a deleted webhook", "its workspace"))
        sends = f"{run['n']} send" + ("s" if run["n"] != 1 else "")
        if run["last"] - run["first"] >= timedelta(seconds=1):
            sends += f" until {timezone.localtime(run['last']):%H:%M:%S}"
        if PAUSE_CLASSES[run["error_class"]] == "429":
            text = f"{name}: Clay answered 429 ({sends}); the webhooks of {workspace} pause for Retry-After"
        else:
            text = f"{name}: Clay answered 402 ({sends}); workspace {workspace} pauses (credits exhausted)"
        marks.append((run["first"], "pause", text))
    in_range = Q(paused_until__gte=start, paused_until__lt=end)
    for name, until in Webhook.objects.filter(in_range).values_list("name", "paused_until"):
        marks.append((until, "pause", f"{name}: pause (429 Retry-After) ends"))
    for name, until, reason in Workspace.objects.filter(in_range).values_list(
        "name", "paused_until", "pause_reason"
    ):
        why = f" ({reason})" if reason else ""
        marks.append((until, "pause", f"workspace {name}: pause{why} ends"))
    return marks


def _words(code: str) -> str:
    return code.replace("_", " ")


def _epoch(at: datetime) -> float:
    return round((at - EPOCH).total_seconds(), 3)


def as_json(data: dict[str, Any]) -> dict[str, Any]:
    """The chart's data, column by column (uPlot's shape): x in epoch seconds, one list per series."""
    buckets = data["buckets"]
    series = {key: [b[key] for b in buckets] for key in ["sends", *OUTCOME_KEYS, "other", "credits", "dlq"]}
    return {
        "range": data["range"],
        "label": data["label"],
        "step_seconds": data["step_seconds"],
        "start": data["start"].isoformat(),
        "end": data["end"].isoformat(),
        "x": [int(_epoch(b["start"])) for b in buckets],
        "series": series,
        "outcomes": data["outcomes"],
        "totals": data["totals"],
        "error_classes": data["error_classes"],
        "marks": [
            {
                "t": _epoch(m["at"]),
                "at": m["at"].isoformat(),
                "kind": m["kind"],
                "kind_label": m["kind_label"],
                "label": m["label"],
                "text": m["text"],
            }
            for m in data["marks"]
        ],
        "marks_truncated": data["marks_truncated"],
        "empty": data["empty"],
    }
