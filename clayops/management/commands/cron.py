"""`manage.py cron`: RQ's cron scheduler for clayops.cron (the maintenance tick), riding out Redis
outages instead of quitting (django-rq's `rqcron clayops.cron` does the same work but exits on a
lost connection)."""

import contextlib
import logging

from django.core.management.base import BaseCommand

from clayops.workers import RidingCronScheduler


class Command(BaseCommand):
    help = "Enqueue the maintenance tick every CLAYOPS_TICK_SECONDS (RQ cron), surviving Redis outages."

    def add_arguments(self, parser):
        parser.add_argument(
            "--logging-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
        )

    def handle(self, *args, **opts):
        scheduler = RidingCronScheduler(logging_level=getattr(logging, opts["logging_level"]))
        scheduler.load_config_from_file("clayops.cron")
        self.stdout.write(f"Starting cron scheduler with {len(scheduler.get_jobs())} jobs ...")
        self.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            scheduler.start()
