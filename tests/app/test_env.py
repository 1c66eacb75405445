"""Secrets from the environment or from *_FILE paths; the metrics port."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from core.env import metrics_port, secret


def test_from_the_variable(monkeypatch):
    monkeypatch.setenv("DEMO_SECRET", "value")
    monkeypatch.delenv("DEMO_SECRET_FILE", raising=False)
    assert secret("DEMO_SECRET") == "value"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("value\n", "value"),
        ("value\r\n", "value"),
        ("value", "value"),
        ("va lue \n", "va lue "),
        ("value\n\n", "value\n"),
    ],
)
def test_from_a_file_one_trailing_newline_stripped(monkeypatch, tmp_path, content, expected):
    path = tmp_path / "secret"
    path.write_text(content)
    monkeypatch.delenv("DEMO_SECRET", raising=False)
    monkeypatch.setenv("DEMO_SECRET_FILE", str(path))
    assert secret("DEMO_SECRET") == expected


def test_unset_or_empty_is_none(monkeypatch, tmp_path):
    monkeypatch.delenv("DEMO_SECRET", raising=False)
    monkeypatch.delenv("DEMO_SECRET_FILE", raising=False)
    assert secret("DEMO_SECRET") is None
    monkeypatch.setenv("DEMO_SECRET", "")
    assert secret("DEMO_SECRET") is None
    empty = tmp_path / "empty"
    empty.write_text("\n")
    monkeypatch.setenv("DEMO_SECRET_FILE", str(empty))
    assert secret("DEMO_SECRET") is None


def test_both_is_an_error(monkeypatch, tmp_path):
    path = tmp_path / "secret"
    path.write_text("a")
    monkeypatch.setenv("DEMO_SECRET", "b")
    monkeypatch.setenv("DEMO_SECRET_FILE", str(path))
    with pytest.raises(ImproperlyConfigured, match="not both"):
        secret("DEMO_SECRET")


def test_unreadable_file_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("DEMO_SECRET", raising=False)
    monkeypatch.setenv("DEMO_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ImproperlyConfigured, match=r"DEMO_SECRET_FILE=.*cannot be read"):
        secret("DEMO_SECRET")


@pytest.mark.parametrize(("value", "port"), [(None, 9100), ("9200", 9200), (" 9200 ", 9200), ("", None)])
def test_metrics_port(monkeypatch, value, port):
    if value is None:
        monkeypatch.delenv("METRICS_PORT", raising=False)
    else:
        monkeypatch.setenv("METRICS_PORT", value)
    assert metrics_port() == port


@pytest.mark.parametrize("value", ["nine", "0", "65536", "-1", "91.0"])
def test_a_bad_metrics_port_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv("METRICS_PORT", value)
    with pytest.raises(ImproperlyConfigured, match="METRICS_PORT must be a port number"):
        metrics_port()
