from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"

    def ready(self) -> None:
        # Connects the receivers that keep cached tokens true.
        from . import authentication  # noqa: F401
