"""The path a lead travels: claim, guards (pause, breaker, budget, row cap, rate), send, record, classify.

Every state change of a lead is a conditional UPDATE on (state, claim_token), so two workers can
never both send one lead, and a job that runs twice (RQ is at-least-once) finds nothing to do.
A job's leads for one webhook pass the guards together, each guard one statement for all of them.
The order of the guards matters:
  1. pauses (429 / 402 / operator), an open breaker, the hourly cap: nothing is claimed or reserved;
  2. claim the leads (queued → submitting);
  3. the breaker admits each request (half-open: at most K probes); refused → deferred (not a failure);
  4. the budget holds credits for as many leads as it pays for; the rest → deferred (not a failure);
  5. the webhook's lifetime row cap: full → fail over to the next webhook of the workspace;
  6. per request, the workspace's rate-limit token: a paced workspace's pump (pump.py) takes the
     tokens there are before step 2 and hands them to the Sender; a request not paid for waits in
     the workspace's list (clayops.pacequeue), never on a worker;
  7. send; classify the answer once; record the attempt, health and the breaker; settle or release.

Modules, each importing only those listed before it:
  transitions  conditional lead state changes shared by the others (claim token, requeue)
  routing      which webhook a lead goes to (fail over) and how leads are cut into requests
  outcomes     applying Clay's answers: one handler per error class
  sender       sending a group's requests on HTTP-only threads, paced by the rate limit
  guards       a group's body: steps 1-5, then the sender
  pump         the job body: leads of unpaced workspaces straight to the guards; a paced
               workspace's to its lists, sent by its pump as its tokens allow
  recovery     what the maintenance tick does for leads: stuck, uncertain, due, orphaned, deferred,
               overdue callbacks; and the probe when a breaker's cooldown ends
  resolution   the operator's choices for overdue and uncertain leads: wait, resend, mark delivered
"""

from .guards import deliver_group
from .pump import hand_over, run_pump, submit_batch
from .recovery import (
    drain_offline,
    drain_offline_step,
    mark_overdue,
    recover_stuck,
    requeue_due_retries,
    requeue_orphans,
    requeue_uncertain,
    resend_uncertain,
    resume_webhook,
)
from .routing import Chunk, choose_webhook, plan_chunks, usable_webhooks
from .transitions import OFFLINE_STATES, requeue

__all__ = [
    "OFFLINE_STATES",
    "Chunk",
    "choose_webhook",
    "deliver_group",
    "drain_offline",
    "drain_offline_step",
    "hand_over",
    "mark_overdue",
    "plan_chunks",
    "run_pump",
    "recover_stuck",
    "requeue",
    "requeue_due_retries",
    "requeue_orphans",
    "requeue_uncertain",
    "resend_uncertain",
    "resume_webhook",
    "submit_batch",
    "usable_webhooks",
]
