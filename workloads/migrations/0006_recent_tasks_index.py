"""The admin's task list, everyone's tasks newest first: an index instead of
a sort of the whole table on every page (docs/operations.md#admin). Online
on PostgreSQL: built CONCURRENTLY, writes go on meanwhile."""

from django.db import migrations, models

from tasklight.online_migrations import AddIndexOnline


class Migration(migrations.Migration):
    atomic = False  # CONCURRENTLY runs outside a transaction

    dependencies = [
        ("workloads", "0005_fewer_indexes"),
    ]

    operations = [
        AddIndexOnline(
            model_name="task",
            index=models.Index(fields=["-created_at", "-id"], name="task_recent"),
        ),
    ]
