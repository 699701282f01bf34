"""Re-sending the spool: profiles profefe did not take within the retry budget, oldest first."""

from __future__ import annotations

import logging
import threading
from typing import Any

from kprofefe_tasks import metrics
from kprofefe_tasks.domain.delivery import Delivery
from kprofefe_tasks.domain.outcomes import Outcome, Reason
from kprofefe_tasks.io.sinks import ProfefeSink
from kprofefe_tasks.worker.runtime import Runtime, runtime

log = logging.getLogger("kprofefe.tasks")


def drain_once(rt: Runtime | None = None) -> dict[str, Any]:
    """Re-send this worker's spool to profefe, oldest first; stops at the first temporary failure."""
    rt = rt or runtime()
    if not isinstance(rt.sink, ProfefeSink):
        return {"sent": 0, "left": rt.spool.stats()[0], "error": "no profefe URL configured"}
    sink = rt.sink

    def sent(delivery: Delivery, where: str) -> None:
        rt.rounds.mark_delivered(delivery.capture_id, where)
        metrics.CAPTURES.labels(delivery.ptype, Outcome.OK, Reason.FROM_SPOOL).inc()
        log.info(
            "spooled profile delivered %s/%s %s",
            delivery.namespace,
            delivery.pod,
            delivery.ptype,
            extra={
                "namespace": delivery.namespace,
                "pod": delivery.pod,
                "type": delivery.ptype,
                "outcome": str(Outcome.OK),
                "reason": str(Reason.FROM_SPOOL),
                "where": where,
            },
        )

    def rejected(delivery: Delivery, reason: str, where: str) -> None:
        # profefe refused a spooled profile for good: kept in rejected/, or (disk full) not even that
        outcome = Outcome.REJECTED if where else Outcome.FAILED
        metrics.CAPTURES.labels(delivery.ptype, outcome, reason).inc()
        log.error(
            "spooled profile %s %s/%s %s (%s)",
            outcome,
            delivery.namespace,
            delivery.pod,
            delivery.ptype,
            reason,
            extra={
                "namespace": delivery.namespace,
                "pod": delivery.pod,
                "type": delivery.ptype,
                "outcome": str(outcome),
                "reason": reason,
                "where": where,
            },
        )

    def stored_already(delivery: Delivery) -> str | None:
        return sink.already_stored(delivery.service, delivery.ptype, delivery.capture_id)

    result = rt.spool.drain(sink.store, on_sent=sent, already_sent=stored_already, on_rejected=rejected)
    rt.update_spool_gauges()
    return {
        "sent": result.sent,
        "empty": result.empty,
        "rejected": result.rejected,
        "dropped": result.dropped,
        "left": result.left,
        "error": result.error,
    }


def drain_forever(stop: threading.Event, interval: float) -> None:
    """The worker's drain thread: every ``interval`` seconds while there is anything spooled (the spool's index
    says so without listing the directory)."""
    while not stop.wait(interval):
        try:
            rt = runtime()
            if rt.spool.stats()[0]:
                result = drain_once(rt)
                if result["sent"] or result["left"] or result.get("dropped"):
                    log.info("spool drain: %s", result)
        except Exception:  # the drainer must outlive any one bad moment (Redis restart, disk hiccup)
            log.exception("spool drain failed; trying again in %.0fs", interval)
