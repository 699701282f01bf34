"""The only module that talks to the Kubernetes API (through the official ``kubernetes`` client).

Pods are read as raw JSON dicts (``_preload_content=False``): turning 10,000 pods into ``V1Pod`` objects costs more
than the listing itself, and :func:`kprofefe_tasks.domain.targets.pod_to_target` works on the wire format.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config import kube_config
from kubernetes.config.config_exception import ConfigException

from kprofefe_tasks.domain.errors import (
    ConfigError,
    InvalidTargetError,
    KprofefeError,
    PermanentError,
    SkipError,
    TemporaryError,
)
from kprofefe_tasks.domain.targets import check_name, check_port

log = logging.getLogger(__name__)

RUNNING = "status.phase=Running"  # filtered by the API server: Pending/Succeeded pods never reach us
LIST_TIMEOUT = (5.0, 60.0)  # connect, read (s): one page of 500 pods is well under a MB
MAX_PROXY_PATH_CHARS = 320  # a base path (at most 256, profefe.com/path) and a profile name
# Segments of unreserved characters only: no `%` (so no encoded `.`, `/` or `\`, single or double), no `\`, no
# `?`/`#`/`;`, no empty segment (`//`). A trailing `/` is allowed; `.` and `..` segments are refused separately.
_PROXY_PATH_RE = re.compile(r"(/[A-Za-z0-9._~-]+)+/?|/")


def proxy_resource(namespace: str, pod: str, port: int, path: str) -> str:
    """``/api/v1/namespaces/<ns>/pods/<pod>:<port>/proxy<path>``, for a path that cannot leave that prefix.

    The API server and every proxy on the way resolve dot segments and may decode escapes, so the path must already
    be in its normal form: it is refused (never rewritten) when normalising or decoding it would change it.
    """
    check_name(namespace, "namespace", subdomain=False)
    check_name(pod, "pod", subdomain=True)
    check_port(port)
    plain = isinstance(path, str) and len(path) <= MAX_PROXY_PATH_CHARS and _PROXY_PATH_RE.fullmatch(path)
    segments = path.split("/") if isinstance(path, str) else []
    if not plain or "." in segments or ".." in segments or posixpath.normpath(path) != (path.rstrip("/") or "/"):
        shown = repr(path[:60]) if isinstance(path, str) else type(path).__name__
        raise InvalidTargetError(
            f"proxy path {shown} for {namespace}/{pod}: only a plain absolute path is sent through the API server "
            "(no '.' or '..' segment, escape, backslash, '//', query or fragment)",
            problem="bad-path",
        )
    return (
        f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(pod, safe='')}:{port}/proxy{quote(path, safe='/')}"
    )


@dataclass(frozen=True)
class KubeOptions:
    """kubectl's connection flags; all optional. In-cluster config wins when nothing is given."""

    kubeconfig: str | None = None
    context: str | None = None
    cluster: str | None = None
    user: str | None = None
    server: str | None = None
    token: str | None = None
    insecure_skip_tls_verify: bool = False
    request_timeout: float | None = None
    pool_size: int | None = None  # HTTP connections kept to the API server


def _plain(node: Any) -> Any:
    """The merger wraps list items in ConfigNode objects; the dict loader wants plain data."""
    node = getattr(node, "value", node)
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _load_kubeconfig(opts: KubeOptions, configuration: k8s.Configuration) -> str | None:
    """Load the kubeconfig like kubectl (``$KUBECONFIG`` paths merged), with ``--cluster``/``--user`` overriding the
    chosen context's; returns that context's namespace."""
    paths = opts.kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    config = kube_config.KubeConfigMerger(paths).config  # type: ignore[no-untyped-call]
    if config is None:
        raise ConfigException(f"no kubeconfig at {paths}")
    data: dict[str, Any] = _plain(config.value)
    context_name = opts.context or data.get("current-context")
    contexts = [dict(c) for c in data.get("contexts") or ()]
    chosen = next((c for c in contexts if c.get("name") == context_name), None)
    if chosen is None:
        raise ConfigException(f"context {context_name!r} not found in {paths}")
    body = dict(chosen.get("context") or {})
    if opts.cluster:
        body["cluster"] = opts.cluster
    if opts.user:
        body["user"] = opts.user
    chosen["context"] = body
    data["contexts"] = [chosen if c.get("name") == context_name else c for c in contexts]
    k8s_config.load_kube_config_from_dict(  # type: ignore[no-untyped-call]
        data, context=context_name, client_configuration=configuration
    )
    namespace = body.get("namespace")
    return str(namespace) if namespace else None


def _api_error(exc: ApiException, what: str) -> KprofefeError:
    """Classify an API error; the message carries the server's Status message, not the whole body."""
    message = str(exc.reason or "")
    try:
        body = json.loads(str(exc.body or "{}"))
        message = body.get("message") or message
    except (ValueError, TypeError, AttributeError):
        pass
    text = f"{what}: {exc.status} {message}"
    if exc.status in (401, 403):
        return PermanentError(text, reason="kube-forbidden" if exc.status == 403 else "kube-unauthorized")
    if exc.status == 404:
        return SkipError(text, reason="pod-gone")
    if exc.status == 410:  # a continue token expired mid-listing: start over next time
        return TemporaryError(text, reason="kube-expired")
    if exc.status in (429,) or (exc.status or 0) >= 500:
        return TemporaryError(text, reason="kube-unavailable")
    return PermanentError(text, reason="kube-error")


class Kube:
    """A connected Kubernetes client; build it with :meth:`connect`."""

    def __init__(self, api_client: k8s.ApiClient, namespace: str = "default") -> None:
        self.api_client = api_client
        self.core = k8s.CoreV1Api(api_client)
        #: the kube context's namespace (kube-profefe ignored it); "default" in-cluster
        self.namespace = namespace
        #: (connect, read) seconds for API calls; kubectl's --request-timeout sets the read part
        self.timeout = LIST_TIMEOUT

    @classmethod
    def connect(cls, options: KubeOptions | None = None) -> Kube:
        """In-cluster service account first (unless flags point elsewhere), then kubeconfig, like kubectl."""
        opts = options or KubeOptions()
        configuration = k8s.Configuration()
        namespace = "default"
        explicit = opts.kubeconfig or opts.context or opts.cluster or opts.user
        loaded = False
        if not explicit:
            try:
                k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
                loaded = True
                try:
                    with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as fh:
                        namespace = fh.read().strip() or namespace
                except OSError:
                    pass
            except ConfigException:
                pass
        if not loaded:
            try:
                namespace = _load_kubeconfig(opts, configuration) or namespace
            except (ConfigException, FileNotFoundError, TypeError, KeyError) as exc:
                if not opts.server:
                    raise ConfigError(
                        f"no Kubernetes configuration: not in a cluster and no usable kubeconfig ({exc})",
                        reason="no-kubeconfig",
                    ) from exc
        if opts.server:
            configuration.host = opts.server
        if opts.token:
            configuration.api_key = {"authorization": "Bearer " + opts.token}
        if opts.insecure_skip_tls_verify:
            configuration.verify_ssl = False
        if opts.pool_size:
            # the client's default pool (CPU count x 5) is smaller than a CLI's parallel captures
            configuration.connection_pool_maxsize = opts.pool_size
        kube = cls(k8s.ApiClient(configuration), namespace=namespace)
        if opts.request_timeout:
            kube.timeout = (min(LIST_TIMEOUT[0], opts.request_timeout), opts.request_timeout)
        return kube

    def _get(self, path: str, query: list[tuple[str, str]], timeout: tuple[float, float], accept: str) -> Any:
        """A raw GET through the client's auth and TLS; returns the unread urllib3 response.

        The generated per-endpoint methods would turn every pod into a pydantic model, which costs more than the
        listing itself at 10,000 pods; the wire JSON is all :mod:`kprofefe_tasks.domain.targets` needs.
        """
        method, url, headers, body, post = self.api_client.param_serialize(
            "GET", path, query_params=query, header_params={"Accept": accept}, auth_settings=["BearerToken"]
        )
        return self.api_client.call_api(method, url, headers, body, post, _request_timeout=timeout).response

    def _get_json(self, path: str, query: list[tuple[str, str]], what: str) -> Any:
        try:
            response = self._get(path, query, self.timeout, "application/json")
            data = response.data
        except (OSError, urllib3.exceptions.HTTPError) as exc:  # refused, reset, timed out, retries exhausted
            raise TemporaryError(f"{what}: API server unreachable: {exc}", reason="kube-unreachable") from exc
        if not 200 <= response.status < 300:
            raise _api_error(
                ApiException(status=response.status, reason=response.reason, body=data.decode("utf-8", "replace")), what
            )
        try:
            return json.loads(data)
        except ValueError as exc:
            raise TemporaryError(f"{what}: answer is not JSON", reason="kube-bad-answer") from exc

    def list_pods(
        self,
        namespace: str | None,
        *,
        label_selector: str = "",
        field_selector: str = RUNNING,
        page_size: int = 500,
    ) -> Iterator[dict[str, Any]]:
        """Yield pods page by page (``limit``/``continue``), selectors applied by the API server.

        ``namespace=None`` lists every namespace.
        """
        path = "/api/v1/pods" if namespace is None else f"/api/v1/namespaces/{quote(namespace, safe='')}/pods"
        what = f"listing pods in {namespace or 'all namespaces'}"
        token: str | None = None
        while True:
            query = [("limit", str(page_size))]
            if label_selector:
                query.append(("labelSelector", label_selector))
            if field_selector:
                query.append(("fieldSelector", field_selector))
            if token:
                query.append(("continue", token))
            page = self._get_json(path, query, what)
            for item in page.get("items") or ():
                # list items omit these; the helpers downstream expect a whole Pod
                item.setdefault("apiVersion", "v1")
                item.setdefault("kind", "Pod")
                yield item
            token = (page.get("metadata") or {}).get("continue") or None
            if not token:
                return

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The pod, or None when it no longer exists."""
        try:
            pod: dict[str, Any] = self._get_json(
                f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}",
                [],
                f"reading pod {namespace}/{name}",
            )
        except SkipError:  # 404
            return None
        return pod

    def proxy_get(
        self,
        namespace: str,
        pod: str,
        port: int,
        path: str,
        params: Mapping[str, str],
        timeout: tuple[float, float],
    ) -> Any:
        """GET a pod's HTTP endpoint through the API server (pods/proxy).

        Used from laptops and clusters where pod IPs are not routable. Returns the streaming urllib3 response for
        a 2xx (the caller reads it with its own caps and releases it), a :class:`ProxiedAnswer` for the pod's own
        error answers, and raises for the API server's errors (pod gone, no rights, pod unreachable).
        """
        resource = proxy_resource(namespace, pod, port, path)  # raises InvalidTargetError before any request
        what = f"proxy to {namespace}/{pod}:{port}"
        try:
            response = self._get(resource, list(params.items()), timeout, "*/*")
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            raise TemporaryError(f"{what}: API server unreachable: {exc}", reason="kube-unreachable") from exc
        if 200 <= response.status < 300:
            return response
        try:
            body = response.read(64 * 1024, decode_content=False)  # error pages are small; never read a flood
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            raise TemporaryError(f"{what}: {exc}", reason="kube-unreachable") from exc
        finally:
            response.release_conn()
        # The API server's own errors arrive as Status objects; anything else is the pod's own answer (Go's 404
        # "Unknown profile", 500 "cpu profiling already in use"), classified as if it had been fetched directly.
        if _is_status(body):
            raise _api_error(
                ApiException(status=response.status, reason=response.reason, body=body.decode("utf-8", "replace")), what
            )
        return ProxiedAnswer(int(response.status), dict(response.headers), body)


def _is_status(body: bytes) -> bool:
    if not body.lstrip().startswith(b"{"):
        return False
    try:
        return bool(json.loads(body).get("kind") == "Status")
    except (ValueError, AttributeError):
        return False


@dataclass
class ProxiedAnswer:
    """A pod's non-2xx answer relayed by the API server, already read (error bodies are small)."""

    status: int
    headers: dict[str, str]
    body: bytes
