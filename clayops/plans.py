"""Presets per Clay plan for the "Connect Clay" page: the workspace's rate (rows/s) and burst, its
hourly row cap, the webhook's lifetime row cap, and the default daily credit budget.

Which values are Clay's and which are ours (see "Clay facts the code relies on" in
docs/ARCHITECTURE.md):

- PUBLISHED by Clay for a table's webhook source, the same on every plan: **10 records/s per
  workspace with bursts of 20** (`RATE_PER_SECOND`, `BURST`), and **50,000 rows per webhook over its
  lifetime** (`ROW_CAP`). They are also the model defaults (Workspace.rate_limit / burst,
  Webhook.row_cap).
- ASSUMPTIONS (Clay publishes no per-plan figure we could cite): the hourly row caps below. Clay
  documents a per-second limit for webhooks, not an hourly one, so the paid plans get no hourly cap;
  the Free plan gets a cautious 500 rows/hour so a trial workspace trickles instead of bursting. An
  Enterprise workspace may have limits negotiated with Clay: the preset starts from the published
  ones and the operator types theirs. Every preset value can be changed in the form and later in the
  admin; a 429 from Clay still pauses the workspace whatever is set here.
- OURS: the default daily credit budget (`DEFAULT_DAILY_LIMIT`) and credits per row
  (`DEFAULT_CREDITS_PER_ROW`, the model default). The budget must pay for the README's sample
  (`docs/sample-leads.csv`, 200 rows) at the default estimate: 200 x 6 = 1,200 credits, plus a
  quarter for resends an uncertain answer may cost (both sends are booked): 1,500.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

# Clay's published webhook-source limits (the same for every plan).
RATE_PER_SECOND = 10.0
BURST = 20
ROW_CAP = 50_000

# Ours: see the module docstring.
SAMPLE_ROWS = 200  # docs/sample-leads.csv, the README's first run
DEFAULT_CREDITS_PER_ROW = Decimal("6")
DEFAULT_DAILY_LIMIT = Decimal("1500")
DEFAULT_PLAN = "pro"


@dataclass(frozen=True)
class Plan:
    key: str
    label: str
    rate_limit: float  # rows/s for the whole workspace
    burst: int
    hourly_cap: int | None  # rows/hour for the whole workspace; None: no hourly cap
    row_cap: int  # lifetime rows per webhook
    note: str

    def values(self) -> dict[str, float | int | None]:
        return {
            "rate_limit": self.rate_limit,
            "burst": self.burst,
            "hourly_cap": self.hourly_cap,
            "row_cap": self.row_cap,
        }


PLANS: dict[str, Plan] = {
    plan.key: plan
    for plan in (
        Plan(
            "free",
            "Free / trial",
            RATE_PER_SECOND,
            BURST,
            500,  # ASSUMPTION: cautious; Clay publishes no hourly figure
            ROW_CAP,
            "Clay's published webhook limits; the 500 rows/hour cap is a cautious assumption, not Clay's.",
        ),
        Plan(
            "starter",
            "Starter",
            RATE_PER_SECOND,
            BURST,
            None,  # ASSUMPTION: no hourly limit published
            ROW_CAP,
            "Clay's published webhook limits; no hourly cap (none is published).",
        ),
        Plan(
            "explorer",
            "Explorer",
            RATE_PER_SECOND,
            BURST,
            None,  # ASSUMPTION: no hourly limit published
            ROW_CAP,
            "Clay's published webhook limits; no hourly cap (none is published).",
        ),
        Plan(
            "pro",
            "Pro",
            RATE_PER_SECOND,
            BURST,
            None,  # ASSUMPTION: no hourly limit published
            ROW_CAP,
            "Clay's published webhook limits; no hourly cap (none is published).",
        ),
        Plan(
            "enterprise",
            "Enterprise",
            RATE_PER_SECOND,  # ASSUMPTION: start from the published limits; type yours if Clay raised them
            BURST,
            None,
            ROW_CAP,
            "Starts from Clay's published limits: enter the ones agreed with Clay if they are higher.",
        ),
    )
}


def get(key: str | None) -> Plan:
    """The plan of that key, or the default plan for an unknown or empty key."""
    return PLANS.get(key or "", PLANS[DEFAULT_PLAN])


def choices() -> list[tuple[str, str]]:
    return [(plan.key, plan.label) for plan in PLANS.values()]
