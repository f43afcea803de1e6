"""Alerting end to end, with real receivers on loopback: an SMTP server (aiosmtpd) and an HTTP
receiver get exactly the expected notifications, through Apprise, through a scripted Clay outage, a
budget run-down and a run-up of a webhook's row cap; no duplicates with several workers at once."""

from __future__ import annotations

import email
import json
import socket
import threading
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller
from django.db import connection
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from clayops import alerts, breaker, maintenance
from clayops import budget as budget_svc
from clayops.models import Alert, AlertChannel, AlertNotification, AuditEntry, LeadImport, Webhook
from tests.factories import make_webhook


class Mailbox:
    def __init__(self) -> None:
        self.subjects: list[str] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        self.subjects.append(email.message_from_bytes(envelope.content)["Subject"])
        return "250 OK"


@pytest.fixture
def smtp():
    box = Mailbox()
    with socket.socket() as probe:  # a free port (the Controller's own start-up check needs a real one)
        probe.bind(("127.0.0.1", 0))
        box.port = probe.getsockname()[1]
    controller = Controller(box, hostname="127.0.0.1", port=box.port)
    controller.start()
    yield box
    controller.stop()


class Receiver:
    def __init__(self) -> None:
        self.titles: list[str] = []
        received = self.titles

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                received.append(json.loads(body)["title"])
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()


@pytest.fixture
def http():
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture
def channels(smtp, http):
    mail = AlertChannel.objects.create(
        name="mail",
        url=f"mailto://127.0.0.1:{smtp.port}?mode=insecure&from=clayops@example.com&to=ops@example.com",
    )
    hook = AlertChannel.objects.create(name="hook", url=f"json://127.0.0.1:{http.port}/alerts")
    return mail, hook


def both(smtp, http, *, runout: bool = False) -> tuple[list[str], list[str]]:
    """What each receiver got; the budget_runout rule's notices (tests/test_alert_rules.py) left out
    unless asked for."""

    def keep(titles):
        return [t for t in titles if runout or "runs out before the reset" not in t]

    return keep(smtp.subjects), keep(http.titles)


T0 = timezone.now().replace(microsecond=0)


def test_a_clay_outage_opens_reminds_and_resolves_once(webhook, smtp, http, channels):
    for _ in range(webhook.breaker.failure_threshold):
        breaker.record_failure(webhook.pk, probe=False, reason="HTTP 503", now=T0)
    assert Webhook.objects.get(pk=webhook.pk).breaker.state == "open"

    alerts.evaluate(now=T0)
    opened = "[clayops] OPEN: Breaker open: people"
    assert both(smtp, http) == ([opened], [opened])

    alerts.evaluate(now=T0 + timedelta(minutes=1))  # still open: nothing new
    assert both(smtp, http) == ([opened], [opened])

    alerts.evaluate(now=T0 + timedelta(minutes=11))  # CLAYOPS_ALERT_BREAKER_OPEN_MINUTES passed
    still = "[clayops] OPEN: Breaker still open: people"
    assert both(smtp, http) == ([opened, still], [opened, still])

    alerts.evaluate(now=T0 + timedelta(minutes=61))  # the reminder interval passed (60)
    alerts.evaluate(now=T0 + timedelta(minutes=62))
    reminder = "[clayops] STILL OPEN (reminder 1): Breaker open: people"
    assert both(smtp, http) == ([opened, still, reminder], [opened, still, reminder])

    breaker.reset(webhook.pk)
    alerts.evaluate(now=T0 + timedelta(minutes=63))
    alerts.evaluate(now=T0 + timedelta(minutes=64))
    mail, hook = both(smtp, http)
    assert mail == hook
    assert mail[:3] == [opened, still, reminder]
    assert sorted(mail[3:]) == [
        "[clayops] RESOLVED: Breaker open: people",
        "[clayops] RESOLVED: Breaker still open: people",
    ]
    assert not Alert.objects.filter(state="open").exists()
    assert AlertNotification.objects.filter(ok=True).count() == 10


def test_maintenance_tick_runs_the_alert_step(webhook, smtp, http, channels):
    breaker.record_failure(webhook.pk, probe=False, reason="x", now=T0)
    Webhook.objects.filter(pk=webhook.pk).update(paused_until=timezone.now() + timedelta(minutes=5))
    result = maintenance.run()
    assert result["alerts_evaluated"] == 1
    assert http.titles == ["[clayops] OPEN: Rate limited by Clay: people"]


def test_a_budget_run_down_alerts_at_80_90_and_100_percent_then_resolves_on_a_new_day(
    budget, webhook, smtp, http, channels
):
    seen = []
    for amount, new in (
        ("700", []),
        ("100", ["budget_80"]),
        ("50", []),
        ("50", ["budget_90"]),
        ("100", ["budget_100"]),
    ):
        assert budget_svc.reserve(budget=budget, amount=Decimal(amount)) is not None
        alerts.evaluate()
        seen += [f"[clayops] OPEN: Budget test at {rule[7:]} % of today's limit" for rule in new]
        assert both(smtp, http) == (seen, seen)
    alerts.evaluate(now=timezone.now() + timedelta(days=1))  # a new budget day: all three end
    mail, hook = both(smtp, http)
    assert mail == hook and len(mail) == 6
    assert sorted(mail[3:]) == sorted(s.replace("OPEN", "RESOLVED") for s in seen)


def test_a_run_up_of_the_row_cap_alerts_at_80_90_and_100_percent(webhook, smtp, http, channels):
    Webhook.objects.filter(pk=webhook.pk).update(row_cap=100)
    expected = []
    for rows, full, rule in ((79, False, None), (80, False, 80), (95, False, 90), (100, True, 100)):
        Webhook.objects.filter(pk=webhook.pk).update(rows_sent=rows, is_full=full)
        alerts.evaluate()
        alerts.evaluate()
        if rule:
            expected.append(f"[clayops] OPEN: Webhook people at {rule} % of its row cap")
        assert both(smtp, http) == (expected, expected)
    Webhook.objects.filter(pk=webhook.pk).update(row_cap=50_000, is_full=False)  # a fresh cap
    alerts.evaluate()
    assert len(http.titles) == 6 and all("RESOLVED" in t for t in http.titles[3:])


@pytest.mark.django_db(transaction=True)
def test_many_workers_evaluating_at_once_send_each_notification_once(smtp, http, channels):
    hook = make_webhook()
    breaker.record_failure(hook.pk, probe=False, reason="x", now=T0)
    Webhook.objects.filter(pk=hook.pk).update(paused_until=T0 + timedelta(hours=3))

    def tick_together(at):
        start, errors = threading.Barrier(8), []

        def worker():
            try:
                start.wait()
                alerts.evaluate(now=at)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                connection.close()

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []

    tick_together(T0)
    assert http.titles == smtp.subjects == ["[clayops] OPEN: Rate limited by Clay: people"]
    tick_together(T0 + timedelta(minutes=61))  # one reminder, not eight
    assert len(http.titles) == 2 and "reminder 1" in http.titles[1]
    Webhook.objects.filter(pk=hook.pk).update(paused_until=None)
    tick_together(T0 + timedelta(minutes=62))  # one resolve, not eight
    assert http.titles == smtp.subjects
    assert http.titles[2] == "[clayops] RESOLVED: Rate limited by Clay: people"
    assert len(http.titles) == 3
    assert Alert.objects.count() == 1


@pytest.mark.parametrize(
    "url, why",
    [
        ("json://169.254.169.254/latest/meta-data", "cloud metadata"),
        ("json://10.1.2.3/", "private address"),
        ("mailto://10.1.2.3?mode=insecure&from=a@example.com&to=b@example.com", "private address"),
        ("json://public.example.com/", "not an allowed alert destination"),
        ("nonsense://x", "not a valid Apprise URL"),
    ],
)
@override_settings(CLAYOPS_ALERT_CHANNEL_HOSTS=["127.0.0.1", "10.*", "169.254.*"])
def test_a_channel_outside_the_destination_policy_is_refused_and_logged(webhook, http, url, why):
    channel = AlertChannel.objects.create(name="bad", url=url)
    AlertChannel.objects.create(name="good", url=f"json://127.0.0.1:{http.port}/")
    Webhook.objects.filter(pk=webhook.pk).update(paused_until=timezone.now() + timedelta(minutes=5))
    alerts.evaluate()
    note = AlertNotification.objects.get(channel=channel)
    assert not note.ok and note.error.startswith("refused: ") and why in note.error
    assert http.titles == ["[clayops] OPEN: Rate limited by Clay: people"]  # the good one still gets it


@override_settings(CLAYOPS_DESTINATION_ALLOW_HTTP=False)
def test_plain_http_channels_need_the_development_setting():
    assert "plain http" in alerts.channel_problem("json://127.0.0.1:9/")


def test_the_hourly_cap_of_a_channel_holds(workspace, http):
    channel = AlertChannel.objects.create(name="hook", url=f"json://127.0.0.1:{http.port}/", max_per_hour=2)
    for n in range(3):
        make_webhook(workspace=workspace, name=f"w{n}", paused_until=timezone.now() + timedelta(minutes=5))
    alerts.evaluate()
    assert len(http.titles) == 2
    suppressed = AlertNotification.objects.get(channel=channel, ok=False)
    assert suppressed.error.startswith("suppressed: ")
    assert Alert.objects.filter(state="open").count() == 3


def test_channels_get_only_the_rules_they_ask_for(budget, webhook, smtp, http, channels):
    mail, _ = channels
    mail.rules = "budget_*, breaker_open"
    mail.save()
    Webhook.objects.filter(pk=webhook.pk).update(paused_until=timezone.now() + timedelta(minutes=5))
    budget_svc.reserve(budget=budget, amount=Decimal("800"))
    alerts.evaluate()
    mail, hook = both(smtp, http)
    assert mail == ["[clayops] OPEN: Budget test at 80 % of today's limit"]
    assert len(hook) == 2


def test_muted_alerts_say_nothing_and_acknowledged_ones_get_no_reminders(webhook, operator, http, channels):
    Webhook.objects.filter(pk=webhook.pk).update(paused_until=T0 + timedelta(hours=5))
    alerts.evaluate(now=T0)
    alert = Alert.objects.get()
    alerts.acknowledge(alert.pk, by=operator, now=T0)
    alerts.evaluate(now=T0 + timedelta(minutes=61))
    assert len(http.titles) == 1  # acknowledged: no reminder
    alerts.mute(alert.pk, minutes=600, by=operator, now=T0)
    Webhook.objects.filter(pk=webhook.pk).update(paused_until=None)
    alerts.evaluate(now=T0 + timedelta(minutes=62))
    assert len(http.titles) == 1  # muted: not even the resolve
    assert Alert.objects.get().state == "resolved"


def test_a_failed_import_alerts_once_and_closes_when_acknowledged(webhook, operator, http, channels):
    imp = LeadImport.objects.create(
        filename="leads.csv", state=LeadImport.State.FAILED, error="bad header", finished_at=timezone.now()
    )
    alerts.evaluate()
    alerts.evaluate()
    assert http.titles == ["[clayops] OPEN: Import failed: leads.csv"]
    alert = Alert.objects.get(target=f"import:{imp.pk}")
    alerts.acknowledge(alert.pk, by=operator)
    alerts.evaluate()
    assert Alert.objects.get(pk=alert.pk).state == "resolved"
    assert len(http.titles) == 1


def test_the_alerts_page_and_its_actions(webhook, viewer, operator):
    Webhook.objects.filter(pk=webhook.pk).update(paused_until=timezone.now() + timedelta(minutes=5))
    alerts.evaluate()
    alert = Alert.objects.get()
    as_viewer, as_operator = Client(), Client()
    as_viewer.force_login(viewer)
    as_operator.force_login(operator)

    page = as_viewer.get(reverse("dashboard:alerts"))
    assert page.status_code == 200 and b"Rate limited by Clay: people" in page.content
    ack_form = f'action="{reverse("dashboard:alert_ack")}"'.encode()
    assert ack_form not in page.content  # viewers see no buttons
    assert ack_form in as_operator.get(reverse("dashboard:alerts")).content

    for name in ("dashboard:alert_ack", "dashboard:alert_mute"):
        assert as_viewer.post(reverse(name), {"id": alert.pk}).status_code == 403
    assert not AuditEntry.objects.filter(action__startswith="alert_").exists()

    assert as_operator.post(reverse("dashboard:alert_ack"), {"id": alert.pk}).status_code == 302
    assert (
        as_operator.post(reverse("dashboard:alert_mute"), {"id": alert.pk, "minutes": 60}).status_code == 302
    )
    alert.refresh_from_db()
    assert alert.acknowledged_by == operator and alert.muted_until > timezone.now()
    actions = set(AuditEntry.objects.filter(user=operator).values_list("action", flat=True))
    assert {"alert_ack", "alert_mute"} <= actions

    csrf = Client(enforce_csrf_checks=True)
    csrf.force_login(operator)
    assert csrf.post(reverse("dashboard:alert_ack"), {"id": alert.pk}).status_code == 403


def test_the_admin_sends_a_test_notification(db, http, smtp):
    from django.contrib.auth import get_user_model

    admin = get_user_model().objects.create_superuser("root", password="pw-root-1")
    good = AlertChannel.objects.create(name="hook", url=f"json://127.0.0.1:{http.port}/")
    bad = AlertChannel.objects.create(name="meta", url="json://169.254.169.254/")
    client = Client()
    client.force_login(admin)
    response = client.post(
        reverse("admin:clayops_alertchannel_changelist"),
        {"action": "send_test", "_selected_action": [good.pk, bad.pk]},
        follow=True,
    )
    text = " | ".join(str(m) for m in response.context["messages"])
    assert "hook: test notification sent." in text
    assert "meta: not sent: refused: 169.254.169.254 is a cloud metadata address" in text
    assert http.titles == ["[clayops] test notification"]
    assert AuditEntry.objects.filter(action="alert_channel_test").count() == 2


def test_the_admin_refuses_a_channel_url_outside_the_policy(db):
    from clayops.admin import AlertChannelForm

    form = AlertChannelForm(
        data={"name": "x", "url": "json://169.254.169.254/", "rules": "*", "max_per_hour": 20}
    )
    assert not form.is_valid() and "cloud metadata" in str(form.errors["url"])
