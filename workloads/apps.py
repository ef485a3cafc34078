import importlib

from django.apps import AppConfig


class WorkloadsConfig(AppConfig):
    name = "workloads"

    def ready(self) -> None:
        # Registering workloads is importing their modules: the shipped ones,
        # then the deployment's own (WORKLOAD_MODULES).
        from django.conf import settings

        from . import builtin, signals  # noqa: F401

        for module in settings.WORKLOAD_MODULES:
            importlib.import_module(module)
