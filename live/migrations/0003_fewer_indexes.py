"""The event table's foreign key to the user loses its own index:
event_user_sequence (user, sequence) serves every lookup by user, and every
event stored wrote both (docs/benchmarks.md). The constraint stays as it is
(Django's own AlterField would drop it and check it again, scanning the
table). Online on PostgreSQL: nothing here stops writes to the table."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

from tasklight.online_migrations import drop_index_online


class Migration(migrations.Migration):
    atomic = False  # CONCURRENTLY runs outside a transaction

    dependencies = [
        ("live", "0002_inbox_retention"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="event",
                    name="user",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="events",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            # The name Django gave this index in 0001_initial.
            database_operations=[drop_index_online("live_event", "user_id", "live_event_user_id_68ca8047")],
        ),
    ]
