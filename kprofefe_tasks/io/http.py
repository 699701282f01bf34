"""HTTP pieces shared by the doors to pods and to profefe: connection pools and ``Retry-After``."""

from __future__ import annotations

from collections.abc import Mapping

import requests
from requests.adapters import HTTPAdapter


def session(pools: int, per_host: int) -> requests.Session:
    """A pooled session that never retries on its own (our retries are counted) and ignores proxy variables."""
    web = requests.Session()
    adapter = HTTPAdapter(pool_connections=pools, pool_maxsize=per_host, max_retries=0)
    web.mount("http://", adapter)
    web.mount("https://", adapter)
    web.trust_env = False  # an HTTP_PROXY meant for the internet must not carry pod traffic
    return web


def retry_after(headers: Mapping[str, str]) -> float | None:
    """A ``Retry-After`` in seconds (the HTTP-date form is rare from these servers and ignored)."""
    for key, value in headers.items():
        if key.lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None
