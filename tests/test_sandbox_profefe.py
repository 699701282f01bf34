"""The profefe double, over real sockets on 127.0.0.1, against the contract recorded from a real profefe."""

from __future__ import annotations

import gzip
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from kprofefe_sandbox.profefe import ProfefeServer, parse_labels, profile_type
from requests.adapters import HTTPAdapter

from tests.protobuf import f_len, f_var, varint

FIXTURES = Path(__file__).parent / "fixtures" / "pprof"
HEAP = (FIXTURES / "heap.pb.gz").read_bytes()
CPU = (FIXTURES / "cpu.pb.gz").read_bytes()
HEAP_CREATED_AT = "2026-11-26T00:41:56Z"  # heap.pb.gz's time_nanos, truncated to the second
ID = re.compile(r"[0-9a-v]{20}")
DAY = "from=2026-11-26T00:00:00&to=2026-11-27T00:00:00"
TIMEOUT = 10  # seconds, per request: generous for a loaded CI machine


def goroutine_profile(samples: int = 1, time_nanos: int = 0) -> bytes:
    """A small gzipped goroutine profile; ``samples=0`` is what Go serves for an idle block/mutex profile."""
    raw = f_len(1, f_var(1, 1) + f_var(2, 2))
    raw += b"".join(f_len(2, f_len(1, varint(1)) + f_len(2, varint(3))) for _ in range(samples))
    raw += b"".join(f_len(6, s) for s in (b"", b"goroutine", b"count"))
    if time_nanos:
        raw += f_var(9, time_nanos)
    return gzip.compress(raw)


def heap_at(moment: datetime) -> bytes:
    """heap.pb.gz with its time_nanos moved: a later field 9 wins in protobuf, for Go's decoder and ours."""
    nanos = int(moment.timestamp()) * 10**9
    return gzip.compress(gzip.decompress(HEAP) + f_var(9, nanos))


def at(hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 11, 26, hour, minute, second, tzinfo=UTC)


@pytest.fixture
def server() -> Iterator[ProfefeServer]:
    with ProfefeServer() as double:
        yield double


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def call(
    http: requests.Session, server: ProfefeServer, method: str, path: str, body: bytes | None = None
) -> requests.Response:
    return http.request(method, server.url + path, data=body, timeout=TIMEOUT)


def upload(http: requests.Session, server: ProfefeServer, query: str, body: bytes = HEAP) -> requests.Response:
    return call(http, server, "POST", f"/api/0/profiles?{query}", body)


# --- the recorded transcript, request by request ----------------------------------------------------------


def test_recorded_transcript(server: ProfefeServer, http: requests.Session) -> None:
    r = call(http, server, "GET", "/api/0/services")
    assert (r.status_code, r.json()) == (404, {"code": 404, "error": "nothing found"})

    r = upload(http, server, "service=api&type=heap&labels=namespace=web,pod=api-7d9f-x2")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    body = r.json()
    first_id = body["body"]["id"]
    assert ID.fullmatch(first_id)
    assert body == {
        "code": 200,
        "body": {
            "id": first_id,
            "type": "heap",
            "service": "api",
            "labels": [{"key": "namespace", "value": "web"}, {"key": "pod", "value": "api-7d9f-x2"}],
            "created_at": HEAP_CREATED_AT,
        },
    }
    # Go's json.Encoder: compact, newline-terminated, keys in struct order
    assert r.text == (
        f'{{"code":200,"body":{{"id":"{first_id}","type":"heap","service":"api","labels":[{{"key":"namespace",'
        f'"value":"web"}},{{"key":"pod","value":"api-7d9f-x2"}}],"created_at":"{HEAP_CREATED_AT}"}}}}\n'
    )

    r = upload(http, server, "service=api&type=allocs")
    assert (r.status_code, r.text) == (400, '{"code":400,"error":"bad request: unknown profile type"}\n')

    r = call(http, server, "POST", "/api/0/profiles?type=heap")
    assert (r.status_code, r.json()) == (400, {"code": 400, "error": 'bad request: missing "service"'})

    r = upload(http, server, "service=api&type=heap", b"not a profile")
    assert (r.status_code, r.json()) == (
        400,
        {
            "code": 400,
            "error": "malformed profile (could not parse pprof profile: parsing profile: unrecognized profile format)",
        },
    )

    r = call(http, server, "GET", "/api/0/profiles?service=api&type=heap")
    assert (r.status_code, r.json()) == (400, {"code": 400, "error": 'bad request: missing "from"'})

    r = call(http, server, "GET", f"/api/0/profiles?service=api&type=cpu&{DAY}")
    assert (r.status_code, r.json()) == (404, {"code": 404, "error": "nothing found"})

    r = call(http, server, "GET", f"/api/0/profiles?service=api&{DAY}&labels=namespace=web&limit=1")
    assert r.status_code == 200
    listed = r.json()
    assert listed == {
        "code": 200,
        "body": [
            {
                "id": first_id,
                "type": "heap",
                "service": "api",
                "labels": [{"key": "namespace", "value": "web"}, {"key": "pod", "value": "api-7d9f-x2"}],
                "created_at": HEAP_CREATED_AT,
            }
        ],
    }

    r = call(http, server, "GET", f"/api/0/profiles/merge?service=api&type=trace&{DAY}")
    assert (r.status_code, r.json()) == (405, {"code": 405, "error": "can't merge profiles of trace type"})

    assert server.upload_attempts == 4
    assert len(server.profiles) == 1


def test_services_404_on_an_empty_store_then_sorted(server: ProfefeServer, http: requests.Session) -> None:
    assert call(http, server, "GET", "/api/0/services").status_code == 404
    for service in ("web", "api", "web", "batch"):
        assert upload(http, server, f"service={service}&type=heap").status_code == 200
    r = call(http, server, "GET", "/api/0/services")
    assert (r.status_code, r.json()) == (200, {"code": 200, "body": ["api", "batch", "web"]})


def test_version(server: ProfefeServer, http: requests.Session) -> None:
    r = call(http, server, "GET", "/api/0/version")
    assert r.status_code == 200
    assert r.json() == {
        "code": 200,
        "body": {"version": "", "commit": "", "build_time": "", "go_version": "go1.19.8"},
    }


# --- upload rules -----------------------------------------------------------------------------------------


def test_labels_escaping(server: ProfefeServer, http: requests.Session) -> None:
    escaped = upload(http, server, "service=api&type=heap&labels=note%3Da%252Cb%253Dc%2Cteam%3Dcore")
    assert escaped.json()["body"]["labels"] == [{"key": "note", "value": "a,b=c"}, {"key": "team", "value": "core"}]

    naive = upload(http, server, "service=api&type=heap&labels=note=a%2Cb%3Dc")
    assert naive.json()["body"]["labels"] == [{"key": "b", "value": "c"}, {"key": "note", "value": "a"}]

    stored = server.profiles
    assert stored[0].labels == {"note": "a,b=c", "team": "core"}
    assert stored[1].labels == {"note": "a", "b": "c"}


def test_labels_are_trimmed_sorted_and_empty_keys_skipped(server: ProfefeServer, http: requests.Session) -> None:
    r = upload(http, server, "service=api&type=heap&labels=+zone+%3D+b+,=orphan,,a=1,flag")
    assert r.json()["body"]["labels"] == [
        {"key": "a", "value": "1"},
        {"key": "flag", "value": ""},
        {"key": "zone", "value": "b"},
    ]
    r = upload(http, server, "service=api&type=heap")
    assert "labels" not in r.json()["body"]  # omitted when empty, like Go's omitempty


def test_parse_labels_and_profile_type_helpers() -> None:
    assert parse_labels("pod=api-1,namespace=web") == [("namespace", "web"), ("pod", "api-1")]
    assert parse_labels("k=a%2Cb") == [("k", "a,b")]
    assert parse_labels("") == []
    assert [profile_type(t) for t in ("cpu", " heap ", "HEAP", "allocs", "profile", "", "trace")] == [
        "cpu",
        "heap",
        "unknown",
        "unknown",
        "unknown",
        "unknown",
        "trace",
    ]


def test_bad_label_escape_is_400(server: ProfefeServer, http: requests.Session) -> None:
    r = upload(http, server, "service=api&type=heap&labels=a%3D%25zz")
    assert r.status_code == 400
    assert r.json()["error"].startswith('bad request: bad labels "a=%zz"')


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (goroutine_profile(samples=0), "malformed profile (profile is empty: no samples)"),
        (b"", "malformed profile (could not parse pprof profile: parsing profile: empty input file)"),
        (gzip.compress(b""), "malformed profile (could not parse pprof profile: parsing profile: empty input file)"),
        (
            b"<!DOCTYPE html><title>pprof</title>",
            "malformed profile (could not parse pprof profile: parsing profile: unrecognized profile format)",
        ),
        (HEAP[:200], "malformed profile (could not parse pprof profile: decompressing profile: unexpected EOF)"),
    ],
    # gzip stamps the time into its header: named ids keep the test names stable (pytest-xdist compares them)
    ids=["zero-samples", "empty", "empty-gzip", "html", "truncated"],
)
def test_unusable_bodies_are_400_and_not_stored(
    server: ProfefeServer, http: requests.Session, body: bytes, error: str
) -> None:
    r = upload(http, server, "service=api&type=block", body)
    assert (r.status_code, r.json()) == (400, {"code": 400, "error": error})
    assert server.profiles == []
    assert server.upload_attempts == 1


def test_created_at_comes_from_time_nanos_then_the_parameter_then_now(
    server: ProfefeServer, http: requests.Session
) -> None:
    # time_nanos wins over created_at
    r = upload(http, server, "service=api&type=heap&created_at=2020-01-02T03:04:05")
    assert r.json()["body"]["created_at"] == HEAP_CREATED_AT

    # no time_nanos: the parameter
    r = upload(http, server, "service=api&type=goroutine&created_at=2020-01-02T03:04:05", goroutine_profile())
    assert r.json()["body"]["created_at"] == "2020-01-02T03:04:05Z"

    # neither: now, to the second
    before = datetime.now(UTC).replace(microsecond=0)
    r = upload(http, server, "service=api&type=goroutine", goroutine_profile())
    after = datetime.now(UTC)
    created = datetime.strptime(r.json()["body"]["created_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before <= created <= after

    r = upload(http, server, "service=api&type=heap&created_at=2020-01-02T03:04:05Z")
    assert r.status_code == 400
    assert r.json()["error"].startswith("bad request: ")


def test_trace_bodies_are_stored_unparsed(server: ProfefeServer, http: requests.Session) -> None:
    r = upload(http, server, "service=api&type=trace", b"go 1.19 trace\x00\x01")
    assert r.status_code == 200
    assert r.json()["body"]["type"] == "trace"
    assert server.profiles[0].body == b"go 1.19 trace\x00\x01"


def test_ids_are_badger_shaped_unique_and_increasing(server: ProfefeServer, http: requests.Session) -> None:
    ids = [upload(http, server, "service=api&type=heap").json()["body"]["id"] for _ in range(30)]
    assert all(ID.fullmatch(i) for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_no_body_size_limit_and_chunked_uploads(server: ProfefeServer, http: requests.Session) -> None:
    # 3 MB of incompressible padding in an unknown field: still a valid, large profile
    raw = gzip.decompress(CPU) + f_len(20, bytes(range(256)) * 12_000)
    big = gzip.compress(raw, 1)
    assert upload(http, server, "service=api&type=cpu", big).status_code == 200

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(HEAP), 100):
            yield HEAP[start : start + 100]

    r = http.post(server.url + "/api/0/profiles?service=api&type=heap", data=chunks(), timeout=TIMEOUT)
    assert r.status_code == 200
    assert [p.body for p in server.profiles] == [big, HEAP]


def test_other_methods_on_profiles_get_an_empty_200(server: ProfefeServer, http: requests.Session) -> None:
    for method in ("PUT", "DELETE", "PATCH"):
        r = call(http, server, method, "/api/0/profiles?service=api", b"ignored")
        assert (r.status_code, r.content) == (200, b"")
    assert server.upload_attempts == 0 and server.profiles == []


def test_unknown_path_is_go_404(server: ProfefeServer, http: requests.Session) -> None:
    r = call(http, server, "GET", "/api/1/profiles")
    assert (r.status_code, r.text) == (404, "404 page not found\n")


# --- list and merge ---------------------------------------------------------------------------------------


@pytest.fixture
def three_heaps(server: ProfefeServer, http: requests.Session) -> list[str]:
    """Profiles at 01:00, 02:00 (team=b), 03:00 uploaded out of order, plus a cpu profile at 00:41:56."""
    ids = {}
    for hour, team in ((3, "a"), (1, "a"), (2, "b")):
        r = upload(http, server, f"service=api&type=heap&labels=team={team},env=prod", heap_at(at(hour)))
        ids[hour] = r.json()["body"]["id"]
    assert upload(http, server, "service=api&type=cpu", CPU).status_code == 200
    assert upload(http, server, "service=other&type=heap", heap_at(at(2))).status_code == 200
    return [ids[1], ids[2], ids[3]]


def listed(http: requests.Session, server: ProfefeServer, query: str) -> list[str]:
    r = call(http, server, "GET", f"/api/0/profiles?service=api&{query}")
    assert r.status_code == 200, r.text
    return [p["id"] for p in r.json()["body"]]


def test_list_is_oldest_first_and_limit_keeps_the_newest(
    server: ProfefeServer, http: requests.Session, three_heaps: list[str]
) -> None:
    assert listed(http, server, f"type=heap&{DAY}") == three_heaps
    assert listed(http, server, f"type=heap&{DAY}&limit=2") == three_heaps[1:]
    assert listed(http, server, f"type=heap&{DAY}&limit=0") == three_heaps
    assert len(listed(http, server, DAY)) == 4  # no type: every type
    assert len(listed(http, server, f"type=allocs&{DAY}")) == 4  # unknown type: every type, too


def test_list_filters_by_labels_anded_and_inclusive_time_bounds(
    server: ProfefeServer, http: requests.Session, three_heaps: list[str]
) -> None:
    assert listed(http, server, f"{DAY}&labels=team=a") == [three_heaps[0], three_heaps[2]]
    assert listed(http, server, f"{DAY}&labels=team=a,env=prod") == [three_heaps[0], three_heaps[2]]
    r = call(http, server, "GET", f"/api/0/profiles?service=api&{DAY}&labels=team=a,env=dev")
    assert r.status_code == 404
    assert listed(http, server, "type=heap&from=2026-11-26T01:00:00&to=2026-11-26T02:00:00") == three_heaps[:2]
    # Go's time.Parse accepts fractional seconds the layout does not mention
    assert listed(http, server, "type=heap&from=2026-11-26T01:59:59.5&to=2026-11-26T02:00:00.0") == [three_heaps[1]]


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("to=2026-11-27T00:00:00", 'bad request: missing "from"'),
        ("from=2026-11-26T00:00:00", 'bad request: missing "to"'),
        (
            "from=2026-11-26T00:00:00Z&to=2026-11-27T00:00:00",
            'bad request: bad "from" timestamp "2026-11-26T00:00:00Z": '
            'time in unsupported format "2026-11-26T00:00:00Z"',
        ),
        (
            "from=2026-11-26T00:00:00&to=2026-11-27T00:00:00%2B01:00",
            'bad request: bad "to" timestamp "2026-11-27T00:00:00+01:00": '
            'time in unsupported format "2026-11-27T00:00:00+01:00"',
        ),
        (
            "from=2026-11-26&to=2026-11-27T00:00:00",
            'bad request: bad "from" timestamp "2026-11-26": time in unsupported format "2026-11-26"',
        ),
        (
            "from=2026-02-30T00:00:00&to=2026-11-27T00:00:00",
            'bad request: bad "from" timestamp "2026-02-30T00:00:00": time in unsupported format "2026-02-30T00:00:00"',
        ),
        (
            "from=2026-11-28T00:00:00&to=2026-11-27T00:00:00",
            "bad request: profile created time min after max: "
            "min 2026-11-28 00:00:00 +0000 UTC, max 2026-11-27 00:00:00 +0000 UTC",
        ),
        (f"{DAY}&limit=ten", 'bad request: bad limit "ten": strconv.Atoi: parsing "ten": invalid syntax'),
    ],
)
def test_list_parameter_errors(server: ProfefeServer, http: requests.Session, query: str, error: str) -> None:
    r = call(http, server, "GET", f"/api/0/profiles?service=api&{query}")
    assert (r.status_code, r.json()) == (400, {"code": 400, "error": error})


def test_list_and_merge_need_a_service(server: ProfefeServer, http: requests.Session) -> None:
    for path in ("/api/0/profiles", "/api/0/profiles/merge"):
        r = call(http, server, "GET", f"{path}?type=heap&{DAY}")
        assert (r.status_code, r.json()["error"]) == (400, 'bad request: missing "service"')


def test_merge(server: ProfefeServer, http: requests.Session, three_heaps: list[str]) -> None:
    r = call(http, server, "GET", f"/api/0/profiles/merge?service=api&type=heap&{DAY}")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.headers["Content-Disposition"] == 'attachment; filename="heap"'
    # the double's merge is the newest matching profile, unchanged
    assert r.content == heap_at(at(3))

    r = call(http, server, "GET", f"/api/0/profiles/merge?service=api&type=heap&{DAY}&labels=team=b")
    assert r.content == heap_at(at(2))

    r = call(http, server, "GET", f"/api/0/profiles/merge?service=api&type=goroutine&{DAY}")
    assert (r.status_code, r.json()) == (404, {"code": 404, "error": "nothing found"})

    r = call(http, server, "GET", f"/api/0/profiles/merge?service=api&{DAY}")
    assert (r.status_code, r.json()) == (405, {"code": 405, "error": "can't merge profiles of unknown type"})


def test_get_by_id(server: ProfefeServer, http: requests.Session, three_heaps: list[str]) -> None:
    r = call(http, server, "GET", f"/api/0/profiles/{three_heaps[0]}")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.content == heap_at(at(1))

    r = call(http, server, "GET", f"/api/0/profiles/{three_heaps[2]}+{three_heaps[0]}")
    assert (r.status_code, r.content) == (200, heap_at(at(3)))

    unknown = "dc3o6er8di1ep1e3v08g"
    r = call(http, server, "GET", f"/api/0/profiles/{unknown}")
    assert r.status_code == 500
    assert r.text == '{"code":500,"error":"failed to get profile by id \\"' + unknown + '\\""}\n'
    r = call(http, server, "GET", f"/api/0/profiles/{three_heaps[0]}+{unknown}")
    assert r.status_code == 500


# --- test hooks -------------------------------------------------------------------------------------------


def test_fail_next(server: ProfefeServer, http: requests.Session) -> None:
    server.fail_next(2, 503, "upstream down", content_type="text/plain")
    for _ in range(2):
        r = upload(http, server, "service=api&type=heap")
        assert (r.status_code, r.text, r.headers["Content-Type"]) == (503, "upstream down", "text/plain")
    assert upload(http, server, "service=api&type=heap").status_code == 200
    server.fail_next(1, 500, b'{"code":500,"error":"internal server error"}')
    assert upload(http, server, "service=api&type=heap").json() == {"code": 500, "error": "internal server error"}
    assert server.upload_attempts == 4
    assert server.count() == 1


def test_hang_next_delays_then_answers(server: ProfefeServer, http: requests.Session) -> None:
    server.hang_next(1, 0.5)
    started = time.monotonic()
    r = upload(http, server, "service=api&type=heap")
    assert r.status_code == 200
    assert time.monotonic() - started >= 0.45
    assert server.count() == 1


def test_a_hanging_upload_times_the_client_out_and_stop_cuts_it_short() -> None:
    server = ProfefeServer().start()
    try:
        server.hang_next(1, 60)
        with pytest.raises(requests.ReadTimeout):
            requests.post(server.url + "/api/0/profiles?service=api&type=heap", data=HEAP, timeout=0.3)
        assert server.upload_attempts == 1
    finally:
        started = time.monotonic()
        server.stop()
    assert time.monotonic() - started < 5
    assert server.count() == 0  # dropped, not stored after the sleep


def test_down_refuses_connections_and_up_recovers_on_the_same_port(
    server: ProfefeServer, http: requests.Session
) -> None:
    assert upload(http, server, "service=api&type=heap").status_code == 200  # leaves a pooled keep-alive socket
    port = server.port

    server.down()
    assert not server.is_up
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
    with pytest.raises(requests.ConnectionError):
        upload(http, server, "service=api&type=heap")  # the pooled connection was cut too

    server.up()
    assert server.port == port
    assert upload(http, server, "service=api&type=heap").status_code == 200
    assert server.count(service="api") == 2  # state survives down/up
    assert server.upload_attempts == 2  # the refused attempt never reached the server


def test_keep_alive_reuses_one_connection(server: ProfefeServer, http: requests.Session) -> None:
    for _ in range(20):
        assert upload(http, server, "service=api&type=heap").status_code == 200
    adapter = http.get_adapter(server.url)
    assert isinstance(adapter, HTTPAdapter)
    pools = adapter.poolmanager.pools
    keys = pools.keys()  # the container refuses plain iteration
    assert [pools[key].num_connections for key in keys] == [1]  # one pool, one TCP connection


def test_concurrent_uploads(server: ProfefeServer) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            with requests.Session() as session:
                for _ in range(25):
                    r = session.post(
                        f"{server.url}/api/0/profiles?service=svc{n}&type=heap", data=HEAP, timeout=TIMEOUT
                    )
                    assert r.status_code == 200
        except BaseException as exc:  # surfaced below: a thread's assertion would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert server.count() == 200
    assert len({p.id for p in server.profiles}) == 200
    assert server.count(service="svc3") == 25


def test_inspection_helpers(server: ProfefeServer, http: requests.Session) -> None:
    upload(http, server, "service=api&type=heap&labels=team=a,env=prod")
    upload(http, server, "service=api&type=cpu", CPU)
    call(http, server, "GET", "/api/0/version?x=1")
    assert server.count(type="heap") == 1
    assert server.count(labels={"team": "a"}) == 1
    assert server.count(labels={"team": "a", "env": "dev"}) == 0
    with pytest.raises(TypeError):
        server.count(colour="red")
    assert [(r.method, r.path) for r in server.requests][-1] == ("GET", "/api/0/version")
    assert server.requests[-1].query == "x=1"

    copy = server.profiles
    copy[0].labels["team"] = "mutated"
    assert server.profiles[0].labels["team"] == "a"
    assert server.profiles[0].created_at == datetime(2026, 11, 26, 0, 41, 56, tzinfo=UTC)
    assert server.profiles[1].created_at - server.profiles[0].created_at < timedelta(seconds=1)

    server.clear()
    assert (server.profiles, server.requests, server.upload_attempts) == ([], [], 0)


def test_cli_serves_until_interrupted() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kprofefe_sandbox.profefe", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once listening
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match, line
        r = requests.get(match.group(0) + "/api/0/version", timeout=TIMEOUT)
        assert r.json()["body"]["go_version"] == "go1.19.8"
    finally:
        proc.send_signal(2)  # SIGINT, like Ctrl-C
        try:
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0
