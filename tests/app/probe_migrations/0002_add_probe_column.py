"""A pending change to books_book: ALTER TABLE ... ADD COLUMN, which waits for every lock on the table."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("books", "0001_initial")]

    operations = [
        migrations.AddField("book", "probe", models.IntegerField(null=True)),
    ]
