"""Small presentation helpers: server-rendered SVG sparkline, durations, JSON, tones."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal

from django import template
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from clayops import selectors

register = template.Library()


@register.simple_tag
def sparkline(
    values, width: int = 240, height: int = 40, label: str = "Success rate per minute, last hour"
) -> SafeString:
    """Inline SVG of a series (0-100 scale, or the series' own maximum if larger); None is a gap."""
    values = list(values or [])
    known = [v for v in values if v is not None]
    if not known:
        return format_html(
            '<svg class="spark" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{l}: '
            'no traffic"><title>{l}: no traffic</title>'
            '<line x1="0" y1="{y}" x2="{w}" y2="{y}" class="spark-none"/></svg>',
            w=width,
            h=height,
            l=label,
            y=height - 2,
        )
    top = max(100.0, max(known))
    step = width / max(1, len(values) - 1)
    segments: list[list[str]] = [[]]
    for i, value in enumerate(values):
        if value is None:
            if segments[-1]:
                segments.append([])
            continue
        y = (height - 3) - (float(value) / top) * (height - 6)
        segments[-1].append(f"{i * step:.1f},{y:.1f}")
    paths = "".join(
        f'<polyline points="{" ".join(s)}"/>' if len(s) > 1 else _dot(s[0], width) for s in segments if s
    )
    last = known[-1]
    summary = f"{label}: latest {last:.0f}, lowest {min(known):.0f}"
    if len(known) < FEW_POINTS:  # the first minutes: a dot or two, and say why the line is short
        summary += " (collecting data)"
        paths += format_html(
            '<text x="4" y="{y}" class="spark-note">collecting data…</text>', y=height // 2 + 4
        )
    return format_html(
        '<svg class="spark" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{s}">'
        "<title>{s}</title>{p}</svg>",
        w=width,
        h=height,
        s=summary,
        p=SafeString(paths),
    )


FEW_POINTS = 3


def _dot(point: str, width: int) -> str:
    """A lone point as a dot kept inside the box (the latest minute sits on its right edge)."""
    x, y = (float(v) for v in point.split(","))
    return f'<circle cx="{min(max(x, 3.0), width - 3.0):.1f}" cy="{y:.1f}" r="2.5"/>'


@register.filter
def duration(seconds) -> str:
    """42 → "42 s", 125 → "2 min 5 s", 7260 → "2 h 1 min"."""
    if seconds is None or seconds == "":
        return "–"
    seconds = int(round(float(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {sec} s" if sec else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


@register.filter
def until(when: datetime | None) -> float:
    """Seconds from now to `when` (0 if past)."""
    if when is None:
        return 0
    return max(0.0, (when - timezone.now()).total_seconds())


@register.filter
def epoch_ms(when: datetime | None) -> str:
    return "" if when is None else str(int(when.timestamp() * 1000))


@register.filter
def pretty_json(value) -> str:
    if value in (None, "", {}, []):
        return ""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


@register.filter
def detail_items(detail) -> list[tuple[str, object]]:
    """An audit entry's detail for one line: empty values left out, {"from", "to"} as "a → b"."""
    if not isinstance(detail, dict):
        return []
    items = []
    for key, value in detail.items():
        if value in (None, "", [], {}):
            continue
        if isinstance(value, dict) and set(value) == {"from", "to"}:
            value = f"{value['from']} → {value['to']}"
        items.append((key, value))
    return items


@register.filter
def credits(value) -> str:
    """Credits with at most two decimals and thousands separators: 1234.50 → "1,234.5"."""
    if value is None:
        return "–"
    value = Decimal(value).quantize(Decimal("0.01"))
    text = f"{value:,.2f}".rstrip("0").rstrip(".")
    return text


@register.filter
def lead_tone(state: str) -> str:
    return selectors.LEAD_TONES.get(state, "")


@register.filter
def dlq_tone(state: str) -> str:
    return selectors.DLQ_TONES.get(state, "")


@register.filter
def circuit_tone(state: str) -> str:
    return selectors.CIRCUIT_WORDS.get(state, ("", "", "warn"))[2]


@register.filter
def circuit_label(state: str) -> str:
    return selectors.CIRCUIT_WORDS.get(state, (state, "", ""))[0]


@register.filter
def humanize_state(state: str) -> str:
    return str(state).replace("_", " ")
