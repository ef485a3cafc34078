"""Fewer index entries per change of a task's state (docs/benchmarks.md): a
change of status writes a new row version into every index of the table
whose condition it meets, so an index that no query needs costs on every
create, start and end.

- owner: task_owner_recent (owner, -created_at, -id) serves every lookup by
  owner; the foreign key's own index on owner alone goes.
- retry_of: only retries need an entry (deleting a task looks up its
  retries), so the full index becomes a partial one, task_retries.

The foreign keys stay as they are: only the indexes change (Django's own
AlterField would drop both constraints and check them again, scanning the
table). Online on PostgreSQL: nothing here stops writes to the table.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

from tasklight.online_migrations import AddIndexOnline, drop_index_online


class Migration(migrations.Migration):
    atomic = False  # CONCURRENTLY runs outside a transaction

    dependencies = [
        ("workloads", "0004_active_tasks_index"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        AddIndexOnline(
            model_name="task",
            index=models.Index(
                condition=models.Q(("retry_of__isnull", False)), fields=["retry_of"], name="task_retries"
            ),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="task",
                    name="owner",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="tasks",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                migrations.AlterField(
                    model_name="task",
                    name="retry_of",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="retries",
                        to="workloads.task",
                    ),
                ),
            ],
            # The names Django gave these indexes in 0001_initial.
            database_operations=[
                drop_index_online("workloads_task", "owner_id", "workloads_task_owner_id_792b6eb4"),
                drop_index_online("workloads_task", "retry_of_id", "workloads_task_retry_of_id_ff1e42c3"),
            ],
        ),
    ]
