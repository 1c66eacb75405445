"""The books app's migrations plus pending changes to books_book, for the migrate command's tests.

Used as MIGRATION_MODULES["books"] (migration_probe_settings.py, or override_settings):
0001_initial is the app's own, 0002 adds a nullable column, an ALTER TABLE
that needs the table's ACCESS EXCLUSIVE lock, as most schema changes do; 0003
runs one slow statement (pg_sleep).
"""
