"""The task queue's Prometheus metrics: what waits and runs (any web process), what finished (each worker).

- app_tasks{status, queue}: tasks READY (waiting, the number to scale workers
  on) and RUNNING, and app_task_oldest_ready_seconds, read from the queue's
  table by the web's /metrics on METRICS_PORT (core/metrics.py) at each scrape;
- app_tasks_finished_total{task, status} and app_task_duration_seconds{task,
  status}: counted by each worker from django.tasks' signals, served by the
  worker itself on METRICS_PORT (serve(), from `manage.py run_worker`).
"""

import logging
import time
from collections.abc import Iterator

from django.conf import settings
from django.db import connection
from django.db.models import Count, Min
from django.dispatch import receiver
from django.tasks import TaskResult, TaskResultStatus
from django.tasks.signals import task_finished, task_started
from django_tasks_db.models import DBTaskResult
from prometheus_client import Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from worker.run import INTERRUPTED

logger = logging.getLogger("worker")

FINISHED = Counter("app_tasks_finished", "Tasks finished by this worker, by task and outcome", ["task", "status"])
DURATION = Histogram(
    "app_task_duration_seconds",
    "Time from a task's start to its outcome, by task and outcome",
    ["task", "status"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
)
_started: dict[str, float] = {}  # task result id -> monotonic start, in this worker


@receiver(task_started)
def _on_started(sender: type, task_result: TaskResult, **kwargs: object) -> None:
    _started[task_result.id] = time.monotonic()


@receiver(task_finished)
def _on_finished(sender: type, task_result: TaskResult, **kwargs: object) -> None:
    started = _started.pop(task_result.id, None)
    errors = task_result.errors
    status = task_result.status.value
    if status == TaskResultStatus.FAILED and errors and errors[-1].exception_class_path == INTERRUPTED:
        status = "INTERRUPTED"  # back in the queue, not a failure
    name = task_result.task.module_path
    FINISHED.labels(name, status).inc()
    if started is not None:
        DURATION.labels(name, status).observe(time.monotonic() - started)


def serve() -> None:
    """The worker's metrics on METRICS_PORT (settings.METRICS_PORT; None: none), as the web serves its own."""
    port = settings.METRICS_PORT
    if port:
        start_http_server(port)
        logger.info("metrics on port %s", port)


class QueueCollector(Collector):
    """Tasks waiting and running, by queue, and how long the oldest has waited: two queries per scrape."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        tasks = GaugeMetricFamily("app_tasks", "Tasks waiting (READY) or running", labels=["status", "queue"])
        oldest = GaugeMetricFamily("app_task_oldest_ready_seconds", "Seconds the oldest task ready to run has waited")
        try:
            counts = (
                DBTaskResult.objects.filter(status__in=[TaskResultStatus.READY, TaskResultStatus.RUNNING])
                .values_list("status", "queue_name")
                .annotate(n=Count("id"))
            )
            seen = set()
            for status, queue, n in counts:
                tasks.add_metric([status, queue], n)
                seen.add(status)
            for status in {TaskResultStatus.READY, TaskResultStatus.RUNNING} - seen:
                tasks.add_metric([status, "default"], 0)
            first = DBTaskResult.objects.ready().aggregate(first=Min("enqueued_at"))["first"]
            oldest.add_metric([], max(time.time() - first.timestamp(), 0.0) if first else 0.0)
        except Exception:
            logger.exception("metrics: could not read the task queue")
            return
        finally:
            connection.close()  # this thread's connection, back to the pool
        yield tasks
        yield oldest
