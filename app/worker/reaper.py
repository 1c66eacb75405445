"""Tasks whose worker died run again: the worker's answer to kill -9, out-of-memory kills and lost machines.

A RUNNING task whose worker has no connection in pg_stat_activity (identity.py), seen so twice, goes back
to the queue, or is recorded FAILED with WorkerLost after TASK_MAX_ATTEMPTS claims.
See docs/tasks.md, "The backend, chosen on the evidence".
"""

import logging

from django.conf import settings
from django.db import connections, transaction
from django.tasks import TaskResultStatus
from django.tasks.signals import task_finished
from django_tasks_db.models import DBTaskResult

from worker.identity import PREFIX

logger = logging.getLogger("worker")


class WorkerLost(Exception):
    """The workers that claimed this task all stopped before it finished (killed, out of memory, machine lost)."""


def live_workers(using: str = "default") -> set[str]:
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT application_name FROM pg_stat_activity WHERE starts_with(application_name, %s)", [PREFIX]
        )
        return {name.removeprefix(PREFIX) for (name,) in cursor.fetchall()}


def requeue(task: DBTaskResult) -> None:
    """Back to READY, for any worker to claim; its worker_ids keep the claims so far."""
    task.status = TaskResultStatus.READY
    task.started_at = task.finished_at = None
    task.exception_class_path = task.traceback = ""
    task.save(update_fields=["status", "started_at", "finished_at", "exception_class_path", "traceback"])


class Reaper:
    def __init__(self, backend_name: str) -> None:
        self.backend_name = backend_name
        self.suspects: set[tuple[str, str]] = set()  # (task id, worker id) seen orphaned last time

    def reap(self) -> int:
        """One look; returns how many tasks it requeued or failed."""
        alive = live_workers()
        running = DBTaskResult.objects.running().filter(backend_name=self.backend_name)
        orphans = {
            (str(task_id), ids[-1] if ids else "")
            for task_id, ids in running.values_list("id", "worker_ids")
            if not ids or ids[-1] not in alive
        }
        confirmed, self.suspects = orphans & self.suspects, orphans - self.suspects
        handled = 0
        for task_id, worker in confirmed:
            failed = None
            with transaction.atomic():
                task = running.select_for_update(skip_locked=True).filter(id=task_id).first()
                if task is None or (task.worker_ids[-1] if task.worker_ids else "") != worker:
                    continue  # finished, or claimed again, meanwhile
                attempts = len(task.worker_ids)
                if attempts >= settings.TASK_MAX_ATTEMPTS:
                    task.set_failed(WorkerLost(f"{attempts} workers claimed it and none finished it"))
                    failed = task
                else:
                    requeue(task)
            handled += 1
            if failed is None:
                logger.warning("task %s lost its worker %s: back in the queue (claim %d)", task_id, worker, attempts)
            else:
                logger.error("task %s lost its worker %s, claim %d of %d: failed", task_id, worker, attempts, attempts)
                task_finished.send(sender=type(failed.task.get_backend()), task_result=failed.task_result)
        return handled
