"""TEMPORARY workaround for tests/test_multinode.py: the settings its nodes run with (through
DJANGO_SETTINGS_MODULE) while clayops' RQ workers cannot outlive a PostgreSQL restart.

The bug: Django replaces a connection the server dropped only around HTTP requests (the
request_started/finished signals call close_old_connections). An RQ SimpleWorker runs every job in
one long-lived process, and nothing in clayops or django-rq closes a broken connection between jobs,
so after `pg_ctl restart` every later job of every worker fails with "the connection is closed",
for good. The fix belongs in clayops (close_old_connections() before and after each job in
clayops/jobs.py, and CONN_HEALTH_CHECKS on); until then this module does the same from outside.
Delete it, and its use in tests/test_multinode.py, once the product does it.
`CLAYOPS_MULTINODE_NO_WORKAROUNDS=1 pytest tests/test_multinode.py` runs the nodes on the product's
own settings (and shows the bug).
"""

from __future__ import annotations

from clayops.settings import *  # noqa: F403
from clayops.settings import DATABASES

# The first query after an idle spell checks the connection (one cheap round trip) and reconnects.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True


def _close_old_connections_around_jobs() -> None:
    from rq.worker import SimpleWorker

    if getattr(SimpleWorker.execute_job, "_multinode_workaround", False):
        return
    original = SimpleWorker.execute_job

    def execute_job(self, job, queue):
        from django.db import close_old_connections

        close_old_connections()  # what Django does before each request
        try:
            return original(self, job, queue)
        finally:
            close_old_connections()  # ... and after it

    execute_job._multinode_workaround = True  # type: ignore[attr-defined]
    SimpleWorker.execute_job = execute_job  # type: ignore[method-assign]


_close_old_connections_around_jobs()
