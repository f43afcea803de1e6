"""Test builders: one way to make each model a test needs, instead of a copy per test file.

Plain keyword functions (no factory_boy): each saves one row, fills what the model requires with the
values tests expect (the defaults are those of conftest's `budget`, `workspace`, `webhook`, `viewer`,
`operator` fixtures), and passes any other field through. A builder makes a missing parent itself:
`make_webhook()` alone gives a webhook in a fresh workspace with its own budget.

Numbered leads (`make_lead(3)`, `make_leads(n)`) are the person p3@acme3.com at acme3.com of
"Acme 3 Inc"; a lead without a number holds only the fields given. Fingerprints are unique per
process, so builders may be called any number of times in one test.
"""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from clayops import provisioning
from clayops.models import CircuitBreaker, CreditBudget, DeadLetter, Lead, LeadImport, Webhook, Workspace

_serial = itertools.count(1)


def make_budget(
    *, name: str = "test", daily_limit: Decimal | str = Decimal("1000"), **kw: Any
) -> CreditBudget:
    return CreditBudget.objects.create(name=name, daily_limit=Decimal(daily_limit), **kw)


def make_workspace(
    *, name: str = "acme", budget: CreditBudget | None = None, rate_limit: float = 0, **kw: Any
) -> Workspace:
    """rate_limit 0 (unlimited): unit tests never wait for tokens. Without a budget, a new one of its name."""
    if budget is None:
        budget = make_budget(name=name)
    return Workspace.objects.create(name=name, budget=budget, rate_limit=rate_limit, **kw)


def make_webhook(
    *,
    workspace: Workspace | None = None,
    name: str = "people",
    url: str | None = None,
    token: str = "tok-123",
    breaker: bool | dict[str, Any] = True,
    **kw: Any,
) -> Webhook:
    """A webhook to a Clay table t_<name> on a closed port, with its closed breaker.

    breaker: True for the default settings, a dict of CircuitBreaker fields, False for none (the
    breaker service then creates it on first use).
    """
    if workspace is None:
        workspace = make_workspace()
    hook = Webhook.objects.create(
        workspace=workspace,
        name=name,
        url=url or f"http://127.0.0.1:9/v3/sources/webhook/t_{name}",
        token=token,
        **kw,
    )
    if breaker is not False:
        CircuitBreaker.objects.create(webhook=hook, **(breaker if isinstance(breaker, dict) else {}))
    return hook


def _fingerprint() -> str:
    return f"lead-{next(_serial)}"


def _numbered(i: int) -> dict[str, Any]:
    email, domain = f"p{i}@acme{i}.com", f"acme{i}.com"
    return {
        "email": email,
        "domain": domain,
        "company": f"Acme {i} Inc",
        "row": {"email": email, "domain": domain, "first_name": f"P{i}"},
    }


def _lead(i: int | None, webhook: Webhook | None, state: str, fields: dict[str, Any]) -> Lead:
    values = _numbered(i) if i is not None else {}
    values.update(fields)
    values.setdefault("row", {"email": values["email"]} if values.get("email") else {})
    values.setdefault("fingerprint", _fingerprint())
    return Lead(webhook=webhook, state=state, **values)


def make_lead(
    i: int | None = None, *, webhook: Webhook | None = None, state: str = Lead.State.QUEUED, **fields: Any
) -> Lead:
    """Lead number i (see the module's docstring), or without i one holding only `fields`
    (its row is {"email": email} when an email is given, else {}). Any field may be given."""
    lead = _lead(i, webhook, state, fields)
    lead.save(force_insert=True)
    return lead


def make_leads(
    n: int, *, webhook: Webhook | None = None, state: str = Lead.State.QUEUED, **fields: Any
) -> list[Lead]:
    """Leads number 0 .. n-1, in one INSERT; returned in that order, with their ids."""
    return Lead.objects.bulk_create([_lead(i, webhook, state, dict(fields)) for i in range(n)])


def make_dead_letter(
    i: int = 0,
    *,
    webhook: Webhook | None = None,
    lead: Lead | None = None,
    error: str | None = None,
    error_class: str = "server_error",
    attempt_count: int = 0,
    **entry: Any,
) -> DeadLetter:
    """A pending DLQ entry (fields of DeadLetter in `entry`) for `lead`, or for a new dead lead
    number i: d{i}@x.com, row {"email", "note": "row i"}, with `attempt_count` attempts made."""
    if lead is None:
        email = f"d{i}@x.com"
        lead = make_lead(
            webhook=webhook,
            state=Lead.State.DEAD,
            email=email,
            row={"email": email, "note": f"row {i}"},
            attempt_count=attempt_count,
        )
    return DeadLetter.objects.create(
        lead=lead,
        webhook=webhook,
        error=f"HTTP 500 #{i}" if error is None else error,
        error_class=error_class,
        **entry,
    )


def make_dead_letters(n: int, *, webhook: Webhook | None = None, **kw: Any) -> list[DeadLetter]:
    """Entries 0 .. n-1 of make_dead_letter, all with the same keyword arguments."""
    return [make_dead_letter(i, webhook=webhook, **kw) for i in range(n)]


def make_lead_import(
    *, filename: str = "leads.csv", state: str = LeadImport.State.DONE, **kw: Any
) -> LeadImport:
    """An import's row only (no stored file): for pages that list imports."""
    return LeadImport.objects.create(filename=filename, state=state, **kw)


def make_user(username: str, *, password: str = "pw-test-1", role: str | None = None, **kw: Any):
    """A user; role is a group of clayops.provisioning (VIEWERS, OPERATORS), None for no role."""
    user = get_user_model().objects.create_user(username, password=password, **kw)
    if role is not None:
        provisioning.ensure_roles()
        user.groups.add(Group.objects.get(name=role))
    return user
