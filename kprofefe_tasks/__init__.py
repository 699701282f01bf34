"""kprofefe-tasks: continuous profiling for Go services on Kubernetes, on Celery.

``celery -A kprofefe_tasks worker|beat|flower`` finds :data:`app` here.
"""

from kprofefe_tasks.app import app

__all__ = ["app"]
__version__ = "0.1.0"
