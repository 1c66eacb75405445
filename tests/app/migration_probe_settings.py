"""The app's settings with probe_migrations as the books app's migrations: a migration pending on books_book.

For running the migrate command against a database where it must wait for a lock
(tests/test_migrations.py runs it this way in the test image).
"""

from config.settings import *  # noqa: F403

MIGRATION_MODULES = {"books": "probe_migrations"}
