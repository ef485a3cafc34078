"""Migration operations that do not stop writes to a big table on PostgreSQL.

``CREATE INDEX`` and ``DROP INDEX`` lock the table against writes while they
run (a create reads the whole table first); their ``CONCURRENTLY`` forms do
not, and PostgreSQL allows them only outside a transaction (the migration
sets ``atomic = False``). Embedded mode's SQLite has neither form and gets
the plain statement (docs/operations.md, "Upgrading").
"""

from __future__ import annotations

from typing import Any

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations
from django.db.migrations.operations import AddIndex


class AddIndexOnline(AddIndexConcurrently):
    """``AddIndexConcurrently`` on PostgreSQL, ``AddIndex`` elsewhere."""

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        if schema_editor.connection.vendor == "postgresql":
            super().database_forwards(app_label, schema_editor, from_state, to_state)
        else:
            AddIndex.database_forwards(self, app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        if schema_editor.connection.vendor == "postgresql":
            super().database_backwards(app_label, schema_editor, from_state, to_state)
        else:
            AddIndex.database_backwards(self, app_label, schema_editor, from_state, to_state)


def drop_index_online(table: str, column: str, name: str) -> migrations.RunPython:
    """Drops the index ``name`` (if there) of ``table``'s ``column``; the
    reverse makes it again. For an index the migration state does not name
    (a foreign key's own index, given ``db_index=False`` in a state-only
    ``AlterField``): no constraint is dropped or checked again."""

    def concurrently(schema_editor: Any) -> str:
        return " CONCURRENTLY" if schema_editor.connection.vendor == "postgresql" else ""

    def drop(apps: Any, schema_editor: Any) -> None:
        schema_editor.execute(f"DROP INDEX{concurrently(schema_editor)} IF EXISTS {schema_editor.quote_name(name)}")

    def make(apps: Any, schema_editor: Any) -> None:
        quote = schema_editor.quote_name
        schema_editor.execute(
            f"CREATE INDEX{concurrently(schema_editor)} IF NOT EXISTS {quote(name)} ON {quote(table)} ({quote(column)})"
        )

    return migrations.RunPython(drop, make, elidable=False)
