"""A statement that runs 3 s: longer than the statement timeout the test gives the command."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("books", "0002_add_probe_column")]

    operations = [
        migrations.RunSQL("SELECT pg_sleep(3)", migrations.RunSQL.noop),
    ]
