from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Applies migrations to every configured database (the embedded channel layer has its own)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--noinput", "--no-input", action="store_false", dest="interactive")

    def handle(self, *args: Any, **options: Any) -> None:
        for alias in settings.DATABASES:
            call_command("migrate", database=alias, interactive=options["interactive"], verbosity=options["verbosity"])
