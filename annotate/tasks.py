"""Celery tasks of the annotate app: webhook deliveries (``annotate.events``) and reliability fits
(``annotate.reliability``)."""
from __future__ import annotations

from celery import shared_task

from annotate.events import DELIVER, _enqueue, delivery_attempt
from annotate.reliability import FIT_TASK, fit_if_due


@shared_task(name=DELIVER, queue="default", acks_late=True, ignore_result=True)
def webhook_deliver(delivery_id: int) -> None:
    """Try one delivery; a retry is queued again with its countdown (the backoff), not slept through."""
    retry_in = delivery_attempt(delivery_id)
    if retry_in is not None:
        _enqueue(delivery_id, countdown=retry_in)


@shared_task(name=FIT_TASK, queue="default", acks_late=True, ignore_result=True)
def reliability_fit_task(project_id: int, force: bool = False) -> None:
    """Fit the annotator reliability model of a project that has enough new votes, or now with ``force``
    (the console's button) (annotate.reliability)."""
    fit_if_due(project_id, force=force)
