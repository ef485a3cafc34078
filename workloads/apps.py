from django.apps import AppConfig


class WorkloadsConfig(AppConfig):
    name = "workloads"

    def ready(self) -> None:
        # Registering the shipped workloads is importing their module.
        from . import builtin  # noqa: F401
