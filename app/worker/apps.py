from django.apps import AppConfig


class WorkerConfig(AppConfig):
    name = "worker"
    verbose_name = "Task worker"

    def ready(self) -> None:
        from worker import metrics  # noqa: F401  (connects its task signal receivers)
