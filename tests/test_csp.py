"""The Content-Security-Policy (issue 10): strict on every page; the browser tests (tests/browser/)
fail on any console error, so a page that needs an inline script or style under it fails there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings


@pytest.mark.parametrize("url", ["/login/", "/", "/leads/", "/dlq/", "/imports/", "/audit/"])
def test_every_page_carries_a_strict_policy(client, operator, url):
    client.force_login(operator)
    policy = client.get(url)["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";") if part.strip())
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["object-src"] == "'none'" and directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy


def test_no_template_has_an_inline_script_handler_or_style():
    """What the policy would block: <script> with a body, on*= handlers, style= attributes, hx-on."""
    offenders = []
    for path in Path(settings.BASE_DIR, "templates").rglob("*.html"):
        text = path.read_text()
        for pattern in (r"<script(?![^>]*\bsrc=)[^>]*>", r"\son[a-z]+\s*=", r"\sstyle\s*=", r"hx-on"):
            offenders += [f"{path.name}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert offenders == []


def test_htmx_runs_without_eval_and_without_injected_styles(client, operator):
    client.force_login(operator)
    page = client.get("/").content.decode()
    assert '"includeIndicatorStyles": false' in page and '"allowEval": false' in page
