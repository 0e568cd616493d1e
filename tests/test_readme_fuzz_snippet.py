"""The README's "Fuzz your protocol" snippet runs as written: a schema, ``check_codec``
and a handler property test.  The snippet is kept here verbatim and executed; once the
README has the section, its code block must be this same text."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

import gevwire

SNIPPET = textwrap.dedent('''\
    from construct import Enum, GreedyBytes, Int8ub, Int16ub, Int32ub, Prefixed, Struct
    from hypothesis import given, strategies as st
    import gevwire
    from gevwire.testing import HandlerHarness, check_codec, strategy_for

    Message = Prefixed(Int32ub, Struct("kind" / Enum(Int8ub, ping=1, pong=2),
                                       "id" / Int16ub, "data" / GreedyBytes))
    codec = gevwire.Codec(Message, max_frame_size=64 << 10)
    router = gevwire.Router(key="kind")

    @router.on("ping")
    def ping(conn, frame):
        return {"kind": "pong", "id": frame.id, "data": frame.data}

    def test_codec():
        check_codec(codec)  # round trip, any split into reads, truncation, limits, garbage

    @given(st.lists(strategy_for(Message, overrides={"kind": st.just("ping")})))
    def test_every_ping_gets_its_pong(frames):
        harness = HandlerHarness(router, codec)
        for frame in frames:
            replies = harness.feed_message(frame)
            assert replies == [{"kind": "pong", "id": frame.id, "data": frame.data}]
''')

README = Path(__file__).resolve().parent.parent / "README.md"


def _run_snippet() -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "readme_snippet"}
    exec(compile(SNIPPET, "README.md (Fuzz your protocol)", "exec"), namespace)
    return namespace


def test_snippet_is_short() -> None:
    code = [line for line in SNIPPET.splitlines() if line.strip()]
    assert len(code) < 20


def test_snippet_tests_pass() -> None:
    namespace = _run_snippet()
    namespace["test_codec"]()
    namespace["test_every_ping_gets_its_pong"]()


def test_snippet_property_catches_a_wrong_reply() -> None:
    # The property is not vacuous: a handler that echoes the wrong id fails it.
    namespace = _run_snippet()
    router = namespace["router"] = gevwire.Router(key="kind")  # the test reads the global

    @router.on("ping")
    def wrong(conn: Any, frame: Any) -> Any:
        return {"kind": "pong", "id": (frame.id + 1) & 0xFFFF, "data": frame.data}

    try:
        namespace["test_every_ping_gets_its_pong"]()
    except AssertionError:
        return
    raise AssertionError("the snippet's property test passed a handler with wrong ids")


def test_readme_section_matches_when_present() -> None:
    text = README.read_text()
    match = re.search(r"## Fuzz your protocol\n(.*?)(?=\n## |\Z)", text, re.S)
    if match is None:
        return  # the section is not in the README yet
    blocks = re.findall(r"```python\n(.*?)```", match.group(1), re.S)
    assert SNIPPET in blocks


FIXTURE_SNIPPET = textwrap.dedent('''\
    def test_ping_over_loopback(gevwire_server, gevwire_client):  # router, codec: as above
        client = gevwire_client(gevwire_server(router, codec), codec)
        reply = client.request({"kind": "ping", "id": 7, "data": b"x"})
        assert (reply.kind, reply.id, reply.data) == ("pong", 7, b"x")
''')


@pytest.mark.io
def test_readme_fixture_snippet_runs_with_the_plugin_fixtures(
    gevwire_server: Any, gevwire_client: Any,
) -> None:
    """The README's example of the pytest plugin's fixtures, run with the fixtures the
    plugin registers (and the fuzz snippet's router and codec), and present verbatim."""
    assert FIXTURE_SNIPPET in README.read_text()
    namespace = _run_snippet()
    exec(compile(FIXTURE_SNIPPET, "README.md (fixtures)", "exec"), namespace)
    namespace["test_ping_over_loopback"](gevwire_server, gevwire_client)
