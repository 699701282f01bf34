"""kombu's Redis transport, with one Redis client per connection pool instead of one per operation.

kombu builds a new ``redis.Redis`` object for every publish and every acknowledgement (``Channel.conn_or_acquire``
calls ``_create_client`` each time). The object only wraps the channel's connection pool, but redis-py 8's
constructor costs about 60 µs, and a capture worker does it for each task event and each ack: 8-10% of its CPU in
bench/ (py-spy, RESULTS.md). A ``redis.Redis`` over a pool is safe to share between threads and greenlets (every
command checks a connection out of the pool), so this channel keeps one per pool and hands it out again.

Everything else is kombu's. :mod:`kprofefe_tasks.worker.app` selects it as ``broker_transport`` for ``redis://`` brokers
(:func:`transport_for`); ``rediss://``, ``unix://`` and ``sentinel://`` keep kombu's own transport, with its TLS and
failover handling.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

TRANSPORT = "kprofefe_tasks.worker.transport:Transport"


def transport_for(url: str) -> str | None:
    """Celery's ``broker_transport`` for a broker URL: this module's for ``redis://``, else None (kombu picks by
    the URL's scheme)."""
    return TRANSPORT if url.startswith("redis://") else None


class Channel(kombu_redis.Channel):
    _shared_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the consumer's BRPOP client: kombu caches that one itself
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        pool = self.pool
        client = self._shared_client
        if client is None or client.connection_pool is not pool:  # a reconnect replaces the pool
            client = self._shared_client = super()._create_client()  # type: ignore[no-untyped-call]
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
