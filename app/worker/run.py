"""The task worker: django-tasks-db's Worker, with what running it in production takes.

A bounded graceful stop (TASK_WORKER_GRACE), a keeper thread for the heartbeat and the reaper, the
worker's identity on its connections and the enqueuing request's id on its log lines.
See docs/tasks.md, "The backend, chosen on the evidence".
"""

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from django.conf import settings
from django.db import OperationalError, connection, connections
from django_tasks_db.management.commands import db_worker
from django_tasks_db.models import DBTaskResult

from core import jsonlog
from core.sizing import TASK_WORKER_POOL_SIZE
from worker import identity
from worker.reaper import Reaper, requeue

logger = logging.getLogger("worker")

HEARTBEAT = Path("/tmp/task-worker.json")  # noqa: S108 (the container's own tmpfs; the healthcheck reads it)
BEAT_SECONDS = 1.0
GRACE_MARGIN = 5.0  # seconds to put an interrupted task back and exit before the platform's kill
# Looking for a task again after the database failed the look: the first pause, the longest, and how long
# without a failure starts again from the first.
RETRY_PAUSE, RETRY_PAUSE_MAX, RETRY_RESET_AFTER = 0.5, 5.0, 60.0


class Interrupted(BaseException):
    """The worker is stopping and its grace period is nearly over: the task goes back in the queue."""


INTERRUPTED = f"{Interrupted.__module__}.{Interrupted.__qualname__}"


def prepare_connections(worker: str) -> None:
    """Every connection of this process named after the worker, from a pool of the size core.E003 counts."""
    options = connections["default"].settings_dict["OPTIONS"]
    options["application_name"] = identity.application_name(worker)
    if isinstance(options.get("pool"), dict):
        options["pool"] = {**options["pool"], "min_size": 1, "max_size": TASK_WORKER_POOL_SIZE}


class Worker(db_worker.Worker):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.task_id = ""
        self.task_since = 0.0
        self.deadline: float | None = None  # monotonic time at which the running task is interrupted
        self.unrecorded = ""  # a claimed task whose outcome could not be written
        self.keeper = Keeper(self)

    def configure_signals(self) -> None:
        super().configure_signals()
        signal.signal(signal.SIGUSR1, self.interrupt)

    def shutdown(self, signum: int, frame: FrameType | None) -> None:
        """The first SIGTERM only ends the loop; db_worker's raises SystemExit when no task runs.

        Raised from a signal handler, that exit lands wherever the main thread is: inside the query that
        claims the next task, or the connection pool's bookkeeping. Here the loop ends after its current
        turn instead (a claimed task still runs, within the grace), at most TASK_WORKER_INTERVAL later when idle.
        """
        if not self.running:  # a second signal: db_worker's forced stop
            super().shutdown(signum, frame)
            return
        grace = max(settings.TASK_WORKER_GRACE - GRACE_MARGIN, 0.0)
        self.deadline = time.monotonic() + grace
        self.running = False
        if self.running_task:
            logger.warning("stopping: task %s has %.0f s to finish, or goes back in the queue", self.task_id, grace)
        else:
            logger.warning("stopping: no task running, so the worker exits when its current poll ends")

    def interrupt(self, signum: int, frame: FrameType | None) -> None:
        """SIGUSR1, sent by the keeper at the deadline: raised inside the task, recorded, then requeued by run_task."""
        if self.running_task and self.task_id:
            raise Interrupted(f"the worker stopped and its grace period ({settings.TASK_WORKER_GRACE:.0f} s) ran out")

    def run(self) -> None:
        self.keeper.start()
        try:
            self.poll()
        finally:
            self.keeper.stop()

    def poll(self) -> None:
        """db_worker's loop, started again when the database fails a look for a task.

        db_worker's loop retries only SQLite's "locked"; a lost connection, a restarting database or a look
        cancelled by DB_STATEMENT_TIMEOUT would end the process. A task whose outcome could not be written
        still ends it: its row says RUNNING, and only a worker gone from pg_stat_activity has it requeued.
        """
        pause, failed_at = RETRY_PAUSE, float("-inf")
        while True:
            try:
                super().run()
                return
            except OperationalError as error:
                if self.unrecorded:
                    raise
                connection.close()  # an unusable connection leaves; a usable one goes back to the pool
                if not self.running:
                    logger.warning("stopping: the database failed the last look for a task (%s)", error)
                    return
                now = time.monotonic()
                pause = RETRY_PAUSE if now - failed_at > RETRY_RESET_AFTER else min(pause * 2, RETRY_PAUSE_MAX)
                failed_at = now
                logger.warning("could not look for a task (%s); looking again in %.1f s", error, pause)
                self.startup_delay = False
                while self.running and time.monotonic() < now + pause:  # a stop ends the pause
                    time.sleep(0.1)

    def run_task(self, db_task_result: DBTaskResult) -> None:
        self.task_id, self.task_since = str(db_task_result.id), time.time()
        kwargs = (db_task_result.args_kwargs or {}).get("kwargs") or {}
        request_id = jsonlog.request_id.set(str(kwargs.get("request_id", "")))
        self.unrecorded = self.task_id  # until its outcome (or its return to the queue) is written
        self.keeper.beat()
        try:
            super().run_task(db_task_result)  # records SUCCESSFUL or FAILED, sends task_finished
        finally:
            jsonlog.request_id.reset(request_id)
            self.task_id = ""
            self.keeper.beat()
        if db_task_result.exception_class_path == INTERRUPTED:
            requeue(db_task_result)
            logger.warning("task %s interrupted by the stop: back in the queue", db_task_result.id)
        self.unrecorded = ""


class Keeper(threading.Thread):
    """Beside the loop: the heartbeat every second, the reaper every TASK_REAP_INTERVAL, the deadline of a stop."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(name="task-worker keeper", daemon=True)
        self.worker = worker
        self.reaper = Reaper(worker.backend_name)
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)

    def beat(self) -> None:
        """Write what the worker is doing, atomically: the healthcheck reads it."""
        worker = self.worker
        state = {
            "pid": os.getpid(),
            "worker_id": worker.worker_id,
            "beat": time.time(),
            "task": worker.task_id,
            "task_since": worker.task_since if worker.task_id else None,
            "time_limit": settings.TASK_TIME_LIMIT,
        }
        partial = HEARTBEAT.with_name(f".{HEARTBEAT.name}.{os.getpid()}")
        try:
            with self.lock:
                partial.write_text(json.dumps(state))
                partial.replace(HEARTBEAT)
        except OSError as error:  # never a reason to fail a task; the healthcheck sees a stale beat
            logger.warning("could not write the heartbeat %s: %s", HEARTBEAT, error)

    def run(self) -> None:
        reap_at = time.monotonic()
        interrupted = False
        while not self.stopped.is_set():
            self.beat()
            now = time.monotonic()
            deadline = self.worker.deadline
            if deadline is not None and now >= deadline and self.worker.task_id and not interrupted:
                interrupted = True
                signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)  # type: ignore[arg-type]
            if now >= reap_at:
                reap_at = now + settings.TASK_REAP_INTERVAL
                try:
                    self.reaper.reap()
                except Exception:
                    logger.exception("the reaper failed; it looks again in %.0f s", settings.TASK_REAP_INTERVAL)
                finally:
                    connection.close()  # this thread's connection, back to the pool
            self.stopped.wait(BEAT_SECONDS)
