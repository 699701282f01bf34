"""The only module that talks to profefe's HTTP API (``/api/0/...``), quirks included.

Facts that shape this client (see the README's profefe section):
- label values containing ``,`` or ``=`` must be escaped per component and then the whole parameter once more,
  or profefe silently splits them into other labels;
- ``from``/``to`` are exactly ``2006-01-02T15:04:05`` in UTC (no ``Z``);
- "nothing matched" is a 404 ``nothing found``, which this client turns into an empty result;
- a zero-sample profile is answered ``400 ... no samples``: nothing to store, not a failure.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import requests

from kprofefe_tasks.domain.errors import KprofefeError, PermanentError, SkipError, TemporaryError
from kprofefe_tasks.io.http import retry_after

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"  # profefe's only accepted timestamp format, read as UTC
PROFEFE_TYPES = ("cpu", "heap", "block", "mutex", "goroutine", "threadcreate", "other", "trace")


def encode_labels(labels: Iterable[tuple[str, str]] | Mapping[str, str]) -> str:
    """``k=v,k2=v2`` with each key and value escaped, so ``,`` and ``=`` inside values survive.

    The result is escaped once more as a query parameter (``requests`` does that), which profefe undoes before
    splitting; then it unescapes each key and value.
    """
    items = labels.items() if isinstance(labels, Mapping) else labels
    return ",".join(f"{quote(str(k), safe='')}={quote(str(v), safe='')}" for k, v in items)


def format_time(moment: datetime) -> str:
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.strftime(TIME_FORMAT)


@dataclass(frozen=True)
class StoredProfile:
    """profefe's description of a stored profile."""

    id: str
    type: str
    service: str
    labels: dict[str, str] = field(default_factory=dict)
    created_at: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StoredProfile:
        return cls(
            id=str(data.get("id", "")),
            type=str(data.get("type", "")),
            service=str(data.get("service", "")),
            labels={str(x.get("key")): str(x.get("value")) for x in data.get("labels") or ()},
            created_at=str(data.get("created_at", "")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "service": self.service,
            "type": self.type,
            "created_at": self.created_at,
            "labels": dict(self.labels),
        }


class ProfefeClient:
    """A profefe server at ``base_url``. Reuses one HTTP session (connection pool) for all calls."""

    def __init__(
        self,
        base_url: str,
        *,
        session: requests.Session | None = None,
        connect_timeout: float = 3.0,
        read_timeout: float = 30.0,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise PermanentError(f"profefe URL {base_url!r} must start with http:// or https://", reason="config")
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        self.timeout = (connect_timeout, read_timeout)

    def _request(
        self, method: str, path: str, params: Mapping[str, Any], data: bytes | None = None
    ) -> requests.Response:
        url = f"{self.base_url}/api/0/{path}"
        what = f"profefe {method} /api/0/{path}"
        try:
            response = self.session.request(method, url, params=params, data=data, timeout=self.timeout)
        except requests.Timeout as exc:
            raise TemporaryError(f"{what}: timed out", reason="profefe-timeout") from exc
        except requests.ConnectionError as exc:
            raise TemporaryError(
                f"{what}: unreachable ({exc.__class__.__name__})", reason="profefe-unreachable"
            ) from exc
        except requests.RequestException as exc:
            raise TemporaryError(f"{what}: {exc}", reason="profefe-error") from exc
        if response.status_code >= 400:
            raise _error(response, what)
        return response

    def _json_body(self, response: requests.Response, what: str) -> Any:
        try:
            return response.json()["body"]
        except (ValueError, KeyError, TypeError) as exc:
            # a 200 that is not profefe's envelope: a proxy or maintenance page in front of profefe
            raise TemporaryError(
                f"{what}: answer is not profefe's JSON ({response.text[:80]!r})", reason="profefe-bad-answer"
            ) from exc

    def upload(
        self,
        body: bytes,
        *,
        service: str,
        ptype: str,
        labels: Iterable[tuple[str, str]] | Mapping[str, str] = (),
        created_at: datetime | None = None,
    ) -> StoredProfile:
        """Store one profile; returns profefe's record of it."""
        params: dict[str, str] = {"service": service, "type": ptype}
        encoded = encode_labels(labels)
        if encoded:
            params["labels"] = encoded
        if created_at is not None:
            params["created_at"] = format_time(created_at)
        response = self._request("POST", "profiles", params, data=body)
        stored = self._json_body(response, "profefe upload")
        if not isinstance(stored, dict) or not stored.get("id"):
            # a 200 without a stored profile's description: we cannot know it was stored, so it is not
            raise TemporaryError(
                f"profefe upload: 200 without a profile id ({response.text[:80]!r})", reason="profefe-bad-answer"
            )
        return StoredProfile.from_json(stored)

    def find(
        self,
        *,
        service: str,
        since: datetime,
        until: datetime,
        ptype: str | None = None,
        labels: Mapping[str, str] | None = None,
        limit: int | None = None,
    ) -> list[StoredProfile]:
        """Profiles of a service in a time range, oldest first; empty when none match."""
        params: dict[str, Any] = {"service": service, "from": format_time(since), "to": format_time(until)}
        if ptype:
            params["type"] = ptype
        if labels:
            params["labels"] = encode_labels(labels)
        if limit:
            params["limit"] = str(limit)
        try:
            response = self._request("GET", "profiles", params)
        except SkipError:
            return []
        return [StoredProfile.from_json(p) for p in self._json_body(response, "profefe list") or ()]

    def get(self, profile_id: str) -> bytes:
        """The raw stored profile (``id1+id2`` merges them)."""
        return self._request("GET", f"profiles/{quote(profile_id, safe='+')}", {}).content

    def merge(
        self, *, service: str, ptype: str, since: datetime, until: datetime, labels: Mapping[str, str] | None = None
    ) -> bytes:
        params: dict[str, Any] = {
            "service": service,
            "type": ptype,
            "from": format_time(since),
            "to": format_time(until),
        }
        if labels:
            params["labels"] = encode_labels(labels)
        return self._request("GET", "profiles/merge", params).content

    def services(self) -> list[str]:
        try:
            response = self._request("GET", "services", {})
        except SkipError:
            return []
        return [str(s) for s in self._json_body(response, "profefe services") or ()]

    def version(self) -> dict[str, Any]:
        body = self._json_body(self._request("GET", "version", {}), "profefe version")
        return dict(body) if isinstance(body, dict) else {}


def _error(response: requests.Response, what: str) -> KprofefeError:
    """Classify a profefe error answer by status and profefe's own message."""
    status = response.status_code
    message = response.text[:300]
    try:
        message = str(json.loads(response.content).get("error", message))
    except (ValueError, AttributeError):
        pass  # an HTML page from a proxy: keep the clipped text
    text = f"{what}: {status} {message}"
    if status == 400 and "no samples" in message:
        return SkipError(text, reason="empty")
    if status == 404 and "nothing found" in message:
        return SkipError(text, reason="nothing-found")
    if status in (408, 425, 429) or status >= 500:
        return TemporaryError(text, reason=f"profefe-{status}", delay=retry_after(response.headers))
    return PermanentError(text, reason=f"profefe-{status}")
