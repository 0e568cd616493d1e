"""``examples/mqtt_broker.py``: the bounds on stored sessions (``max_session_expiry``,
``max_sessions``), over real loopback sockets, with MQTT 3.1.1 and 5.0 clients.

The broker runs in-process (``serve``) so that a test can look at its sessions, its
counters and its log; one test runs the command line.  Every wait is bounded.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from typing import Any

import pytest
from conftest import ServeFn, wait_until
from example_process import example_server
from test_mqtt_broker import broker_module

from gevwire.codecs import mqtt as m
from gevwire.testing import BlockingClient

WAIT = 10.0
CODEC = m.mqtt()
CODEC5 = m.mqtt(protocol_level=5)
NEVER = 0xFFFF_FFFF

pytestmark = [pytest.mark.timeout(60), pytest.mark.io]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def connect(client_id: str, level: int, *, clean: bool = False,
            expiry: int | None = 3600) -> m.Connect:
    """A CONNECT; ``expiry``: MQTT 5.0's Session Expiry Interval (3.1.1: persistent
    unless ``clean``)."""
    if level == 5:
        props = {} if expiry is None else {"session_expiry_interval": expiry}
        return m.Connect(client_id, clean, 60, protocol_level=5, properties=props)
    return m.Connect(client_id, clean_session=clean)


def dial(port: int, packet: m.Connect) -> tuple[BlockingClient, Any]:
    """Connect, send ``packet``; the client and the broker's CONNACK."""
    codec = CODEC5 if packet.protocol_level == 5 else CODEC
    client = BlockingClient(("127.0.0.1", port), codec, timeout=WAIT)
    return client, client.request(packet)


def leave(port: int, packet: m.Connect) -> None:
    """Connect with ``packet`` (accepted), then DISCONNECT: the session stays stored."""
    client, ack = dial(port, packet)
    with client:
        assert ack.return_code == 0, ack
        client.send(m.Disconnect(0, {}) if packet.protocol_level == 5 else m.Disconnect())
        assert client.wait_closed()


def refused(port: int, packet: m.Connect) -> Any:
    """The CONNACK of a CONNECT the broker refuses; the connection must close."""
    client, ack = dial(port, packet)
    with client:
        assert client.wait_closed(), "a refused CONNECT must close the connection"
    return ack


def broker(**limits: Any) -> Any:
    return broker_module().Broker(CODEC, sys_interval=0, **limits)


# -- max_session_expiry ------------------------------------------------------------------


def test_a_longer_session_expiry_is_lowered_and_the_value_used_told_in_connack(
        serve: ServeFn) -> None:
    mqtt = broker(max_session_expiry=2)
    port = serve(mqtt, codec=CODEC).address[1]
    for asked, told in ((3600, 2), (NEVER, 2), (2, None), (1, None), (None, None)):
        client_id = unique("exp")
        client, ack = dial(port, connect(client_id, 5, expiry=asked))
        with client:
            assert ack.return_code == 0
            assert ack.properties.get("session_expiry_interval") == told, (asked, ack)
            assert mqtt.sessions[client_id].expiry == min(asked or 0, 2)
    # The value used, not the one asked for, is how long the session outlives its
    # connection; a longer one on DISCONNECT is lowered as well.
    client_id = unique("kept")
    client, ack = dial(port, connect(client_id, 5, expiry=3600))
    with client:
        client.send(m.Disconnect(0, {"session_expiry_interval": 7200}))
        assert client.wait_closed()
    assert mqtt.sessions[client_id].expiry == 2
    left = time.monotonic()
    assert wait_until(lambda: client_id not in mqtt.sessions, WAIT)
    assert 1.5 < time.monotonic() - left < 2.0 + WAIT / 2


def test_a_311_persistent_session_is_kept_max_session_expiry_not_for_ever(
        serve: ServeFn) -> None:
    mqtt = broker(max_session_expiry=1)
    port = serve(mqtt, codec=CODEC).address[1]
    client_id = unique("v311")
    leave(port, connect(client_id, 4))
    assert mqtt.sessions[client_id].expiry == 1  # clean_session=0 asks for ever
    client, ack = dial(port, connect(client_id, 4))  # within the second: resumed
    with client:
        assert ack == m.ConnAck(0, True)
        client.send(m.Disconnect())
        assert client.wait_closed()
    assert wait_until(lambda: client_id not in mqtt.sessions, WAIT)
    client, ack = dial(port, connect(client_id, 4))
    with client:
        assert ack == m.ConnAck(0, False)  # it expired


def test_a_disconnect_may_set_an_expiry_the_cap_lowered_to_zero(serve: ServeFn) -> None:
    """Asked for at CONNECT, lowered to 0 by the cap: a non-zero interval on DISCONNECT
    is no protocol error (that is only when the CONNECT asked for 0)."""
    mqtt = broker(max_session_expiry=0)
    port = serve(mqtt, codec=CODEC).address[1]
    client_id = unique("zero")
    client, ack = dial(port, connect(client_id, 5, expiry=60))
    with client:
        assert ack.properties["session_expiry_interval"] == 0
        client.send(m.Disconnect(0, {"session_expiry_interval": 60}))
        assert client.wait_closed()
        assert wait_until(lambda: client_id not in mqtt.sessions, WAIT)


# -- max_sessions ------------------------------------------------------------------------


def test_a_new_session_past_max_sessions_is_refused_on_both_versions(
        serve: ServeFn, caplog: pytest.LogCaptureFixture) -> None:
    mqtt = broker(max_sessions=3)
    port = serve(mqtt, codec=CODEC, loops=2).address[1]
    away5, away4, here, clean = unique("away5"), unique("away4"), unique("here"), \
        unique("clean")
    leave(port, connect(away5, 5))
    leave(port, connect(away4, 4))
    connected, ack = dial(port, connect(here, 5))  # counts while connected too
    cleanly, clean_ack = dial(port, connect(clean, 4, clean=True))  # counts not
    with connected, cleanly:
        assert ack.return_code == 0 and clean_ack == m.ConnAck(0, False)
        assert (mqtt.stored, len(mqtt.sessions)) == (3, 4)
        caplog.set_level(logging.WARNING, logger="mqtt_broker")
        assert refused(port, connect(unique("new5"), 5)) == m.ConnAck(0x97, False, {})
        assert refused(port, connect(unique("new4"), 4)) == m.ConnAck(3, False)
        # A persistent CONNECT taking over a clean session would add one: refused, and
        # the connection it would have taken over is left alone.
        assert refused(port, connect(clean, 4)) == m.ConnAck(3, False)
        assert cleanly.request(m.PingReq()) == m.PingResp()
        assert mqtt.refused_sessions == 3
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1  # logged at most every 10 s
        assert "max_sessions (3) stored: CONNECT of a new session refused (1 so far)" in \
            warnings[0]
        # Sessions that end with their connection are never refused.
        for packet in (connect(unique("c5"), 5, clean=True, expiry=None),
                       connect(unique("c5"), 5, expiry=0), connect("", 4, clean=True)):
            client, ack = dial(port, packet)
            with client:
                assert (ack.return_code, ack.session_present) == (0, False), packet
        # Every stored session is still there, and each client that has one gets it.
        assert (mqtt.stored, mqtt.refused_sessions) == (3, 3)
        assert {away5, away4, here} <= set(mqtt.sessions)
        assert connected.request(m.PingReq()) == m.PingResp()
        assert mqtt.sessions[away5].deadline is not None  # absent: its expiry runs
        client, ack = dial(port, connect(away5, 5))
        with client:
            assert (ack.return_code, ack.session_present) == (0, True)
            assert mqtt.sessions[away5].deadline is None  # resumed: no expiry now
        client, ack = dial(port, connect(away4, 4))
        with client:
            assert ack == m.ConnAck(0, True)
        client, ack = dial(port, connect(away5, 5, clean=True))  # Clean Start: replaced
        with client:
            assert (ack.return_code, ack.session_present) == (0, False)
        taker, ack = dial(port, connect(here, 5))  # takes over the connected one
        with taker:
            assert (ack.return_code, ack.session_present) == (0, True)
            assert connected.wait_closed()
            assert taker.request(m.PingReq()) == m.PingResp()
            assert (mqtt.stored, mqtt.refused_sessions) == (3, 3)


def test_expired_sessions_no_longer_count(serve: ServeFn) -> None:
    mqtt = broker(max_sessions=2, max_session_expiry=2)
    port = serve(mqtt, codec=CODEC, loops=2).address[1]
    leave(port, connect(unique("a"), 5))
    leave(port, connect(unique("b"), 4))
    assert refused(port, connect(unique("c"), 5)) == m.ConnAck(0x97, False, {})
    assert wait_until(lambda: not mqtt.sessions, WAIT)  # their expiry timers ran
    assert mqtt.stored == 0
    client, ack = dial(port, connect(unique("c"), 5))
    with client:
        assert ack.return_code == 0


def test_a_session_whose_expiry_is_set_to_zero_no_longer_counts(serve: ServeFn) -> None:
    mqtt = broker(max_sessions=1)
    port = serve(mqtt, codec=CODEC).address[1]
    first, second = unique("first"), unique("second")
    client, ack = dial(port, connect(first, 5))
    with client:
        assert ack.return_code == 0 and mqtt.stored == 1
        client.send(m.Disconnect(0, {"session_expiry_interval": 0}))  # ends with it
        assert client.wait_closed()
    assert wait_until(lambda: first not in mqtt.sessions, WAIT)
    assert mqtt.stored == 0
    leave(port, connect(second, 5))
    assert refused(port, connect(first, 5)) == m.ConnAck(0x97, False, {})
    resumed, ack = dial(port, connect(second, 5, expiry=0))  # resumed, to end with it
    with resumed:
        assert (ack.return_code, ack.session_present, mqtt.stored) == (0, True, 0)
        client, ack = dial(port, connect(first, 5))  # so there is room now
        with client:
            assert ack.return_code == 0 and mqtt.stored == 1


def test_a_session_whose_expiry_timer_is_late_is_dropped_before_a_refusal(
        serve: ServeFn) -> None:
    """The timer runs on the loop of the session's last connection, which may be busy
    past the deadline: at the cap, a CONNECT first drops what has expired."""
    mqtt = broker(max_sessions=2)
    port = serve(mqtt, codec=CODEC).address[1]
    late, kept = unique("late"), unique("kept")
    leave(port, connect(late, 5))
    leave(port, connect(kept, 4))
    # (each deadline is set when the server has seen its connection close)
    assert wait_until(lambda: all(mqtt.sessions[cid].deadline is not None
                                  for cid in (late, kept)), WAIT)
    with mqtt.lock:  # as a late timer leaves it: its deadline passed, still stored
        session = mqtt.sessions[late]
        session.deadline = mqtt._next_deadline = time.monotonic() - 1.0
    client, ack = dial(port, connect(unique("new"), 5))
    with client:
        assert ack.return_code == 0
        assert late not in mqtt.sessions and kept in mqtt.sessions
        assert mqtt.refused_sessions == 0
        assert mqtt._next_deadline == mqtt.sessions[kept].deadline  # swept once, exactly
    assert refused(port, connect(unique("more"), 4)) == m.ConnAck(3, False)


def test_the_session_limits_are_checked_and_set_from_the_command_line() -> None:
    module = broker_module()
    assert module.Broker(CODEC).max_session_expiry == module.MAX_SESSION_EXPIRY == 86_400
    assert module.Broker(CODEC).max_sessions == module.MAX_SESSIONS == 10_000
    for kwargs in ({"max_sessions": 0}, {"max_session_expiry": -1},
                   {"max_session_expiry": NEVER + 1}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            module.Broker(CODEC, **kwargs)
    with example_server("mqtt_broker.py", "--quiet", "--max-sessions", "1",
                        "--max-session-expiry", "5") as (proc, port):
        client, ack = dial(port, connect(unique("first"), 5, expiry=60))
        with client:
            assert ack.properties["session_expiry_interval"] == 5
            assert refused(port, connect(unique("second"), 5)) == m.ConnAck(0x97, False, {})
            assert refused(port, connect(unique("third"), 4)) == m.ConnAck(3, False)
            assert client.request(m.PingReq()) == m.PingResp()
        assert proc.poll() is None


def test_max_connections_closes_a_connection_past_it_at_once() -> None:
    """``--max-connections``: past it a connection is accepted and closed at once, and
    a client under it is served."""
    with example_server("mqtt_broker.py", "--quiet", "--max-connections", "1") as (proc,
                                                                                 port):
        client, ack = dial(port, connect(unique("only"), 5, clean=True))
        with client:
            assert ack.return_code == 0
            extra = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
            with extra:
                assert extra.recv(16) == b""  # closed at once (FIN: it sent nothing)
            assert client.request(m.PingReq()) == m.PingResp()
        assert proc.poll() is None
