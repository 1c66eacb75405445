"""`manage.py run_worker`: the task worker (worker/run.py), on every queue, named after its container.

django_tasks_db's `db_worker` command with worker.run.Worker in place of its
own, the poll interval from TASK_WORKER_INTERVAL, every queue by default, no
code reloading unless asked (--reload), and metrics on METRICS_PORT. Its
options are db_worker's: `manage.py run_worker --help`.
"""

import os

from django.conf import settings
from django.db import connections
from django.utils.autoreload import DJANGO_AUTORELOAD_ENV, run_with_reloader
from django_tasks_db.management.commands import db_worker

from worker import identity, metrics
from worker.run import Worker, prepare_connections


class Command(db_worker.Command):
    help = "Run the task worker: django.tasks' queue in Postgres (docs/tasks.md)."

    def add_arguments(self, parser):  # noqa: ANN001, ANN201  (BaseCommand's signature)
        super().add_arguments(parser)
        parser.set_defaults(
            queue_name="*", interval=settings.TASK_WORKER_INTERVAL, reload=False, worker_id=identity.worker_id()
        )

    def handle(self, *, verbosity: int, reload: bool, **options: object) -> None:
        self.configure_logging(verbosity)
        worker_id = str(options["worker_id"])
        prepare_connections(worker_id)
        # A pool made before (by the system checks) has the web's size and no name.
        connections["default"].close()
        connections["default"].close_pool()
        queue_names = str(options["queue_name"]).split(",")
        excluded = str(options["exclude_queues"]).split(",") if options["exclude_queues"] else []
        worker = Worker(
            queue_names=queue_names,
            interval=options["interval"],
            batch=options["batch"],
            backend_name=options["backend_name"],
            startup_delay=options["startup_delay"],
            max_tasks=options["max_tasks"],
            worker_id=worker_id,
            excluded_queue_names=excluded,
        )
        if reload:  # the development loop only: a reload does not let a task finish
            if os.environ.get(DJANGO_AUTORELOAD_ENV) == "true":  # the child that runs the worker
                worker.configure_signals()
                metrics.serve()
            run_with_reloader(worker.run)
        else:
            worker.configure_signals()
            metrics.serve()
            worker.run()
