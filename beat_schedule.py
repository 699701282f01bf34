"""The beat schedule, as data. Operators change it without editing code:

- ``KPROFEFE_SCHEDULE``: the entries inline (YAML or JSON), or
- ``KPROFEFE_SCHEDULE_FILE``: a YAML/JSON file (a ConfigMap in ``deploy/``),
- else :data:`DEFAULT`: every namespace every 10 minutes, all default types.

Each entry becomes one discovery task on its own interval; see :mod:`kprofefe_tasks.config.schedule` for the keys.
Print the effective schedule with ``python beat_schedule.py``.
"""

from __future__ import annotations

from typing import Any

from kprofefe_tasks.config import schedule
from kprofefe_tasks.config.settings import Settings, get_settings

DEFAULT: list[dict[str, Any]] = [
    {"name": "all-namespaces", "namespaces": "all", "selector": "", "interval": 600},
]


def entries(settings: Settings | None = None) -> list[schedule.Entry]:
    settings = settings or get_settings()
    if settings.schedule:
        return schedule.load_text(settings.schedule, settings, "KPROFEFE_SCHEDULE")
    if settings.schedule_file:
        return schedule.load_text(schedule.read_file(settings.schedule_file), settings, settings.schedule_file)
    return schedule.parse(DEFAULT, settings)


def build(settings: Settings | None = None) -> dict[str, dict[str, Any]]:
    """Celery's ``beat_schedule`` mapping."""
    return schedule.beat_entries(entries(settings))


if __name__ == "__main__":
    print(schedule.dumps(entries()))
