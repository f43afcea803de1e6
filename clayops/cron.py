"""Periodic maintenance, run by `manage.py rqcron clayops.cron` (RQ's cron scheduler).

Each job is safe to run twice at once (RQ is at-least-once): they claim work with conditional UPDATEs.
"""

from rq.cron import register

from clayops import jobs

register(jobs.maintenance_tick, queue_name="maintenance", interval=10, job_timeout=120)
