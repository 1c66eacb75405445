"""The system checks that keep the escape hatch and a missing secret key out of production."""

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from core import checks
from core.startup import refuse_to_start_on_check_errors


def ids(messages) -> list[str]:
    return [m.id for m in messages]


def test_no_escape_hatch_no_message(monkeypatch):
    monkeypatch.delenv("DJANGO_ALLOW_ASYNC_UNSAFE", raising=False)
    assert checks.async_unsafe_escape_hatch(None) == []


def test_empty_escape_hatch_is_off_as_in_django(monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "")
    assert checks.async_unsafe_escape_hatch(None) == []


@pytest.mark.parametrize("value", ["1", "true", "0", "false", "no"])
@override_settings(DEBUG=False)
def test_escape_hatch_is_an_error_outside_debug(monkeypatch, value):
    # Django switches the guard off for any non-empty value, "0" and "false" included.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", value)
    assert ids(checks.async_unsafe_escape_hatch(None)) == ["core.E001"]


@override_settings(DEBUG=True)
def test_escape_hatch_is_only_a_warning_in_debug(monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")
    assert ids(checks.async_unsafe_escape_hatch(None)) == ["core.W001"]


@override_settings(DEBUG=False)
def test_startup_refuses_with_the_escape_hatch(monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")
    with pytest.raises(ImproperlyConfigured, match="DJANGO_ALLOW_ASYNC_UNSAFE"):
        refuse_to_start_on_check_errors()


def test_startup_passes_when_configured(monkeypatch):
    monkeypatch.delenv("DJANGO_ALLOW_ASYNC_UNSAFE", raising=False)
    refuse_to_start_on_check_errors()


@override_settings(SECRET_KEY="")
def test_missing_secret_key_is_an_error():
    assert ids(checks.secret_key_given(None)) == ["core.E002"]


def test_secret_key_present():
    assert checks.secret_key_given(None) == []


def test_static_files_collected_where_static_root_says(tmp_path):
    assert checks.static_files_collected(None) == []  # the image's own, collected at build time
    with override_settings(STATIC_ROOT=str(tmp_path)):
        assert ids(checks.static_files_collected(None)) == ["core.E004"]
        with pytest.raises(ImproperlyConfigured, match=r"core\.E004"):
            refuse_to_start_on_check_errors()
    with override_settings(STATIC_ROOT=str(tmp_path), DEBUG=True):
        assert checks.static_files_collected(None) == [], "DEBUG names files without the manifest"
