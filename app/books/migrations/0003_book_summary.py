"""The summary a background task writes on each new book, announced on books_book_changed (books/live.py listens).

Like 0002's trigger for new books: whoever writes the summary or its error
(the task, psql), the live pages hear of it when the transaction commits.
The three columns have defaults, so a running release that does not know
them keeps inserting books while this migrates (expand, then contract).
"""

from django.db import migrations, models

CREATE = """
CREATE FUNCTION books_book_announce_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('books_book_changed', NEW.id::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER books_book_announce_change AFTER UPDATE OF summary, summary_error ON books_book
    FOR EACH ROW
    WHEN (OLD.summary IS DISTINCT FROM NEW.summary OR OLD.summary_error IS DISTINCT FROM NEW.summary_error)
    EXECUTE FUNCTION books_book_announce_change();
"""
DROP = """
DROP TRIGGER IF EXISTS books_book_announce_change ON books_book;
DROP FUNCTION IF EXISTS books_book_announce_change();
"""


class Migration(migrations.Migration):
    dependencies = [("books", "0002_announce_new_books")]
    operations = [
        migrations.AddField("book", "summary", models.TextField(blank=True, default="", db_default="")),
        migrations.AddField("book", "summary_error", models.TextField(blank=True, default="", db_default="")),
        migrations.AddField(
            "book", "summary_task_id", models.CharField(blank=True, default="", db_default="", max_length=64)
        ),
        migrations.RunSQL(CREATE, DROP),
    ]
