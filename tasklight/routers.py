from __future__ import annotations

from typing import Any

EMBEDDED_LAYER_APP = "channels_lite"


class EmbeddedChannelLayerRouter:
    """Keeps the embedded channel layer's tables in their own SQLite file.

    channels-lite's own router lets every other app migrate into its database
    too; this one keeps each app in exactly one database.
    """

    def _database_for(self, app_label: str) -> str:
        return "channels" if app_label == EMBEDDED_LAYER_APP else "default"

    def db_for_read(self, model: Any, **hints: Any) -> str:
        return self._database_for(model._meta.app_label)

    def db_for_write(self, model: Any, **hints: Any) -> str:
        return self._database_for(model._meta.app_label)

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        return None

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool:
        return db == self._database_for(app_label)
