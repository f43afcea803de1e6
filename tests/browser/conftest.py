"""Browser tests: Playwright's sync API driving Debian's Chromium against pytest-django's live server.

Never `playwright install`: the browser is /usr/bin/chromium (manage.py runtests installs it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.test import Client

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def pytest_collection_modifyitems(items):
    # Slow as well: each package run starts a Chromium process (`runtests -m "not slow"` skips them).
    for item in items:
        if "tests/browser/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="package")
def _async_unsafe_allowed():
    """Playwright's sync API runs an event loop in this thread, and Django refuses ORM calls from a
    thread with a running loop unless told it is fine (it is: the calls are ordinary synchronous ones).
    Only for this package: processes started by other tests must not inherit it (`check --deploy`
    flags it), and the loop stops with the browser when the package ends."""
    old = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    yield
    if old is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = old


@pytest.fixture(scope="package")
def browser(_async_unsafe_allowed):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (manage.py runtests installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(autouse=True)
def _transactional(_async_unsafe_allowed, transactional_db):
    """The live server runs in another thread: data must be committed for it to see it."""


@pytest.fixture
def context(browser, live_server):
    ctx = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 800})
    ctx.set_default_timeout(8000)
    yield ctx
    ctx.close()


def _unexpected(msg) -> bool:
    if msg.type != "error":
        return False
    text = msg.text
    return "Content Security Policy" in text or "status of 404" in text or "status of 5" in text


@pytest.fixture
def page(context):
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # Console errors too: a Content-Security-Policy violation (an inline style or script the policy
    # blocks) and a failed resource load (a missing favicon) are reported there, not as page errors.
    # (A 403 is what the forged-request test asks for; it is not counted.)
    page.on("console", lambda msg: errors.append(msg.text) if _unexpected(msg) else None)
    yield page
    assert not errors, f"JavaScript or console errors on the page: {errors}"


@pytest.fixture
def login_as(context, live_server):
    """Log a user in by giving the browser a session cookie (the login form has its own test)."""

    def login(user):
        client = Client()
        client.force_login(user)
        cookie = client.cookies["sessionid"]
        context.add_cookies([{"name": "sessionid", "value": cookie.value, "url": live_server.url}])

    return login


def mark_page(page) -> None:
    """Set a flag that a full page load would wipe: proves later updates came without a reload."""
    page.evaluate("window.__noReload = true")


def assert_not_reloaded(page) -> None:
    assert page.evaluate("window.__noReload === true"), "the page was reloaded"
