"""The broker transport: kombu's Redis transport sharing one client per pool, chosen for redis:// URLs only."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from kombu import Connection

from kprofefe_tasks.config.settings import Settings
from kprofefe_tasks.worker import transport as broker
from kprofefe_tasks.worker.app import app as product_app
from kprofefe_tasks.worker.app import create_app
from tests.conftest import TEST_BROKER


@pytest.mark.parametrize(
    ("url", "ours"),
    [
        ("redis://127.0.0.1:6379/0", True),
        ("redis://:secret@redis:6379/2", True),
        ("rediss://redis:6380/0", False),  # kombu's own: TLS defaults
        ("sentinel://s1:26379;sentinel://s2:26379", False),
        ("amqp://guest:guest@127.0.0.1:5672//", False),
    ],
)
def test_transport_only_for_plain_redis(url: str, ours: bool) -> None:
    assert (broker.transport_for(url) == broker.TRANSPORT) is ours


@pytest.fixture
def product_app_stays_current() -> Iterator[None]:
    yield
    product_app.set_current()  # a new Celery() makes itself the current app
    product_app.set_default()


@pytest.mark.usefixtures("product_app_stays_current")
def test_transport_follows_the_url_celery_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    assert create_app(Settings(broker_url="redis://127.0.0.1:6379/0")).conf.broker_transport == broker.TRANSPORT
    # `celery -b amqp://...` sets CELERY_BROKER_URL, which Celery prefers to the configured URL
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    app = create_app(Settings(broker_url="redis://127.0.0.1:6379/0"))
    assert app.conf.broker_url.startswith("amqp://")
    assert app.conf.broker_transport is None


@pytest.mark.integration
def test_one_client_per_pool_and_messages_still_flow(redis_client: redis.Redis) -> None:
    with Connection(TEST_BROKER, transport=broker.TRANSPORT) as conn:
        channel = conn.default_channel
        assert isinstance(channel, broker.Channel)
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
            assert first.connection_pool is channel.pool
        assert channel._create_client(asynchronous=True) is not first  # the consumer's own, untouched

        queue = conn.SimpleQueue("kprofefe-test-broker")
        for n in range(3):
            queue.put({"n": n})
        got = []
        for _ in range(3):
            message = queue.get(timeout=5)
            got.append(message.payload["n"])
            message.ack()  # through the shared client's pipeline
        assert got == [0, 1, 2]
        assert redis_client.hlen("unacked") == 0

        old = first
        channel._after_fork()  # kombu drops the pools in a forked child; a new pool must get a new client
        with channel.conn_or_acquire() as fresh:
            assert fresh is not old and fresh.connection_pool is channel.pool
        queue.close()
