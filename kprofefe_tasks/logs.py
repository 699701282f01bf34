"""Structured logs: one line per capture outcome with namespace, pod, type, outcome; JSON when asked."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

CONTEXT_FIELDS = (
    "namespace",
    "pod",
    "type",
    "service",
    "outcome",
    "reason",
    "bytes",
    "seconds",
    "where",
    "round",
    "task_id",
    "entry",
    "targets",
    "captures",
    "skipped",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the capture context passed through ``extra=``."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in CONTEXT_FIELDS:
            if key in record.__dict__:
                data[key] = record.__dict__[key]
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


#: Celery's own INFO lines per task: received, succeeded (with the repr of the result), retry. Our "capture <outcome>"
#: line says the same with the pod and type (retries at WARNING), so unless the level is DEBUG they are dropped: they
#: cost about 6% of a capture worker's CPU (bench/RESULTS.md). Celery's ERROR lines for failed tasks stay.
CELERY_PER_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy")


def install(level: str, fmt: str, logger: logging.Logger | None = None) -> None:
    """Apply our level and format to the handlers Celery has set up (or the root logger's)."""
    target = logger or logging.getLogger()
    target.setLevel(level.upper())
    quiet = logging.getLevelName(level.upper()) != logging.DEBUG
    for name in CELERY_PER_TASK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.NOTSET)
    if fmt == "json":
        for handler in target.handlers or [logging.StreamHandler()]:
            handler.setFormatter(JsonFormatter())
            if handler not in target.handlers:
                target.addHandler(handler)
