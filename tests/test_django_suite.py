"""Django's own tests of the request path pass with core.handlers and core.dropins in place of Django's classes.

The django-suite service (tests/compose.test.yml, runner in tests/django_suite)
runs about 3,500 of Django's tests twice at once, with Django's classes and with
the blueprint's, and fails if any test fails only with the blueprint's. It takes
1 to 2.5 minutes on two cores, most of it auth_tests' password hashing.
"""

from __future__ import annotations

import re

from harness.stack import Stack


def test_djangos_tests_pass_with_the_blueprints_classes(stack: Stack):
    result = stack.compose("run", "--rm", "django-suite", with_tests=True, check=False, timeout=1200)
    start = result.stdout.find("Django's tests (")
    output = result.stdout[start:] if start >= 0 else result.stdout + result.stderr
    print(output[:30000])
    assert result.returncode == 0, output[-30000:]
    runs = dict(re.findall(r"^(stock|blueprint): +(\d+) tests run", output, re.MULTILINE))
    assert set(runs) == {"stock", "blueprint"}, "the runner printed no summary of both runs"
    assert runs["stock"] == runs["blueprint"], "the two runs ran different tests"
    assert int(runs["blueprint"]) > 3000, "fewer of Django's tests ran than the chosen modules have"
