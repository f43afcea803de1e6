"""Periodic maintenance, run by `manage.py cron` (RQ's cron scheduler), every
CLAYOPS_TICK_SECONDS. Each job is safe to run twice at once (RQ is at-least-once): they claim work
with conditional UPDATEs.
"""

from django.conf import settings
from rq.cron import register

from clayops import jobs

register(
    jobs.maintenance_tick, queue_name="maintenance", interval=settings.CLAYOPS_TICK_SECONDS, job_timeout=120
)
