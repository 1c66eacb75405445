"""Settings for Django's own test suite here: Django's SQLite test settings, plus this directory's runner.

runtests.py calls get_runner() after django.setup() and before it imports any
test module, so importing suite_runner is where the blueprint's classes go in.
"""

from test_sqlite import *  # noqa: F403  (Django's tests/test_sqlite.py, beside runtests.py)

TEST_RUNNER = "suite_runner.SuiteRunner"
