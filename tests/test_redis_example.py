"""``examples/redis_server.py`` against real clients: redis-py (with hiredis's parser and
with its pure-Python one), redis-cli and redis-benchmark (Debian ``redis-tools``,
installed on first use), plus raw sockets for protocol errors.

One server subprocess per module on a free loopback port (``--port 0``; it prints
``listening on HOST:PORT``), stopped with SIGTERM at the end and required to exit 0.
Every wait is bounded.
"""

from __future__ import annotations

import csv
import fnmatch
import importlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from example_process import EXAMPLES, assert_stops_cleanly, example_env, example_server
from hypothesis import given, settings
from hypothesis import strategies as st
from system_packages import require_program

redis = pytest.importorskip("redis", reason="redis-py is a test dependency (pip install redis)")
from redis._parsers import _RESP2Parser  # noqa: E402

if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))
redis_server: Any = importlib.import_module("redis_server")  # the example, for its matcher

SOCKET_TIMEOUT = 10.0

pytestmark = [pytest.mark.timeout(180), pytest.mark.io]


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with example_server("redis_server.py", "--quiet") as (proc, port):
        yield port
        assert_stops_cleanly(proc)


@pytest.fixture(params=["hiredis", "python"])
def r(request: pytest.FixtureRequest, port: int) -> Iterator[Any]:
    """A redis-py client (RESP2) with hiredis's parser or the pure-Python one; the store
    is flushed first."""
    kwargs: dict[str, Any] = {}
    if request.param == "python":
        kwargs["parser_class"] = _RESP2Parser
    elif not redis.utils.HIREDIS_AVAILABLE:
        pytest.skip("hiredis is not installed")
    pool = redis.ConnectionPool(host="127.0.0.1", port=port, protocol=2,
                                socket_timeout=SOCKET_TIMEOUT, **kwargs)
    client = redis.Redis(connection_pool=pool)
    client.flushall()
    yield client
    client.close()
    pool.disconnect()


def raw_exchange(port: int, data: bytes, *, until_close: bool = False) -> bytes:
    """Send ``data``, return what comes back (until EOF, or the first pause)."""
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as s:
        s.sendall(data)
        got = b""
        if not until_close:
            s.settimeout(0.5)
        try:
            while chunk := s.recv(65536):
                got += chunk
        except TimeoutError:
            pass
        return got


# -- redis-py: every command -------------------------------------------------------------


def test_connection_commands(r: Any, port: int) -> None:
    assert r.ping() is True
    assert r.echo(b"hi\x00there") == b"hi\x00there"
    assert raw_exchange(port, b"PING payload\r\n") == b"$7\r\npayload\r\n"
    assert r.client_id() >= 1
    assert r.client_setname("tester") is True
    assert r.client_getname() == "tester"  # redis-py decodes it
    assert r.execute_command("SELECT", 0) in (True, b"OK")  # redis-py may map OK to True
    with pytest.raises(redis.ResponseError, match="DB index is out of range"):
        r.execute_command("SELECT", 1)
    assert r.info()["redis_version"]
    assert r.config_get("save") == {"save": ""}


def test_get_set_and_options(r: Any) -> None:
    assert r.get("missing") is None
    assert r.set("k", "v") is True
    assert r.get("k") == b"v"
    assert r.set("k", "w", nx=True) is None
    assert r.set("new", "x", xx=True) is None
    assert r.get("new") is None
    assert r.set("new", "x", nx=True) is True
    assert r.set("k", "w", xx=True) is True
    assert r.set("k", "z", get=True) == b"w"
    assert r.set("k", "v", ex=100) is True
    assert 99 <= r.ttl("k") <= 100
    assert r.set("k", "v2", keepttl=True) is True
    assert 99 <= r.ttl("k") <= 100
    assert r.set("k", "v3") is True
    assert r.ttl("k") == -1
    assert r.set("k", "v", px=100_000) is True
    assert 99_000 < r.pttl("k") <= 100_000
    with pytest.raises(redis.ResponseError, match=r"^syntax error$"):
        r.execute_command("SET", "k", "v", "NX", "XX")
    with pytest.raises(redis.ResponseError, match="invalid expire time in 'set' command"):
        r.execute_command("SET", "k", "v", "EX", 0)
    with pytest.raises(redis.ResponseError, match="value is not an integer or out of range"):
        r.execute_command("SET", "k", "v", "EX", "soon")


def test_expiry(r: Any) -> None:
    assert r.set("short", "v", px=100) is True
    assert r.set("keep", "v") is True
    assert r.expire("keep", 100) is True
    assert r.ttl("keep") == 100
    assert r.expire("missing", 10) is False
    assert r.ttl("missing") == -2
    assert r.persist("keep") is True and r.ttl("keep") == -1
    time.sleep(0.3)
    assert r.get("short") is None and r.exists("short") == 0
    # Background expiry removes keys nobody reads again.
    r.set("lazy", "v", px=50)
    deadline = time.monotonic() + 5
    while r.dbsize() != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.dbsize() == 1  # only "keep"
    assert r.expire("keep", -1) is True and r.exists("keep") == 0


def test_del_exists_keys_flushall(r: Any) -> None:
    r.mset({"user:1": "a", "user:2": "b", "user:10": "c", "other": "d", "h[x]llo": "e"})
    assert r.exists("user:1", "user:1", "missing") == 2
    assert sorted(r.keys("user:?")) == [b"user:1", b"user:2"]
    assert sorted(r.keys("user:*")) == [b"user:1", b"user:10", b"user:2"]
    assert sorted(r.keys("user:[^2]*")) == [b"user:1", b"user:10"]
    assert sorted(r.keys("user:[1-2]")) == [b"user:1", b"user:2"]
    assert r.keys("h\\[x\\]llo") == [b"h[x]llo"]
    assert len(r.keys("*")) == 5
    assert r.delete("user:1", "user:2", "missing") == 2
    assert r.flushall() is True
    assert r.keys("*") == [] and r.dbsize() == 0


def test_counters_and_their_errors(r: Any) -> None:
    assert r.incr("n") == 1
    assert r.incr("n") == 2
    assert r.decr("n") == 1
    assert r.decr("m") == -1
    assert r.incrby("n", 10) == 11
    r.set("big", str((1 << 63) - 1))
    with pytest.raises(redis.ResponseError, match="increment or decrement would overflow"):
        r.incr("big")
    for bad in ("text", "1.5", " 1", "01", ""):
        r.set("s", bad)
        with pytest.raises(redis.ResponseError,
                           match=r"^value is not an integer or out of range$"):
            r.incr("s")


def test_mset_mget(r: Any) -> None:
    assert r.mset({"a": "1", "b": b"\x00"}) is True
    assert r.mget("a", "b", "missing") == [b"1", b"\x00", None]
    with pytest.raises(redis.ResponseError,
                       match=r"^wrong number of arguments for 'mset' command$"):
        r.execute_command("MSET", "a", "1", "b")


def test_errors_are_redis_errors(r: Any) -> None:
    with pytest.raises(redis.ResponseError,
                       match=r"^wrong number of arguments for 'get' command$"):
        r.execute_command("GET")
    with pytest.raises(redis.ResponseError,
                       match=r"^unknown command 'NOPE', with args beginning with: 'a' 'b' $"):
        r.execute_command("NOPE", "a", "b")
    assert r.rpush("list", "x", "y") == 2
    assert r.lrange("list", 0, -1) == [b"x", b"y"]
    assert r.type("list") == b"list" and r.type("k") == b"none"
    for command in (("GET", "list"), ("INCR", "list"), ("SET", "list", "v", "GET")):
        with pytest.raises(redis.ResponseError) as info:
            r.execute_command(*command)
        assert str(info.value) == (
            "WRONGTYPE Operation against a key holding the wrong kind of value")
    assert r.lpop("list") == b"x" and r.rpop("list") == b"y" and r.exists("list") == 0


def test_command_introspection(r: Any, port: int) -> None:
    count = r.command_count()
    assert count >= 30
    commands = r.command()  # redis-py parses every entry
    assert len(commands) == count
    assert commands["get"]["arity"] == 2 and commands["set"]["arity"] == -3
    assert set(commands["get"]["flags"]) == {"readonly", "fast"}
    info = raw_exchange(port, b"COMMAND INFO get nosuch\r\n")
    assert info.startswith(b"*2\r\n*10\r\n$3\r\nget\r\n:2\r\n*2\r\n+readonly\r\n+fast\r\n"
                           b":1\r\n:1\r\n:1\r\n")
    assert info.endswith(b"$-1\r\n")


def test_hello_3_is_refused_and_resp3_clients_say_why(port: int) -> None:
    """A RESP2-only server answers HELLO 3 with NOPROTO; HELLO 2 is a flat map."""
    assert raw_exchange(port, b"HELLO 3\r\n") == (
        b"-NOPROTO sorry, this protocol version is not supported.\r\n")
    reply = raw_exchange(port, b"HELLO 2\r\n")
    assert reply.startswith(b"*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n")
    client = redis.Redis(host="127.0.0.1", port=port, protocol=3, socket_timeout=5)
    with pytest.raises(redis.exceptions.RedisError, match="NOPROTO"):
        client.ping()
    client.close()


def test_quit_replies_then_closes(port: int) -> None:
    got = raw_exchange(port, b"*1\r\n$4\r\nQUIT\r\n*1\r\n$4\r\nPING\r\n", until_close=True)
    assert got == b"+OK\r\n"


def test_an_error_that_quotes_a_cr_or_lf_is_one_line_and_the_client_stays(port: int) -> None:
    # An unknown command named "a\nb": its error quotes the name (redis-server makes such
    # an error one line; refusing to encode it used to drop the client).
    got = raw_exchange(port, b"*1\r\n$3\r\na\nb\r\n*1\r\n$4\r\nPING\r\n")
    assert got.startswith(b"-ERR unknown command 'a b'") and got.endswith(b"\r\n+PONG\r\n")
    assert got.count(b"\r\n") == 2


def test_protocol_error_is_reported_then_the_connection_closes(port: int) -> None:
    got = raw_exchange(port, b"PING\r\n*1\r\n$-5\r\n", until_close=True)
    assert got == b"+PONG\r\n-ERR Protocol error: invalid bulk length -5\r\n"
    got = raw_exchange(port, b"*1\r\n$99999999999\r\n", until_close=True)
    assert got.startswith(b"-ERR Protocol error: ") and b"max_bulk_length" in got


# -- pipelines and values ------------------------------------------------------------------


def test_pipeline_of_1000_commands(r: Any) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(500):
        pipe.set(f"key:{i}", i)
    for i in range(500):
        pipe.incr(f"key:{i}")
    results = pipe.execute()
    assert results == [True] * 500 + list(range(1, 501))
    pipe = r.pipeline(transaction=False)
    for i in range(1000):
        pipe.get(f"key:{i % 500}")
    assert pipe.execute() == [str(i % 500 + 1).encode() for i in range(1000)]


def test_binary_safe_keys_and_values(r: Any) -> None:
    every_byte = bytes(range(256))
    assert r.set(every_byte, every_byte[::-1]) is True
    assert r.get(every_byte) == every_byte[::-1]
    pipe = r.pipeline(transaction=False)
    for b in range(256):
        pipe.set(bytes([b]) * 3, bytes([b, 13, 10, b]))
    assert pipe.execute() == [True] * 256
    assert r.mget([bytes([b]) * 3 for b in range(256)]) == [
        bytes([b, 13, 10, b]) for b in range(256)]
    assert r.exists(every_byte) == 1 and r.delete(every_byte) == 1


def test_one_mib_values(r: Any) -> None:
    value = os.urandom(1 << 20)
    assert r.set("big", value) is True
    assert r.get("big") == value
    pipe = r.pipeline(transaction=False)
    for i in range(4):
        pipe.set(f"big:{i}", value[i:] + value[:i])
    pipe.mget([f"big:{i}" for i in range(4)])
    results = pipe.execute()
    assert results[:4] == [True] * 4
    assert results[4] == [value[i:] + value[:i] for i in range(4)]


# -- redis-cli and redis-benchmark ---------------------------------------------------------


def test_redis_cli_round_trip(port: int) -> None:
    cli = require_program("redis-cli", package="redis-tools")

    def run(*args: str) -> str:
        done = subprocess.run([cli, "-h", "127.0.0.1", "-p", str(port), *args],
                              capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert run("ping") == "PONG\n"
    assert run("set", "cli key", "hello world") == "OK\n"
    assert run("get", "cli key") == "hello world\n"
    assert run("--no-raw", "get", "cli key") == '"hello world"\n'
    assert run("incr", "cli:n") == "1\n"
    assert run("--no-raw", "incr", "cli:n") == "(integer) 2\n"
    assert run("--no-raw", "get", "nothing") == "(nil)\n"
    assert run("--no-raw", "mget", "cli key", "nothing") == '1) "hello world"\n2) (nil)\n'
    assert run("--no-raw", "get") == (
        "(error) ERR wrong number of arguments for 'get' command\n")
    assert run("del", "cli key", "cli:n") == "2\n"


def test_redis_benchmark_completes_without_errors(port: int) -> None:
    bench = require_program("redis-benchmark", package="redis-tools")
    done = subprocess.run(
        [bench, "-h", "127.0.0.1", "-p", str(port), "-t", "ping,set,get,incr,mset",
         "-n", "20000", "-P", "16", "--csv"],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "error" not in output.lower(), output
    rows = {row[0]: float(row[1]) for row in csv.reader(io.StringIO(done.stdout))
            if len(row) > 1 and row[0] != "test"}
    assert set(rows) == {"PING_INLINE", "PING_MBULK", "SET", "GET", "INCR",
                         "MSET (10 keys)"}, done.stdout
    assert all(rps > 0 for rps in rows.values()), rows


# -- processes -----------------------------------------------------------------------------


def test_several_loops_share_one_store_and_sigint_stops() -> None:
    with example_server("redis_server.py", "--quiet", "--loops", "2") as (proc, port):
        clients = [redis.Redis(host="127.0.0.1", port=port, protocol=2,
                               socket_timeout=SOCKET_TIMEOUT) for _ in range(4)]
        errors: list[BaseException] = []

        def bump(client: Any) -> None:
            try:
                pipe = client.pipeline(transaction=False)
                for _ in range(500):
                    pipe.incr("shared")
                pipe.execute()
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=bump, args=(c,)) for c in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors
        assert clients[0].get("shared") == b"2000"
        for client in clients:
            client.close()
        assert_stops_cleanly(proc, signal.SIGINT)


# -- glob patterns (KEYS, CONFIG GET): the matcher, in this process ---------------------------


def reference_glob(pattern: bytes, key: bytes) -> bool:
    """Redis's glob rules read plainly: the pattern as a list of tokens (None for ``*``,
    else the set of bytes the position takes), then a table of which prefixes of the
    key the first tokens can match."""
    tokens: list[frozenset[int] | None] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == ord("*"):
            tokens.append(None)
            i += 1
        elif c == ord("?"):
            tokens.append(frozenset(range(256)))
            i += 1
        elif c == ord("\\") and i + 1 < n:
            tokens.append(frozenset({pattern[i + 1]}))
            i += 2
        elif c == ord("["):
            i += 1
            negate = i < n and pattern[i] == ord("^")
            i += negate
            members: set[int] = set()
            while i < n and pattern[i] != ord("]"):
                if pattern[i] == ord("\\") and i + 1 < n:
                    members.add(pattern[i + 1])
                    i += 2
                elif i + 2 < n and pattern[i + 1] == ord("-") and pattern[i + 2] != ord("]"):
                    low, high = sorted((pattern[i], pattern[i + 2]))
                    members.update(range(low, high + 1))
                    i += 3
                else:
                    members.add(pattern[i])
                    i += 1
            i += 1  # the ']' (past the end for a class left open)
            tokens.append(frozenset(set(range(256)) - members if negate else members))
        else:
            tokens.append(frozenset({c}))
            i += 1
    can = [True] + [False] * len(key)  # can[j]: the tokens so far match key[:j]
    for token in tokens:
        if token is None:
            for j in range(1, len(key) + 1):
                can[j] = can[j] or can[j - 1]
        else:
            can = [False] + [can[j - 1] and key[j - 1] in token for j in range(1, len(key) + 1)]
    return can[len(key)]


def glob_answers(pattern: bytes, keys: list[bytes]) -> list[bool]:
    """What the example answers for each key: with one ``spans`` for all the keys (as
    KEYS matches them), and with ``glob_matcher`` (its fast path or not)."""
    spans: dict[int, tuple[int, int]] = {}
    shared = [redis_server.glob_match(pattern, key, spans) for key in keys]
    fresh = [redis_server.glob_match(pattern, key) for key in keys]
    matcher = redis_server.glob_matcher(pattern)
    assert shared == fresh == [matcher(key) for key in keys], pattern
    return shared


@settings(max_examples=400, deadline=None)
@given(pattern=st.lists(st.sampled_from([b"*", b"?", b"a", b"b", b"ab"]), max_size=10)
       .map(b"".join),
       keys=st.lists(st.binary(max_size=12) | st.text("abc", max_size=12).map(str.encode),
                     min_size=1, max_size=6))
def test_glob_of_stars_and_question_marks_is_fnmatch(pattern: bytes, keys: list[bytes]) -> None:
    """Without classes or backslashes, Redis's globs are fnmatch's."""
    assert glob_answers(pattern, keys) == [fnmatch.fnmatchcase(k, pattern) for k in keys]


PIECES = [b"*", b"**", b"?", b"a", b"b", b"-", b"^", b"]", b"[", b"\\", b"\\*", b"\\]",
          b"[ab]", b"[^a]", b"[a-c]", b"[c-a]", b"[]", b"[^]", b"[a-]", b"[\\]a]", b"[*?]",
          b"\xff", b"[\x00-\x7f]"]


@settings(max_examples=600, deadline=None)
@given(pattern=st.lists(st.sampled_from(PIECES), max_size=8).map(b"".join),
       keys=st.lists(st.lists(st.sampled_from(b"abc-^]*?\\\x00\xff"), max_size=10)
                     .map(bytes), min_size=1, max_size=6))
def test_glob_matches_as_the_reference_reading_of_redis_rules(
    pattern: bytes, keys: list[bytes]
) -> None:
    assert glob_answers(pattern, keys) == [reference_glob(pattern, k) for k in keys]


@pytest.mark.parametrize(("pattern", "key", "expected"), [
    (b"", b"", True),
    (b"", b"a", False),
    (b"*", b"", True),
    (b"?", b"", False),
    (b"h?llo", b"hello", True),
    (b"h*llo", b"hllo", True),
    (b"h*llo", b"heeeello", True),
    (b"h[ae]llo", b"hallo", True),
    (b"h[ae]llo", b"hillo", False),
    (b"h[^e]llo", b"hallo", True),
    (b"h[^e]llo", b"hello", False),
    (b"h[a-b]llo", b"hbllo", True),
    (b"h[a-b]llo", b"hcllo", False),
    (b"[b-a]", b"a", True),  # a range given backwards is the same range
    (b"[]", b"a", False),  # an empty class matches nothing...
    (b"[]a", b"]a", False),
    (b"[^]", b"x", True),  # ...and its negation any one byte
    (b"[a-]", b"-", True),  # '-' before ']' is itself
    (b"[a-]", b"b", False),
    (b"[\\]]", b"]", True),
    (b"[a\\-z]", b"-", True),
    (b"[a\\-z]", b"b", False),
    (b"[abc", b"b", True),  # a class left open ends with the pattern
    (b"[", b"[", False),
    (b"[^", b"x", True),
    (b"\\*", b"*", True),
    (b"\\*", b"x", False),
    (b"\\?", b"?", True),
    (b"\\[a]", b"[a]", True),
    (b"a\\\\b", b"a\\b", True),
    (b"ab\\", b"ab\\", True),  # a trailing backslash is itself
    (b"ab\\", b"ab", False),
    (b"\\", b"\\", True),
    (b"[\x00-\x10]*", b"\x05\xff", True),
    (b"*\xfe", b"\x00\xfe", True),
    (b"*a*a*a*a*a*a*a*a*a*a*b", b"a" * 40, False),
    (b"*a*a*a*a*a*a*a*a*a*a", b"a" * 40, True),
    (b"user:*:session", b"user:42:session", True),
    (b"user:*:session", b"user:42:sessions", False),
    (b"*b*a", b"ba", True),
    (b"*b*a", b"ab", False),
])
def test_glob_cases(pattern: bytes, key: bytes, expected: bool) -> None:
    assert glob_answers(pattern, [key]) == [expected]
    assert reference_glob(pattern, key) is expected


def test_glob_costs_no_backtracking_and_bounded_memory() -> None:
    """The patterns that made the regex backtrack or compile for seconds answer at once,
    and what a match remembers of a pattern stays bounded (issue #18 item 9)."""
    start = time.monotonic()
    assert not redis_server.glob_match(b"*a" * 10 + b"*b", b"a" * 40)
    assert not redis_server.glob_match(b"*a" * 2000 + b"*b", b"a" * 5000)
    assert not redis_server.glob_match(b"*" + b"a" * 3000 + b"b", b"a" * 5000)
    assert not redis_server.glob_match(b"a" * (8 << 20), b"a" * 40)
    assert redis_server.glob_match(b"*" * (8 << 20), b"anything")
    assert redis_server.glob_match(b"*[" + b"xyz" * (1 << 20) + b"]", b"keyz")
    assert time.monotonic() - start < 10.0  # tens of ms: a bound for a loaded machine
    pattern = b"*" + b"[ab]" * 50_000 + b"c"  # one class per 4 bytes, each remembered?
    spans: dict[int, tuple[int, int]] = {}
    assert not redis_server.glob_match(pattern, b"ab" * 30_000, spans)
    assert len(spans) <= redis_server._SPANS_KEPT + len(pattern) // redis_server._LONG_SPAN


def test_glob_patterns_in_keys_and_config_get() -> None:
    """KEYS with patterns of each kind, through the store; CONFIG GET names each
    parameter once, whatever the case of the patterns and however many match it."""

    class Client:
        context = None

    store = redis_server.RedisStore()
    keys = [b"user:1", b"user:2", b"user:10", b"h[x]llo", b"a" * 40]
    store.execute(Client(), [b"MSET", *(part for key in keys for part in (key, b"v"))])

    def matching(pattern: bytes) -> list[bytes]:
        return sorted(store.execute(Client(), [b"KEYS", pattern]))

    assert matching(b"*") == sorted(keys)
    assert matching(b"user:1") == [b"user:1"]  # no scan
    assert matching(b"user:3") == []
    assert matching(b"user:*") == [b"user:1", b"user:10", b"user:2"]
    assert matching(b"*:1*") == [b"user:1", b"user:10"]
    assert matching(b"user:[^2]*") == [b"user:1", b"user:10"]
    assert matching(b"h\\[x\\]llo") == [b"h[x]llo"]
    assert matching(b"*a*a*a*a*a*a*a*a*a*a*b") == []
    assert matching(b"*a*a*a*a*a*a*a*a*a*a") == [b"a" * 40]

    def config_get(*patterns: bytes) -> list[bytes]:
        return list(store.execute(Client(), [b"CONFIG", b"GET", *patterns]))

    assert config_get(b"SAVE") == [b"save", b""]
    assert config_get(b"nosuch", b"no*such") == []
    assert config_get(b"DATA*", b"*a*", b"save", b"*") == [
        b"databases", b"1", b"save", b"", b"appendonly", b"no"]
    assert config_get(b"[sa]*") == [b"save", b"", b"appendonly", b"no"]


# -- glob pattern limits (max_pattern_bytes, max_config_patterns) ----------------------------


class NoClient:
    context = None


def test_glob_pattern_limits_refuse_keys_and_config_get_past_them() -> None:
    """The patterns of one KEYS or CONFIG GET may total ``max_pattern_bytes`` (64 KiB) and
    a CONFIG GET may carry ``max_config_patterns`` (1024): at the limits a command is
    served, past them it gets a one-line ERR that says the limit, before any matching."""
    store = redis_server.RedisStore()
    limit = redis_server.MAX_PATTERN_BYTES
    count = redis_server.MAX_CONFIG_PATTERNS
    assert (store.max_pattern_bytes, store.max_config_patterns) == (limit, count)
    assert (limit, count) == (64 << 10, 1024)
    store.execute(NoClient(), [b"SET", b"key", b"v"])

    def run(*args: bytes) -> Any:
        return store.execute(NoClient(), list(args))

    def too_long(size: int, command: str) -> str:
        return f"ERR glob pattern too long: {size} bytes, the limit is {limit} bytes per {command}"

    # KEYS: at the limit, whatever the shape (a literal too: it is refused by its size).
    assert run(b"KEYS", b"*" * limit) == [b"key"]
    assert run(b"KEYS", b"k" + b"?" * (limit - 2) + b"*") == []
    assert run(b"KEYS", b"*" * (limit + 1)) == too_long(limit + 1, "KEYS")
    assert run(b"KEYS", b"k" * (8 << 20)) == too_long(8 << 20, "KEYS")
    refused = run(b"KEYS", b"*[" + b"\\a-b" * (limit // 4) + b"]")
    assert isinstance(refused, redis_server.RespError) and refused.kind == "ERR"
    assert refused == too_long(limit // 4 * 4 + 3, "KEYS")
    # CONFIG GET: the bytes of all its patterns, and their count.
    at_limit = [b"x" * (limit // count)] * (count - 1) + [b"sav?"]
    assert sum(map(len, at_limit)) <= limit
    assert run(b"CONFIG", b"GET", *at_limit) == [b"save", b""]
    wide = [b"x" * (limit // count)] * count + [b"*"]
    assert len(wide) == count + 1
    assert run(b"CONFIG", b"GET", *wide) == (
        f"ERR too many patterns: {count + 1}, the limit is {count} per CONFIG GET")
    assert run(b"CONFIG", b"GET", *[b""] * 500_000) == (
        f"ERR too many patterns: 500000, the limit is {count} per CONFIG GET")
    assert run(b"CONFIG", b"GET", b"*", b"x" * limit) == too_long(limit + 1, "CONFIG GET")
    assert run(b"CONFIG", b"GET", b"x" * (limit + 1)) == too_long(limit + 1, "CONFIG GET")
    assert "\r" not in refused and "\n" not in refused  # one -ERR line on the wire
    assert run(b"CONFIG", b"GET", b"save") == [b"save", b""]  # the store is unchanged


def test_glob_pattern_limits_are_configurable() -> None:
    store = redis_server.RedisStore(max_pattern_bytes=8, max_config_patterns=2)
    assert (store.max_pattern_bytes, store.max_config_patterns) == (8, 2)
    store.execute(NoClient(), [b"SET", b"key", b"v"])

    def run(*args: bytes) -> Any:
        return store.execute(NoClient(), list(args))

    assert run(b"KEYS", b"k*" + b"*" * 6) == [b"key"]
    assert run(b"KEYS", b"k*" + b"*" * 7) == (
        "ERR glob pattern too long: 9 bytes, the limit is 8 bytes per KEYS")
    assert run(b"CONFIG", b"GET", b"save", b"d*") == [b"save", b"", b"databases", b"1"]
    assert run(b"CONFIG", b"GET", b"save", b"data*") == (
        "ERR glob pattern too long: 9 bytes, the limit is 8 bytes per CONFIG GET")
    assert run(b"CONFIG", b"GET", b"a", b"b", b"c") == (
        "ERR too many patterns: 3, the limit is 2 per CONFIG GET")
    locked = redis_server.RedisStore(locked=True, max_pattern_bytes=3)
    assert locked.execute(NoClient(), [b"KEYS", b"****"]).startswith("ERR glob pattern")
    for bad in ({"max_pattern_bytes": 0}, {"max_config_patterns": 0}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be >= 1"):
            redis_server.RedisStore(**bad)


def test_glob_pattern_limits_from_the_command_line_and_the_client_stays() -> None:
    """``--max-pattern-bytes`` and ``--max-config-patterns``; redis-py sees the refusal as
    a ResponseError and its connection goes on serving."""
    with example_server("redis_server.py", "--quiet", "--max-pattern-bytes", "16",
                        "--max-config-patterns", "3") as (proc, port):
        client = redis.Redis(host="127.0.0.1", port=port, protocol=2,
                             socket_timeout=SOCKET_TIMEOUT, single_connection_client=True)
        client.set("user:1", "v")
        assert client.keys("user:" + "?" * 10) == []
        assert client.keys("*" * 16) == [b"user:1"]
        with pytest.raises(redis.ResponseError,
                           match="glob pattern too long: 17 bytes, the limit is 16 bytes"):
            client.keys("*" * 17)
        assert client.execute_command("CONFIG", "GET", "save", "x", "y") == [b"save", b""]
        with pytest.raises(redis.ResponseError, match="too many patterns: 4, the limit is 3"):
            client.execute_command("CONFIG", "GET", "save", "x", "y", "z")
        assert client.ping() is True
        client.close()
        assert_stops_cleanly(proc)
    got = subprocess.run([sys.executable, str(EXAMPLES / "redis_server.py"), "--port", "0",
                          "--max-pattern-bytes", "0"], capture_output=True, timeout=30,
                         env=example_env())
    assert got.returncode == 2 and b"--max-pattern-bytes" in got.stderr


# -- glob matching budget (max_glob_steps) -----------------------------------------------------


@pytest.mark.parametrize(("pattern", "key"), [
    (b"*" + b"a" * 200 + b"b*", b"a" * 400),  # a literal part between two '*': bytes.find
    (b"*" + b"a" * 200 + b"*", b"a" * 400),
    (b"*" + b"a" * 200 + b"b*", b"a" * 300 + b"b"),
    (b"*ab*ba*", b"xxabxba"),
    (b"*ab*ba*", b"xxbaxab"),
    (b"*\\**", b"a*b"),  # an escaped '*' in a literal part
    (b"*\\**", b"ab"),
    (b"*a\\*b*", b"xa*bx"),
    (b"*a\\*b", b"xa*b"),  # the '*' escaped: no '*' after the part, so not a literal part
    (b"*\\a\\?*", b"xa?x"),
    (b"*\\a\\?*", b"xabx"),
    (b"*a\\", b"xa\\"),  # a trailing backslash
    (b"*a?b*", b"xaxbx"),  # not literal: '?'
    (b"*a[xy]b*", b"aaybx"),
    (b"*" + b"ab" * 50 + b"*c*", b"ab" * 120 + b"c"),
    (b"*" + b"a" * 2000 + b"*", b"b" + b"a" * 1999),
])
def test_glob_literal_parts_found_with_bytes_find_match_as_before(pattern: bytes,
                                                                  key: bytes) -> None:
    assert glob_answers(pattern, [key]) == [reference_glob(pattern, key)]


def test_glob_literal_parts_make_long_keys_cheap() -> None:
    """``*`` + 16,000 ``a`` + ``b*`` against 32 KiB of ``a`` took 32 s matched byte by
    byte with backtracking; its literal part is now found with ``bytes.find``."""
    start = time.monotonic()
    key = b"a" * (32 << 10)
    assert not redis_server.glob_match(b"*" + b"a" * 16000 + b"b*", key)
    assert redis_server.glob_match(b"*" + b"a" * 16000 + b"*", key)
    assert redis_server.glob_match(b"*" + b"\\a" * 16000 + b"*", key)
    assert time.monotonic() - start < 2.0  # a millisecond or so


def test_glob_budget_refuses_costly_matching_and_the_store_goes_on() -> None:
    """A KEYS whose matching passes ``max_glob_steps`` (200,000, ~40 ms at worst) stops
    and gets a one-line ERR that says the limit; cheap ones beside are served."""
    store = redis_server.RedisStore()
    limit = redis_server.MAX_GLOB_STEPS
    assert store.max_glob_steps == limit == 200_000
    long_key = b"a" * (32 << 10)
    for i in range(3):
        store.execute(NoClient(), [b"SET", long_key + b"%d" % i, b"v"])
    store.execute(NoClient(), [b"SET", b"user:1", b"v"])

    def run(*args: bytes) -> Any:
        return store.execute(NoClient(), list(args))

    refused = f"ERR glob pattern too costly to match: over {limit} steps, the limit per KEYS"
    for pattern in (b"*" + b"[a]" * 16000 + b"b*", b"*" + b"?" * 16000 + b"b*",
                    b"*" + b"a" * 16000 + b"?b*", b"*a" * 32768, b"*\\a" * 21845):
        start = time.perf_counter()
        got = run(b"KEYS", pattern)
        elapsed = time.perf_counter() - start
        assert got == refused, pattern[:20]
        assert isinstance(got, redis_server.RespError) and "\n" not in got
        assert elapsed < 1.0, (pattern[:20], elapsed)  # ~40 ms here
    # Literal parts are found at C speed: not costly however long the key.
    assert run(b"KEYS", b"*" + b"a" * 16000 + b"b*") == []
    assert len(run(b"KEYS", b"*" + b"a" * 16000 + b"*")) == 3
    assert run(b"KEYS", b"user:*") == [b"user:1"]
    assert run(b"KEYS", b"u?er:[0-9]") == [b"user:1"]
    # Each key's first 16 steps are its own: a short pattern over many keys is served.
    many = redis_server.RedisStore()
    for i in range(50_000):
        many.data[b"user:%d" % i] = b"v"
    assert len(many.execute(NoClient(), [b"KEYS", b"u?er:*[0-9]"])) == 50_000


def test_glob_budget_is_configurable_and_counts_the_whole_command() -> None:
    store = redis_server.RedisStore(max_glob_steps=1000)
    assert store.max_glob_steps == 1000
    for i in range(20):
        store.data[b"a" * 100 + b"%d" % i] = b"v"

    def run(*args: bytes) -> Any:
        return store.execute(NoClient(), list(args))

    # One key's match is under the budget; twenty of them together are over it.
    assert redis_server.glob_match(b"*?a?b*", b"a" * 100, None,
                                   redis_server.GlobBudget(1000)) is False
    assert run(b"KEYS", b"*?a?b*") == (
        "ERR glob pattern too costly to match: over 1000 steps, the limit per KEYS")
    assert len(run(b"KEYS", b"a*1?")) == 10
    # CONFIG GET: the budget is shared by all its patterns (each name is short).
    small = redis_server.RedisStore(max_glob_steps=1)
    assert small.execute(NoClient(), [b"CONFIG", b"GET", b"s*v?"]) == [b"save", b""]
    assert small.execute(NoClient(), [b"CONFIG", b"GET", *[b"*?" * 9 + b"x"] * 50]) == (
        "ERR glob pattern too costly to match: over 1 steps, the limit per CONFIG GET")
    with pytest.raises(redis_server.GlobTooCostly):
        budget = redis_server.GlobBudget(10)
        redis_server.glob_match(b"*" + b"?" * 50 + b"b*", b"a" * 100, None, budget)
    with pytest.raises(ValueError, match="max_glob_steps must be >= 1"):
        redis_server.RedisStore(max_glob_steps=0)


def test_glob_budget_from_the_command_line_and_the_client_stays() -> None:
    with example_server("redis_server.py", "--quiet", "--max-glob-steps", "100") as (proc,
                                                                                      port):
        client = redis.Redis(host="127.0.0.1", port=port, protocol=2,
                             socket_timeout=SOCKET_TIMEOUT, single_connection_client=True)
        client.set("a" * 1000, "v")
        assert client.keys("*a*") == [b"a" * 1000]
        with pytest.raises(redis.ResponseError,
                           match="glob pattern too costly to match: over 100 steps"):
            client.keys("*?a?b*")
        assert client.ping() is True
        client.close()
        assert_stops_cleanly(proc)
    got = subprocess.run([sys.executable, str(EXAMPLES / "redis_server.py"), "--port", "0",
                          "--max-glob-steps", "0"], capture_output=True, timeout=30,
                         env=example_env())
    assert got.returncode == 2 and b"--max-glob-steps" in got.stderr
