from django.apps import AppConfig


class LiveConfig(AppConfig):
    name = "live"

    def ready(self) -> None:
        from . import signals  # noqa: F401  (connects the receivers)
