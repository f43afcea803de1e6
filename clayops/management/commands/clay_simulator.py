"""Run the fault-injecting Clay simulator on loopback until SIGTERM or SIGINT (Ctrl-C).

    python3 manage.py clay_simulator --port 8765 --latency-ms 50 --rate-limit 10 --burst 20

Prints one line with its URL, then serves: webhooks on /v3/sources/webhook/<table_id>, the control
API on /_sim/ (health, stats, faults, tables, reset). `manage.py up` starts it and configures the
default table's callback through `POST /_sim/tables/t_default`. See clayops/simulator.py.
"""

from __future__ import annotations

import os
import signal
import threading

from django.core.management.base import BaseCommand, CommandError

from clayops.devtools.simulator import ClaySimulator, loopback_host


class Command(BaseCommand):
    help = "Run a fault-injecting Clay simulator (webhook source + HTTP API column) on loopback."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1", help="127.0.0.1 or ::1 (loopback only).")
        parser.add_argument("--port", type=int, default=8765, help="0 picks a free port.")
        parser.add_argument("--latency-ms", type=float, default=50.0, help="Added to every webhook request.")
        parser.add_argument("--jitter-ms", type=float, default=0.0, help="Random extra latency, 0 to this.")
        parser.add_argument("--error-rate", type=float, default=0.0, help="Share answered 500/502/503.")
        parser.add_argument("--rate-429", type=float, default=0.0, help="Share answered 429 at random.")
        parser.add_argument("--hang-rate", type=float, default=0.0, help="Share that hang (client timeouts).")
        parser.add_argument("--hang-seconds", type=float, default=30.0)
        parser.add_argument("--reset-rate", type=float, default=0.0, help="Share whose connection is reset.")
        parser.add_argument(
            "--accept-and-hang-rate", type=float, default=0.0, help="Share recorded, then left hanging."
        )
        parser.add_argument("--outage", choices=["503", "reset", "hang"], default=None)
        parser.add_argument(
            "--rate-limit", type=float, default=0.0, help="Workspace records/s (token bucket); 0: none."
        )
        parser.add_argument("--burst", type=int, default=20)
        parser.add_argument("--row-cap", type=int, default=50_000, help="Lifetime rows per webhook.")
        parser.add_argument("--credits-per-row", type=float, default=6.0)
        parser.add_argument(
            "--credit-pool", type=float, default=None, help="Workspace credits; 402 when out."
        )
        parser.add_argument("--payload-limit", type=int, default=100_000, help="Bytes; larger gets 413.")
        parser.add_argument("--no-auto-create", action="store_true", help="Unknown tables answer 404.")
        parser.add_argument("--callback-delay", type=float, default=1.0, help="Seconds before a callback.")
        parser.add_argument("--callback-fail-rate", type=float, default=0.0)
        parser.add_argument("--duplicate-callback-rate", type=float, default=0.0)
        parser.add_argument("--seed", type=int, default=None)

    def handle(self, *args, **opts):
        try:
            host = loopback_host(opts["host"])
            sim = ClaySimulator(
                host,
                opts["port"],
                seed=opts["seed"],
                latency_ms=opts["latency_ms"],
                jitter_ms=opts["jitter_ms"],
                error_rate=opts["error_rate"],
                rate_429=opts["rate_429"],
                hang_rate=opts["hang_rate"],
                hang_seconds=opts["hang_seconds"],
                reset_rate=opts["reset_rate"],
                accept_and_hang_rate=opts["accept_and_hang_rate"],
                outage=opts["outage"],
                rate_limit=opts["rate_limit"],
                burst=opts["burst"],
                row_cap=opts["row_cap"],
                credits_per_row=opts["credits_per_row"],
                credit_pool=opts["credit_pool"],
                payload_limit=opts["payload_limit"],
                auto_create=not opts["no_auto_create"],
                callback_delay_s=opts["callback_delay"],
                callback_fail_rate=opts["callback_fail_rate"],
                duplicate_callback_rate=opts["duplicate_callback_rate"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        try:
            sim.start()
        except OSError as exc:
            raise CommandError(f"cannot listen on {host} port {opts['port']}: {exc}") from None
        callback = os.environ.get("CLAYOPS_SIM_CALLBACK_URL")
        if callback:  # `up` passes its table's callback here, so a restarted simulator keeps it
            header = os.environ.get("CLAYOPS_SIM_CALLBACK_HEADER", "")
            secret = os.environ.get("CLAYOPS_SIM_CALLBACK_SECRET", "")
            sim.configure_table(
                os.environ.get("CLAYOPS_SIM_TABLE", "t_default"),
                callback_url=callback,
                callback_headers={header: secret} if header else {},
            )

        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.stdout.write(f"Clay simulator listening on {sim.url}")
            self.stdout.flush()
            while not stop.wait(1.0):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            sim.stop()
        self.stdout.write("Clay simulator stopped.")
