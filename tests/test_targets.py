"""Pod → target or skip: every annotation rule, the service order, labels, and the skip reasons."""

from __future__ import annotations

from typing import Any

import pytest

from kprofefe_tasks.config.settings import PROFILE_TYPES
from kprofefe_tasks.domain.targets import DEFAULT_RULES, Skip, Target, TargetRules, pod_to_target, workload_name
from tests.podfactory import pod


def target(p: dict) -> Target:
    result = pod_to_target(p, PROFILE_TYPES)
    assert isinstance(result, Target), result
    return result


def skip(p: dict) -> Skip:
    result = pod_to_target(p, PROFILE_TYPES)
    assert isinstance(result, Skip), result
    return result


def test_annotated_running_ready_pod_becomes_a_target_with_defaults() -> None:
    t = target(pod(owner=("ReplicaSet", "api-7d9f8c6b5"), labels={"pod-template-hash": "7d9f8c6b5"}))
    assert (t.ip, t.port, t.path) == ("10.1.2.3", 6060, "/debug/pprof")
    assert t.types == PROFILE_TYPES
    assert t.service == "api"  # the Deployment's name, not the churning pod name
    assert dict(t.labels) == {
        "namespace": "web",
        "pod": "api-7d9f8c6b5-x2x2x",
        "container": "app",
        "node": "node-a",
        "from": "kprofefe-tasks",
    }
    assert t.key == "web/api-7d9f8c6b5-x2x2x"
    assert Target.from_dict(t.to_dict()) == t


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"enable": False}, "not-enabled"),
        ({"annotations": {"profefe.com/enable": "True"}}, "bad-enable"),
        ({"annotations": {"profefe.com/enable": "false"}}, "not-enabled"),
        ({"phase": "Pending"}, "not-running"),
        ({"phase": "Succeeded"}, "not-running"),
        ({"ready": False}, "not-ready"),
        ({"deleting": True}, "terminating"),
        ({"ip": None}, "no-ip"),
        ({"annotations": {"profefe.com/port": "abc"}}, "bad-port"),
        ({"annotations": {"profefe.com/port": "0"}}, "bad-port"),
        ({"annotations": {"profefe.com/port": "65536"}}, "bad-port"),
        ({"annotations": {"profefe.com/port": "-1"}}, "bad-port"),
        (
            {"annotations": {"profefe.com/port": "\uff16\uff10\uff16\uff10"}},
            "bad-port",
        ),  # full-width digits are not a port
        ({"annotations": {"profefe.com/port": "metrics"}}, "bad-port"),  # no container port by that name
        ({"annotations": {"profefe.com/path": "../../x"}}, "bad-path"),
        ({"annotations": {"profefe.com/path": "http://elsewhere/"}}, "bad-path"),
        ({"annotations": {"profefe.com/path": "/debug/../../etc"}}, "bad-path"),
        ({"annotations": {"profefe.com/path": "/x?y=1"}}, "bad-path"),
        ({"annotations": {"profefe.com/path": "/" + "a" * 10_000}}, "bad-path"),
        ({"annotations": {"profefe.com/path": "relative/path"}}, "bad-path"),
        ({"annotations": {"profefe.com/service": "   "}}, "bad-service"),
        ({"annotations": {"profefe.com/service": "a\nb"}}, "bad-service"),
        ({"annotations": {"profefe.com/service": "x" * 300}}, "bad-service"),
        ({"annotations": {"profefe.com/types": "heap,allocs"}}, "bad-types"),
        ({"annotations": {"profefe.com/types": "CPU"}}, "bad-types"),
        ({"annotations": {"profefe.com/types": " , "}}, "bad-types"),
        ({"annotations": {"profefe.com/container": "sidecar"}}, "bad-container"),
    ],
)
def test_skip_reasons(kwargs: dict, reason: str) -> None:
    s = skip(pod(**kwargs))
    assert s.reason == reason
    assert s.detail  # every skip says why in words


def test_port_annotation_with_blanks_is_read_and_named_ports_resolve() -> None:
    assert target(pod(annotations={"profefe.com/port": " 6061 "})).port == 6061
    p = pod(annotations={"profefe.com/port": "pprof"}, containers=[("app", [("http", 8080), ("pprof", 7070)])])
    assert target(p).port == 7070


def test_path_annotation_is_honoured_and_normalised() -> None:
    assert target(pod(annotations={"profefe.com/path": "/internal/pprof/"})).path == "/internal/pprof"


def test_types_annotation_restricts_and_dedups() -> None:
    assert target(pod(annotations={"profefe.com/types": "heap cpu,heap"})).types == ("heap", "cpu")


def test_service_order() -> None:
    annotated = pod(annotations={"profefe.com/service": "billing api, v2=x"}, labels={"app.kubernetes.io/name": "n"})
    assert target(annotated).service == "billing api, v2=x"  # kept verbatim; the client escapes it
    assert target(pod(labels={"app.kubernetes.io/name": "checkout"})).service == "checkout"
    assert target(pod(name="db-0", owner=("StatefulSet", "db"))).service == "db"
    assert target(pod(name="agent-xk2", owner=("DaemonSet", "agent"))).service == "agent"
    assert target(pod(name="bare")).service == "bare"
    # a ReplicaSet without the hash label keeps its own name rather than guessing a suffix away
    assert target(pod(name="rs-abc", owner=("ReplicaSet", "rs-1234"))).service == "rs-1234"


def test_workload_name_strips_only_the_pod_template_hash() -> None:
    meta = {
        "labels": {"pod-template-hash": "5d8f9"},
        "ownerReferences": [{"kind": "ReplicaSet", "name": "my-app-5d8f9", "controller": True}],
    }
    assert workload_name(meta) == "my-app"
    assert workload_name({"ownerReferences": [{"kind": "ReplicaSet", "name": "x", "controller": False}]}) is None


def test_multi_container_pod_is_captured_once_from_the_right_container() -> None:
    containers = [("istio-proxy", [15090]), ("app", [8080, 6060])]
    t = target(pod(containers=containers))
    assert t.container == "app"  # the container that declares the pprof port
    chosen = target(
        pod(containers=containers, annotations={"profefe.com/container": "istio-proxy", "profefe.com/port": "15090"})
    )
    assert (chosen.container, chosen.port) == ("istio-proxy", 15090)


def test_version_label_is_carried() -> None:
    t = target(pod(labels={"app.kubernetes.io/version": "1.4.2"}))
    assert dict(t.labels)["version"] == "1.4.2"


def test_ipv6_address_is_bracketed() -> None:
    assert target(pod(ip="fd00::12")).address == "[fd00::12]:6060"


def test_target_limit_keeps_a_stable_subset_and_skips_the_rest() -> None:
    from kprofefe_tasks.pipeline.discovery import limit_targets

    targets = [target(pod(name=f"api-{i}")) for i in range(20)]
    kept, over = limit_targets(targets, 5)
    assert len(kept) == 5 and len(over) == 15
    assert {t.key for t in kept}.isdisjoint({s.key for s in over})
    assert all(s.reason == "over-limit" for s in over)
    # the same pods every round, whatever order the API server listed them in
    kept_again, _ = limit_targets(list(reversed(targets)), 5)
    assert [t.key for t in kept_again] == [t.key for t in kept]
    # scaling up keeps the pods already chosen unless a new one hashes lower
    assert limit_targets(targets, 0) == (targets, [])


# -- target rules discovery shares with the capture task (see tests/test_security.py for the queue side) ----------


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("169.254.169.254", "link-local-ip"),  # every cloud's instance metadata (credentials)
        ("169.254.1.7", "link-local-ip"),
        ("fe80::1", "link-local-ip"),
        ("fd00:ec2::254", "link-local-ip"),  # AWS's IPv6 metadata address
        ("::ffff:169.254.169.254", "link-local-ip"),  # IPv4-mapped: a dual-stack socket dials the IPv4 address
        ("my-pod.example.com", "bad-ip"),  # a pod IP, never a name to resolve
        ("0.0.0.0", "bad-ip"),
    ],
)
def test_a_pod_whose_ip_must_not_be_dialled_is_a_skip_with_a_reason(ip: str, reason: str) -> None:
    s = skip(pod(ip=ip))
    assert s.reason == reason
    assert ip in s.detail


def test_link_local_pods_are_captured_when_explicitly_allowed() -> None:
    allowed = pod_to_target(pod(ip="169.254.3.4"), PROFILE_TYPES, TargetRules(allow_link_local=True))
    assert isinstance(allowed, Target) and allowed.ip == "169.254.3.4"
    assert Target.from_dict(allowed.to_dict(), allow_link_local=True) == allowed
    # the setting relaxes the address rule only
    hostname = pod_to_target(pod(ip="metadata.google.internal"), PROFILE_TYPES, TargetRules(allow_link_local=True))
    assert isinstance(hostname, Skip) and hostname.reason == "bad-ip"


def host_network(p: dict[str, Any], *, host_port: int | None = None, init_port: int | None = None) -> dict[str, Any]:
    p["spec"]["hostNetwork"] = True
    if host_port is not None:
        p["spec"]["containers"][0]["ports"][0]["hostPort"] = host_port
    if init_port is not None:  # a native sidecar (an init container with restartPolicy Always)
        p["spec"]["initContainers"] = [
            {"name": "agent", "restartPolicy": "Always", "ports": [{"containerPort": init_port}]}
        ]
    return p


@pytest.mark.parametrize(
    ("annotations", "containers", "extra", "captured_on"),
    [
        ({}, [("app", [6060])], {}, 6060),  # the default port, declared
        ({"profefe.com/port": "7070"}, [("app", [8080, 7070])], {}, 7070),
        ({"profefe.com/port": "pprof"}, [("app", [("pprof", 7071)])], {}, 7071),  # a named port is declared
        ({"profefe.com/port": "9100"}, [("app", [8080])], {"host_port": 9100}, 9100),
        ({"profefe.com/port": "9200"}, [("app", [8080])], {"init_port": 9200}, 9200),
        ({}, [("app", [8080])], {}, None),  # 6060 is nobody's: some other process on the node
        ({"profefe.com/port": "10250"}, [("app", [8080])], {}, None),  # the kubelet's port
        ({"profefe.com/port": "7070"}, [("app", [6060]), ("side", [])], {}, None),
    ],
)
def test_host_network_pods_are_scraped_only_on_a_declared_port(
    annotations: dict[str, str], containers: list[tuple[str, list[Any]]], extra: dict[str, int], captured_on: int | None
) -> None:
    p = host_network(pod(annotations=annotations, containers=containers), **extra)
    result = pod_to_target(p, PROFILE_TYPES)
    if captured_on is None:
        assert isinstance(result, Skip), result
        assert result.reason == "host-network-port"
        assert "hostNetwork" in result.detail and "KPROFEFE_HOSTNETWORK_ANY_PORT" in result.detail
        opted_in = pod_to_target(p, PROFILE_TYPES, TargetRules(hostnetwork_any_port=True))
        assert isinstance(opted_in, Target), opted_in
    else:
        assert isinstance(result, Target), result
        assert result.port == captured_on


def test_a_pod_without_host_network_keeps_any_annotated_port() -> None:
    assert target(pod(annotations={"profefe.com/port": "7070"}, containers=[("app", [8080])])).port == 7070


def test_a_named_pod_still_obeys_the_target_rules() -> None:
    """``kubectl profefe capture <pod>`` relaxes the enable annotation and readiness, never the address rules."""
    from kprofefe_tasks.pipeline.discovery import decide

    def named(p: dict[str, Any], rules: TargetRules = DEFAULT_RULES) -> Target | Skip:
        return decide(p, PROFILE_TYPES, requested=True, rules=rules)

    undeclared = host_network(pod(enable=False, ready=False, containers=[("app", [8080])]))
    declared = host_network(pod(enable=False, ready=False, containers=[("app", [6060])]))
    link_local = pod(enable=False, ip="169.254.169.254")
    assert [getattr(named(p), "reason", "target") for p in (undeclared, declared, link_local)] == [
        "host-network-port",
        "target",
        "link-local-ip",
    ]
    rules = TargetRules(allow_link_local=True, hostnetwork_any_port=True)
    assert isinstance(named(undeclared, rules), Target) and isinstance(named(link_local, rules), Target)
