"""kprofefe-tasks: continuous profiling for Go services on Kubernetes, on Celery.

``celery -A kprofefe_tasks worker|beat|flower`` finds :data:`app` here. It is created on first access, so that
importing a leaf module (``kprofefe_tasks.domain.targets`` from the top-level ``beat_schedule.py``, say) does not build
the Celery app and read the schedule as a side effect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

    app: Celery

__all__ = ["app"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "app":
        from kprofefe_tasks.worker.app import app

        return app
    raise AttributeError(f"module 'kprofefe_tasks' has no attribute {name!r}")
