from django.apps import AppConfig


class CoreConfig(AppConfig):
    """Project-wide plumbing: system checks, probes and async-native middleware."""

    name = "core"

    def ready(self) -> None:
        from core import checks  # noqa: F401  (registers the checks)
