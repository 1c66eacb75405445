"""Announce every committed book on the channel books_book_created (books/live.py listens).

A trigger, so that books written anywhere are announced: the API, the admin,
a psql session. NOTIFY is delivered when the transaction commits, never for
one rolled back. https://www.postgresql.org/docs/current/sql-notify.html
"""

from django.db import migrations

CREATE = """
CREATE FUNCTION books_book_announce() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('books_book_created', NEW.id::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER books_book_announce AFTER INSERT ON books_book
    FOR EACH ROW EXECUTE FUNCTION books_book_announce();
"""
DROP = """
DROP TRIGGER IF EXISTS books_book_announce ON books_book;
DROP FUNCTION IF EXISTS books_book_announce();
"""


class Migration(migrations.Migration):
    dependencies = [("books", "0001_initial")]
    operations = [migrations.RunSQL(CREATE, DROP)]
