from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("workloads", "0010_task_starts"),
    ]

    operations = [
        migrations.AddField(
            model_name="worker",
            name="marks_layer",
            field=models.BooleanField(db_default=False, default=False),
        ),
    ]
