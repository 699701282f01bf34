"""Settings from the environment and the schedule as data: defaults, parsing, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

import beat_schedule
from kprofefe_tasks.config import schedule
from kprofefe_tasks.config.settings import PROFILE_TYPES, Settings, from_env, markdown_table
from kprofefe_tasks.domain.backoff import backoff
from kprofefe_tasks.domain.errors import ConfigError


def test_defaults() -> None:
    s = from_env({})
    assert s.broker_url == "redis://127.0.0.1:6379/0"
    assert s.types == PROFILE_TYPES
    assert s.locks_redis_url == s.broker_url
    assert s.cpu_deadline(30) == 40.0


def test_env_overrides_and_parsing() -> None:
    s = from_env(
        {
            "KPROFEFE_CPU_SECONDS": "10",
            "KPROFEFE_TYPES": "heap, cpu",
            "KPROFEFE_SPREAD": "off",
            "KPROFEFE_SPOOL_DIR": "/var/spool/x",
            "KPROFEFE_BROKER_URL": "amqp://guest@localhost//",
        }
    )
    assert s.cpu_seconds == 10
    assert s.types == ("heap", "cpu")
    assert s.spread is False
    assert s.spool_dir == Path("/var/spool/x")
    assert s.locks_redis_url == "redis://127.0.0.1:6379/0"  # RabbitMQ broker: locks stay on Redis


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KPROFEFE_CPU_SECONDS", "ten"),
        ("KPROFEFE_CPU_SECONDS", "0"),
        ("KPROFEFE_TYPES", "allocs"),
        ("KPROFEFE_SPREAD", "maybe"),
        ("KPROFEFE_CAPTURE_VIA", "ssh"),
        ("KPROFEFE_UPLOAD_RATE", "-1"),
        ("KPROFEFE_LOG_FORMAT", "xml"),
    ],
)
def test_invalid_env_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_env({name: value})
    assert name in str(err.value)


def test_readme_table_lists_every_setting() -> None:
    table = markdown_table()
    for field in Settings.__dataclass_fields__:
        assert f"`KPROFEFE_{field.upper()}`" in table


def test_default_schedule_is_all_namespaces_every_ten_minutes() -> None:
    beat = beat_schedule.build(Settings())
    assert list(beat) == ["discover-all-namespaces"]
    entry = beat["discover-all-namespaces"]
    assert entry["schedule"] == 600
    assert entry["kwargs"]["namespaces"] == "all"
    assert entry["kwargs"]["types"] == list(PROFILE_TYPES)
    assert entry["options"] == {"queue": "discovery", "expires": 600}


def test_schedule_from_inline_yaml_and_file(tmp_path: Path) -> None:
    text = """
- name: web
  namespaces: [web, api]
  selector: tier=backend
  interval: 5m
  types: heap,cpu
  cpu_seconds: 10
- name: batch
  namespaces: batch
  interval: 1h
  spread: false
"""
    entries = beat_schedule.entries(Settings(schedule=text))
    assert [e.name for e in entries] == ["web", "batch"]
    assert entries[0].namespaces == ("web", "api")
    assert entries[0].interval == 300
    assert entries[0].types == ("heap", "cpu")
    assert entries[1].interval == 3600 and entries[1].spread is False
    path = tmp_path / "schedule.yaml"
    path.write_text(text)
    assert beat_schedule.entries(Settings(schedule_file=str(path))) == entries


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("- {name: a, interval: 2}", "below the minimum"),
        ("- {name: a, types: [allocs]}", "unknown types"),
        ("- {name: a, intervall: 60}", "unknown keys"),
        ("- {name: a}\n- {name: a}", "unique"),
        ("- {name: a, interval: 60, cpu_seconds: 60}", "shorter than the interval"),
        ("- {name: a, interval: soon}", "duration"),
        ("[unclosed", "not valid YAML"),
        ("42", "list of entries"),
    ],
)
def test_schedule_errors_are_clear(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        schedule.load_text(text, Settings(), "test")
    assert needle in str(err.value)


def test_missing_schedule_file_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="KPROFEFE_SCHEDULE_FILE"):
        beat_schedule.entries(Settings(schedule_file="/nonexistent/schedule.yaml"))


def test_backoff_is_bounded_jittered_and_honours_hints() -> None:
    for attempt in range(12):
        delay = backoff(attempt, 0.5, 30.0)
        assert min(30.0, 0.5 * 2**attempt) / 2 <= delay <= min(30.0, 0.5 * 2**attempt)
    assert backoff(0, 0.5, 30.0, hint=7.0) == 7.0
    assert backoff(0, 0.5, 30.0, hint=700.0) == 30.0
