"""``examples/mqtt_broker.py`` against clients nobody here wrote: paho-mqtt and the
mosquitto command-line clients, plus raw packets (gevwire's ``BlockingClient`` with the
MQTT codec) for what those clients never do: stay silent, break the protocol.

The broker runs as a subprocess on a free loopback port (``--port 0``; it prints
``listening on HOST:PORT``), with two loops so that publisher and subscriber are often
on different threads.  Every wait is bounded and the broker is always killed.
"""

from __future__ import annotations

import gc
import math
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from conftest import wait_until
from example_process import (
    EXAMPLES,
    STOP_TIMEOUT,
    assert_stops_cleanly,
    example_env,
    example_server,
)

from gevwire import ConnectionClosed
from gevwire.codecs import mqtt as m
from gevwire.testing import BlockingClient

paho_client = pytest.importorskip("paho.mqtt.client")

WAIT = 10.0  # any single expected event

pytestmark = [pytest.mark.timeout(120), pytest.mark.io]


# -- the broker process ----------------------------------------------------------------


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with example_server("mqtt_broker.py", "--loops", "2") as (proc, broker_port):
        yield broker_port
        assert proc.poll() is None, "the broker died during the tests"


def unique() -> str:
    """A topic prefix of this test's own (the broker is shared by the module)."""
    return f"t{uuid.uuid4().hex[:10]}"


# -- paho ------------------------------------------------------------------------------


class Paho:
    """A paho-mqtt client (callback API v2) with blocking helpers, each bounded."""

    def __init__(self, port: int, client_id: str = "", *, clean_session: bool = True,
                 keepalive: int = 60) -> None:
        self.client = paho_client.Client(paho_client.CallbackAPIVersion.VERSION2,
                                         client_id=client_id, clean_session=clean_session,
                                         protocol=paho_client.MQTTv311)
        self.messages: queue.Queue[Any] = queue.Queue()
        self.acks: queue.Queue[Any] = queue.Queue()
        self.connected = threading.Event()
        self.connect_flags: Any = None
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.acks.put(
            ("suback", mid, [int(code.value) for code in codes]))
        self.client.on_unsubscribe = lambda c, u, mid, codes, p: self.acks.put(
            ("unsuback", mid))
        self.client.connect("127.0.0.1", port, keepalive)
        self.client.loop_start()
        assert self.connected.wait(WAIT), "no CONNACK"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        assert not reason.is_failure, reason
        self.connect_flags = flags
        self.connected.set()

    def subscribe(self, topic: str, qos: int = 0) -> list[int]:
        """Subscribe and wait for the SUBACK; its return codes."""
        _, mid = self.client.subscribe(topic, qos)
        kind, ack_mid, codes = self.acks.get(timeout=WAIT)
        assert (kind, ack_mid) == ("suback", mid)
        return list(codes)

    def unsubscribe(self, topic: str) -> None:
        _, mid = self.client.unsubscribe(topic)
        assert self.acks.get(timeout=WAIT) == ("unsuback", mid)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """Publish; for QoS 1 return only once the broker's PUBACK came back."""
        info = self.client.publish(topic, payload, qos, retain)
        info.wait_for_publish(WAIT)
        assert info.is_published()

    def receive(self, timeout: float = WAIT) -> Any:
        return self.messages.get(timeout=timeout)

    def nothing_more(self, wait: float = 0.3) -> bool:
        try:
            extra = self.messages.get(timeout=wait)
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected message on {extra.topic}: {extra.payload!r}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def paho(port: int) -> Iterator[Any]:
    """``paho(**kwargs)``: a connected client, disconnected at teardown."""
    clients: list[Paho] = []

    def make(**kwargs: Any) -> Paho:
        client = Paho(port, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_paho_qos0_round_trip(paho: Any) -> None:
    topic = f"{unique()}/a"
    sub, pub = paho(), paho()
    assert sub.subscribe(topic, 0) == [0]
    for i in range(20):
        pub.publish(topic, b"m%d" % i)
    got = [sub.receive() for _ in range(20)]
    assert [g.payload for g in got] == [b"m%d" % i for i in range(20)]  # in order
    assert all(g.topic == topic and g.qos == 0 and not g.retain for g in got)
    assert sub.nothing_more()


def test_paho_qos1_round_trip_and_qos_downgrade(paho: Any) -> None:
    base = unique()
    sub1, sub0, pub = paho(), paho(), paho()
    assert sub1.subscribe(f"{base}/q", 1) == [1]
    assert sub0.subscribe(f"{base}/q", 0) == [0]
    assert sub1.subscribe(f"{base}/two", 2) == [2]  # QoS 2 granted as asked
    payload = bytes(range(256)) * 40  # binary-safe, past the 2-byte length boundary
    pub.publish(f"{base}/q", payload, qos=1)  # returns after the PUBACK
    got = sub1.receive()
    assert (got.topic, got.payload, got.qos) == (f"{base}/q", payload, 1)
    low = sub0.receive()
    assert (low.payload, low.qos) == (payload, 0)  # min(publish 1, granted 0)
    pub.publish(f"{base}/q", b"zero", qos=0)
    assert sub1.receive().qos == 0  # min(publish 0, granted 1)
    pub.publish(f"{base}/two", b"two", qos=2)
    assert (sub1.receive().qos, sub1.messages.empty()) == (2, True)


def test_paho_wildcards(paho: Any) -> None:
    base = unique()
    plus, multi, pub = paho(), paho(), paho()
    assert plus.subscribe(f"{base}/+/temp", 1) == [1]
    assert multi.subscribe(f"{base}/#", 0) == [0]
    assert multi.subscribe(f"{base}/+/temp", 1) == [1]  # overlapping: one copy, QoS 1
    for topic in (f"{base}/kitchen/temp", f"{base}/kitchen/hum", f"{base}/a/temp/x",
                  f"{base}", f"{base}/hall/temp"):
        pub.publish(topic, topic.encode(), qos=1)
    assert [plus.receive().topic for _ in range(2)] == [f"{base}/kitchen/temp",
                                                        f"{base}/hall/temp"]
    got = [multi.receive() for _ in range(5)]
    assert [g.topic for g in got] == [f"{base}/kitchen/temp", f"{base}/kitchen/hum",
                                      f"{base}/a/temp/x", base, f"{base}/hall/temp"]
    assert [g.qos for g in got] == [1, 0, 0, 0, 1]
    assert plus.nothing_more() and multi.nothing_more(0.05)


def test_paho_retained_set_replace_delete(paho: Any) -> None:
    topic = f"{unique()}/state"
    pub = paho()
    pub.publish(topic, b"first", qos=1, retain=True)
    first = paho()
    first.subscribe(topic, 1)
    got = first.receive()
    assert (got.payload, got.retain, got.qos) == (b"first", True, 1)
    pub.publish(topic, b"second", qos=0, retain=True)
    live = first.receive()
    assert (live.payload, live.retain) == (b"second", False)  # live copies: RETAIN 0
    second = paho()
    second.subscribe(topic, 1)
    got = second.receive()
    assert (got.payload, got.retain, got.qos) == (b"second", True, 0)  # stored at QoS 0
    assert second.nothing_more()
    pub.publish(topic, b"", qos=1, retain=True)  # deletes it (and is delivered live)
    assert first.receive().payload == b""
    third = paho()
    third.subscribe(topic, 1)
    assert third.nothing_more(0.5)


def test_paho_unsubscribe(paho: Any) -> None:
    base = unique()
    sub, pub = paho(), paho()
    sub.subscribe(f"{base}/gone", 1)
    sub.subscribe(f"{base}/kept", 1)
    pub.publish(f"{base}/gone", b"1", qos=1)
    assert sub.receive().payload == b"1"
    sub.unsubscribe(f"{base}/gone")
    pub.publish(f"{base}/gone", b"2", qos=1)
    pub.publish(f"{base}/kept", b"marker", qos=1)
    # One publisher's messages reach a subscriber in order: the marker proves "2" skipped.
    assert sub.receive().payload == b"marker"
    assert sub.nothing_more()


def test_paho_persistent_session_gets_what_it_missed(paho: Any, port: int) -> None:
    topic = f"{unique()}/p"
    client_id = f"persist-{uuid.uuid4().hex[:8]}"
    first = Paho(port, client_id, clean_session=False)
    assert first.subscribe(topic, 1) == [1]
    first.close()
    pub = paho()
    # QoS 0 first: the PUBACK of the QoS 1 publish that follows on the same connection
    # proves the broker has handled both before the client comes back.
    pub.publish(topic, b"qos0 is not kept", qos=0)
    pub.publish(topic, b"while away", qos=1)
    again = paho(client_id=client_id, clean_session=False)
    assert again.connect_flags.session_present
    got = again.receive()
    assert (got.payload, got.qos) == (b"while away", 1)
    assert again.nothing_more()
    again.close()
    fresh = paho(client_id=client_id, clean_session=True)
    assert not fresh.connect_flags.session_present


# -- raw packets -----------------------------------------------------------------------

CODEC = m.mqtt()


def raw_client(port: int, connect: m.Connect | None = None) -> BlockingClient:
    """A connected raw client; CONNECT sent and its CONNACK checked when given."""
    client = BlockingClient(("127.0.0.1", port), CODEC, timeout=WAIT)
    if connect is not None:
        assert client.request(connect) == m.ConnAck(0, False)
    return client


def receive_acking(client: BlockingClient, count: int) -> list[m.Publish]:
    """The next ``count`` PUBLISHes, each QoS 1 one acknowledged as it comes (the
    broker sends at most its window of them unacknowledged)."""
    got = []
    for _ in range(count):
        message = client.recv()
        assert message.type == "publish", message
        if message.qos:
            client.send(m.PubAck(message.packet_id))
        got.append(message)
    return got


def test_keep_alive_closes_a_silent_client(port: int) -> None:
    with raw_client(port) as silent:
        silent.send(m.Connect(f"silent-{unique()}", keep_alive=1))
        started = time.monotonic()
        assert silent.recv() == m.ConnAck(0)
        assert silent.wait_closed(5.0), "a silent client was not closed"
        elapsed = time.monotonic() - started
        assert 1.3 < elapsed < 3.5, elapsed  # 1.5 x keep-alive, timer resolution aside


def test_keep_alive_spares_a_client_that_pings(port: int) -> None:
    with raw_client(port, m.Connect(f"pinger-{unique()}", keep_alive=1)) as client:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            assert client.request(m.PingReq()) == m.PingResp()
            time.sleep(0.4)
        assert not client.wait_closed(0.2)


# -- the CONNECT timeout ---------------------------------------------------------------


def watched_broker(**options: Any) -> tuple[Any, list[weakref.ref[Any]], list[Any]]:
    """An in-process broker that keeps a weak reference to each server-side connection
    and the CONNECT timer it started for it."""
    refs: list[weakref.ref[Any]] = []
    timers: list[Any] = []

    class Watched(broker_module().Broker):  # type: ignore[misc]
        def on_connect(self, conn: Any) -> None:
            refs.append(weakref.ref(conn))
            super().on_connect(conn)
            timers.append(self._connect_timers[conn])

    return Watched(CODEC, sys_interval=0, **options), refs, timers


@pytest.mark.parametrize("sends_connect", [True, False])
def test_a_closed_connection_is_not_held_by_its_timers(serve: Any, sends_connect: bool) -> None:
    """A client that connects (with a keep-alive), maybe sends CONNECT, and goes: its
    connection is freed at once, not held by its timers until they would be due
    (CONNECT: 10 s; keep-alive: 90 s).  The broker cancels them; the loop drops a
    cancelled timer only once it reaches the top of its heap, and a busy broker has
    live timers ahead of it (here the CONNECT timer of a client that came first), so a
    cancelled timer must let go of what it would have called."""
    broker, refs, timers = watched_broker()
    port = serve(broker, codec=CODEC, loops=1).address[1]
    started = time.monotonic()
    with raw_client(port) as earlier:  # its CONNECT timer is due first, and stays live
        assert wait_until(lambda: timers)
        connect = m.Connect(f"gone-{unique()}", keep_alive=60) if sends_connect else None
        with raw_client(port, connect):
            assert wait_until(lambda: len(timers) == 2)
            # Cancelled once CONNECT is accepted (before its CONNACK), else running.
            assert timers[1].cancelled is sends_connect
        assert wait_until(lambda: len(broker._connect_timers) == 1)  # (no CONNECT: on_close)
        assert timers[1].cancelled and not timers[0].cancelled
        timers.clear()  # (the test's own references)

        def freed() -> bool:
            gc.collect()
            return refs[1]() is None

        assert wait_until(freed, timeout=3.0), "a closed connection is still referenced"
        assert time.monotonic() - started < broker.connect_timeout / 2
        assert refs[0]() is not None and not earlier.wait_closed(0)


def test_a_connection_that_sends_no_connect_is_closed_at_connect_timeout(serve: Any) -> None:
    broker, refs, timers = watched_broker(connect_timeout=0.3)
    port = serve(broker, codec=CODEC, loops=1).address[1]
    started = time.monotonic()
    with raw_client(port) as silent:
        assert wait_until(lambda: refs)
        with raw_client(port, m.Connect(f"p-{unique()}")) as prompt:
            assert silent.wait_closed(5.0), "a client that sent no CONNECT was not closed"
            assert 0.25 < time.monotonic() - started < 3.0
            time.sleep(0.4)  # past the prompt client's timeout too: cancelled at CONNECT
            assert prompt.request(m.PingReq()) == m.PingResp()
            assert not prompt.wait_closed(0.1)
            assert [timer.cancelled for timer in timers] == [False, True]
            timers.clear()

            def freed() -> bool:
                gc.collect()
                return refs[0]() is None

            assert wait_until(freed), "the connection closed at its timeout is still held"
    assert wait_until(lambda: not broker._connect_timers)


def test_connect_timeout_is_checked() -> None:
    module = broker_module()
    assert module.Broker(CODEC).connect_timeout == module.CONNECT_TIMEOUT == 10.0
    for bad in (0, -1.0, math.nan):
        with pytest.raises(ValueError, match="connect_timeout"):
            module.Broker(CODEC, connect_timeout=bad)


def test_raw_qos1_packet_ids_and_puback(port: int) -> None:
    topic = f"{unique()}/raw"
    with raw_client(port, m.Connect(f"sub-{unique()}")) as sub, \
            raw_client(port, m.Connect(f"pub-{unique()}")) as pub:
        assert sub.request(m.Subscribe(7, ((topic, 1),))) == m.SubAck(7, (1,))
        ids = set()
        for i in range(3):
            assert pub.request(m.Publish(topic, b"%d" % i, 1, packet_id=100 + i)) == \
                m.PubAck(100 + i)
            got = sub.recv()
            assert (got.topic, got.payload, got.qos, got.dup) == (topic, b"%d" % i, 1, False)
            assert got.packet_id is not None and got.packet_id not in ids
            ids.add(got.packet_id)
            sub.send(m.PubAck(got.packet_id))
        # QoS 2 from a publisher: PUBREC, delivered once even if resent, then PUBCOMP.
        assert pub.request(m.Publish(topic, b"q2", 2, packet_id=9)) == m.PubRec(9)
        assert pub.request(m.Publish(topic, b"q2", 2, dup=True, packet_id=9)) == m.PubRec(9)
        assert pub.request(m.PubRel(9)) == m.PubComp(9)
        assert sub.recv().payload == b"q2"
        assert sub.request(m.PingReq()) == m.PingResp()  # nothing else was queued before


def test_pipelined_publishes_reach_a_subscriber_on_another_loop_in_order(port: int) -> None:
    topic = f"{unique()}/flood"
    count = 2000
    with raw_client(port, m.Connect(f"sub-{unique()}")) as sub, \
            raw_client(port, m.Connect(f"pub-{unique()}")) as pub:
        assert sub.request(m.Subscribe(1, ((topic, 1),))) == m.SubAck(1, (1,))
        pub.send_bytes(b"".join(CODEC.encode(m.Publish(topic, b"%d" % i, i % 2,
                                                       packet_id=i + 1 if i % 2 else None))
                                for i in range(count)))  # one write
        acks = [pub.recv() for _ in range(count // 2)]
        assert acks == [m.PubAck(i + 1) for i in range(1, count, 2)]
        got = receive_acking(sub, count)
        # QoS 1 messages past the window (20) wait for PUBACKs while QoS 0 ones go at
        # once: each QoS keeps its order (spec 4.6), the two may interleave.
        assert [g.payload for g in got if g.qos == 0] == [b"%d" % i for i in range(0, count, 2)]
        assert [g.payload for g in got if g.qos == 1] == [b"%d" % i for i in range(1, count, 2)]


def test_unacknowledged_messages_are_resent_with_dup_on_reconnect(port: int) -> None:
    topic = f"{unique()}/resend"
    client_id = f"resend-{unique()}"
    with raw_client(port, m.Connect(client_id, clean_session=False)) as first, \
            raw_client(port, m.Connect(f"pub-{unique()}")) as pub:
        assert first.request(m.Subscribe(1, ((topic, 1),))) == m.SubAck(1, (1,))
        assert pub.request(m.Publish(topic, b"acked", 1, packet_id=1)) == m.PubAck(1)
        acked = first.recv()
        first.send(m.PubAck(acked.packet_id))
        assert pub.request(m.Publish(topic, b"not acked", 1, packet_id=2)) == m.PubAck(2)
        unacked = first.recv()
        assert (unacked.payload, unacked.dup) == (b"not acked", False)
        assert first.request(m.PingReq()) == m.PingResp()  # the PUBACK above has landed
    with raw_client(port) as again:
        assert again.request(m.Connect(client_id, clean_session=False)) == m.ConnAck(0, True)
        assert again.recv() == m.Publish(topic, b"not acked", 1, dup=True,
                                         packet_id=unacked.packet_id)
        assert again.request(m.PingReq()) == m.PingResp()


def test_an_absent_clients_queue_is_bounded(port: int) -> None:
    topic = f"{unique()}/queued"
    client_id = f"away-{unique()}"
    with raw_client(port, m.Connect(client_id, clean_session=False)) as away:
        assert away.request(m.Subscribe(1, ((topic, 1),))) == m.SubAck(1, (1,))
        away.send(m.Disconnect())
        assert away.wait_closed()
    with raw_client(port, m.Connect(f"pub-{unique()}")) as pub:
        pub.send_bytes(b"".join(CODEC.encode(m.Publish(topic, b"%d" % i, 1, packet_id=i + 1))
                                for i in range(1005)))
        assert [pub.recv() for _ in range(1005)] == [m.PubAck(i + 1) for i in range(1005)]
    with raw_client(port) as back:
        assert back.request(m.Connect(client_id, clean_session=False)) == m.ConnAck(0, True)
        got = receive_acking(back, 1000)  # MAX_QUEUED: the first 1000 are kept
        assert [g.payload for g in got] == [b"%d" % i for i in range(1000)]
        assert not any(g.dup for g in got)  # queued, never sent: no DUP (spec 3.3.1.1)
        assert back.request(m.PingReq()) == m.PingResp()  # and nothing after them


def test_will_is_published_unless_disconnected(port: int) -> None:
    topic = f"{unique()}/will"
    with raw_client(port, m.Connect(f"w-{unique()}")) as watcher:
        assert watcher.request(m.Subscribe(1, ((topic, 0),))) == m.SubAck(1, (0,))
        polite = raw_client(port, m.Connect(f"p-{unique()}", will=m.Will(topic, b"polite")))
        polite.send(m.Disconnect())
        assert polite.wait_closed()
        polite.close()
        rude = raw_client(port, m.Connect(f"r-{unique()}", will=m.Will(topic, b"gone")))
        rude.close()  # no DISCONNECT
        assert watcher.recv() == m.Publish(topic, b"gone")


def test_protocol_errors_close_the_connection(port: int) -> None:
    with raw_client(port) as client:
        client.send(m.Connect("old", protocol_level=3))
        assert client.recv() == m.ConnAck(1)  # unacceptable protocol level
        assert client.wait_closed()
    with raw_client(port) as client:
        client.send(m.Connect("", clean_session=False))
        assert client.recv() == m.ConnAck(2)  # identifier rejected
        assert client.wait_closed()
    with raw_client(port) as client:  # a packet before CONNECT
        client.send(m.PingReq())
        assert client.wait_closed()
    with raw_client(port, m.Connect(f"twice-{unique()}")) as client:
        client.send(m.Connect("again"))  # a second CONNECT
        assert client.wait_closed()
    with raw_client(port, m.Connect(f"bad-{unique()}")) as client:
        client.send_bytes(b"\x36\x05\x00\x01a\x00\x01")  # PUBLISH with QoS 3
        assert client.wait_closed()


def test_invalid_topic_filters_fail_in_the_suback(port: int) -> None:
    # paho refuses to send a bad filter, so this one is raw.
    base = unique()
    with raw_client(port, m.Connect(f"filters-{base}")) as client:
        request = m.Subscribe(3, ((f"{base}/#/x", 0), (f"{base}/ok/+", 1), ("a+", 1)))
        assert client.request(request) == m.SubAck(3, (0x80, 1, 0x80))
        assert client.request(m.PingReq()) == m.PingResp()


def test_a_second_connection_takes_over_the_client_id(port: int) -> None:
    client_id = f"same-{unique()}"
    with raw_client(port, m.Connect(client_id)) as first, \
            raw_client(port, m.Connect(client_id)) as second:
        assert first.wait_closed()
        assert second.request(m.PingReq()) == m.PingResp()


# -- retained messages through wildcards -----------------------------------------------


def test_retained_messages_reach_wildcard_filters(port: int) -> None:
    """Retained messages found by walking each filter through the topic tree: ``+`` one
    level, ``#`` the rest including its parent level; per filter of the SUBSCRIBE in its
    order, each in the order its topic was first retained, at min(QoS), RETAIN set."""
    base = unique()
    stored = [(base, b"parent", 1), (f"{base}/a", b"a", 1), (f"{base}/a/x", b"ax", 1),
              (f"{base}/b/x", b"bx", 0), (f"{base}/b", b"b", 1), (f"{base}/a/x/deep", b"d", 1),
              (f"{base}/", b"empty level", 1)]
    with raw_client(port, m.Connect(f"pub-{base}")) as pub:
        for i, (topic, payload, qos) in enumerate(stored):
            pub.send(m.Publish(topic, payload, qos, True, packet_id=i + 1 if qos else None))
        # Replacing keeps the topic's place; deleting and storing again moves it last.
        pub.send(m.Publish(f"{base}/a", b"a2", 1, True, packet_id=20))
        pub.send(m.Publish(f"{base}/b", b"", 0, True))
        pub.send(m.Publish(f"{base}/b", b"b2", 1, True, packet_id=21))
        acks = [pub.recv() for _ in range(8)]  # every message routed
        assert acks == [m.PubAck(i) for i in (1, 2, 3, 5, 6, 7, 20, 21)]
    order = [base, f"{base}/a", f"{base}/a/x", f"{base}/b/x", f"{base}/a/x/deep", f"{base}/",
             f"{base}/b"]
    stored_now = {base: (b"parent", 1), f"{base}/a": (b"a2", 1), f"{base}/a/x": (b"ax", 1),
                  f"{base}/b/x": (b"bx", 0), f"{base}/b": (b"b2", 1),
                  f"{base}/a/x/deep": (b"d", 1), f"{base}/": (b"empty level", 1)}
    filters = ((f"{base}/#", 1), (f"{base}/+/x", 0), (f"{base}/a/#", 1), (f"{base}/+", 1),
               (f"{base}/+/+/+", 1), (f"{base}/nothing/#", 1), (f"{base}/a/x", 1))
    matches = {
        f"{base}/#": order,  # "base/#" matches "base" itself too (spec 4.7.1.2)
        f"{base}/+/x": [f"{base}/a/x", f"{base}/b/x"],
        f"{base}/a/#": [f"{base}/a", f"{base}/a/x", f"{base}/a/x/deep"],
        f"{base}/+": [f"{base}/a", f"{base}/", f"{base}/b"],  # "" is a level too
        f"{base}/+/+/+": [f"{base}/a/x/deep"],
        f"{base}/nothing/#": [],
        f"{base}/a/x": [f"{base}/a/x"],
    }
    want = [(topic, stored_now[topic][0], min(qos, stored_now[topic][1]))
            for topic_filter, qos in filters for topic in matches[topic_filter]]
    assert len(want) < 20  # all inside the window: the order across filters is kept too
    with raw_client(port, m.Connect(f"sub-{base}")) as sub:
        assert sub.request(m.Subscribe(5, filters)) == m.SubAck(5, (1, 0, 1, 1, 1, 1, 1))
        got = receive_acking(sub, len(want))
        assert [(g.topic, g.payload, g.qos) for g in got] == want
        assert all(g.retain and not g.dup for g in got)
        assert sub.request(m.PingReq()) == m.PingResp()  # and nothing more


def test_leading_wildcards_skip_dollar_topics_for_retained_messages(serve: Any) -> None:
    """``#`` and ``+/...`` do not match ``$SYS/...`` topics (spec 4.7.2), ``$SYS/#``
    does.  A broker of its own: ``#`` sees every retained message of the broker.  Only
    the broker may publish to ``$`` topics (as it does ``$SYS/broker/``): here the test
    stores them as the broker would; a client's are dropped."""
    broker = broker_module().Broker(CODEC, sys_interval=0)
    own_port = serve(broker, codec=CODEC).address[1]
    with broker.lock:
        for topic in ("$SYS/load", "$SYS/b", "$x"):
            broker._retain(topic, topic.encode(), 1, None, None)
    with raw_client(own_port, m.Connect("pub")) as pub:
        for i, topic in enumerate(("$SYS/load", "$x", "plain", "plain/b", "x/$SYS")):
            # Acknowledged (3.1.1 cannot refuse), but the "$" ones are dropped.
            payload = topic.encode() if i > 1 else b"from a client"
            assert pub.request(m.Publish(topic, payload, 1, True, packet_id=i + 1)) == \
                m.PubAck(i + 1)
    matches = {
        "#": ["plain", "plain/b", "x/$SYS"],
        "+": ["plain"],
        "+/b": ["plain/b"],
        "+/+": ["plain/b", "x/$SYS"],
        "$SYS/#": ["$SYS/load", "$SYS/b"],
        "$SYS/+": ["$SYS/load", "$SYS/b"],
        "+/$SYS": ["x/$SYS"],  # "$" only matters at the first level
        "$x": ["$x"],
    }
    with raw_client(own_port, m.Connect("sub")) as sub:
        filters = tuple((topic_filter, 0) for topic_filter in matches)
        assert sub.request(m.Subscribe(1, filters)) == m.SubAck(1, (0,) * len(filters))
        want = [topic for topics in matches.values() for topic in topics]
        got = [sub.recv() for _ in want]
        assert [g.topic for g in got] == want
        assert all(g.retain and g.payload == g.topic.encode() for g in got)
        assert sub.request(m.PingReq()) == m.PingResp()


def test_overlapping_filters_each_get_the_retained_message(port: int) -> None:
    """Each new subscription gets the retained messages it matches (3.3.1.3): one
    SUBSCRIBE of two filters matching one topic gets it twice, at each filter's QoS."""
    topic = f"{unique()}/state"
    with raw_client(port, m.Connect(f"pub-{unique()}")) as pub:
        assert pub.request(m.Publish(topic, b"on", 1, True, packet_id=1)) == m.PubAck(1)
    with raw_client(port, m.Connect(f"sub-{unique()}")) as sub:
        request = m.Subscribe(2, ((topic, 0), (topic.split("/")[0] + "/#", 1)))
        assert sub.request(request) == m.SubAck(2, (0, 1))
        got = receive_acking(sub, 2)
        assert [(g.topic, g.payload, g.qos, g.retain) for g in got] == [
            (topic, b"on", 0, True), (topic, b"on", 1, True)]
        assert sub.request(m.PingReq()) == m.PingResp()
    with raw_client(port, m.Connect(f"pub-{unique()}")) as pub:
        pub.send(m.Publish(topic, b"", 0, True))  # leave nothing behind
        assert pub.request(m.PingReq()) == m.PingResp()


# -- limits: each client's window and queue, topic depth -------------------------------

INFLIGHT, QUEUED, LEVELS = 3, 5, 8


@pytest.fixture(scope="module")
def limited() -> Iterator[int]:
    """A broker with small limits, set from the command line."""
    with example_server("mqtt_broker.py", "--loops", "2", "--max-inflight", str(INFLIGHT),
                        "--max-queued", str(QUEUED), "--max-topic-levels",
                        str(LEVELS)) as (proc, broker_port):
        yield broker_port
        assert proc.poll() is None, "the broker died during the tests"


def publish_qos1(port: int, topic: str, payloads: list[bytes]) -> None:
    """Publish at QoS 1 in one write; return once every PUBACK is back (the broker has
    routed them all)."""
    with raw_client(port, m.Connect(f"pub-{unique()}")) as pub:
        pub.send_bytes(b"".join(CODEC.encode(m.Publish(topic, payload, 1, packet_id=i + 1))
                                for i, payload in enumerate(payloads)))
        assert [pub.recv() for _ in payloads] == [m.PubAck(i + 1)
                                                  for i in range(len(payloads))]


def test_a_subscriber_that_does_not_ack_gets_max_inflight_messages(limited: int) -> None:
    topic = f"{unique()}/window"
    count = INFLIGHT + QUEUED
    with raw_client(limited, m.Connect(f"sub-{unique()}")) as sub:
        assert sub.request(m.Subscribe(1, ((topic, 1),))) == m.SubAck(1, (1,))
        publish_qos1(limited, topic, [b"%d" % i for i in range(count)])
        first = [sub.recv() for _ in range(INFLIGHT)]
        assert [g.payload for g in first] == [b"%d" % i for i in range(INFLIGHT)]
        assert len({g.packet_id for g in first}) == INFLIGHT
        assert sub.request(m.PingReq()) == m.PingResp()  # exactly the window, no more
        with raw_client(limited, m.Connect(f"pub0-{unique()}")) as pub:
            pub.send(m.Publish(topic, b"qos0", 0))  # QoS 0 is not held by the window
            assert pub.request(m.PingReq()) == m.PingResp()
        assert sub.recv() == m.Publish(topic, b"qos0")
        sub.send(m.PubAck(first[0].packet_id))  # one slot frees: one more comes
        nxt = sub.recv()
        assert (nxt.payload, nxt.dup) == (b"%d" % INFLIGHT, False)
        assert nxt.packet_id not in {g.packet_id for g in first[1:]}
        assert sub.request(m.PingReq()) == m.PingResp()
        for message in (*first[1:], nxt):
            sub.send(m.PubAck(message.packet_id))
        rest = receive_acking(sub, count - INFLIGHT - 1)
        assert [g.payload for g in rest] == [b"%d" % i for i in range(INFLIGHT + 1, count)]
        assert sub.request(m.PingReq()) == m.PingResp()


def test_messages_past_the_queue_are_dropped(limited: int) -> None:
    topic = f"{unique()}/overflow"
    with raw_client(limited, m.Connect(f"sub-{unique()}")) as sub:
        assert sub.request(m.Subscribe(1, ((topic, 1),))) == m.SubAck(1, (1,))
        publish_qos1(limited, topic, [b"%d" % i for i in range(INFLIGHT + QUEUED + 4)])
        got = receive_acking(sub, INFLIGHT + QUEUED)  # the first ones are kept, in order
        assert [g.payload for g in got] == [b"%d" % i for i in range(INFLIGHT + QUEUED)]
        assert sub.request(m.PingReq()) == m.PingResp()  # the 4 others were dropped
        publish_qos1(limited, topic, [b"later"])  # room again
        assert receive_acking(sub, 1)[0].payload == b"later"


def test_an_absent_clients_queue_is_max_queued(limited: int) -> None:
    topic = f"{unique()}/away"
    client_id = f"away-{unique()}"
    with raw_client(limited, m.Connect(client_id, clean_session=False)) as away:
        assert away.request(m.Subscribe(1, ((topic, 1),))) == m.SubAck(1, (1,))
        away.send(m.Disconnect())
        assert away.wait_closed()
    publish_qos1(limited, topic, [b"%d" % i for i in range(QUEUED + 3)])
    with raw_client(limited) as back:
        assert back.request(m.Connect(client_id, clean_session=False)) == m.ConnAck(0, True)
        got = receive_acking(back, QUEUED)
        assert [g.payload for g in got] == [b"%d" % i for i in range(QUEUED)]
        assert back.request(m.PingReq()) == m.PingResp()


def test_a_subscribe_sends_at_most_max_inflight_plus_max_queued_retained(
        limited: int) -> None:
    """What one SUBSCRIBE's retained messages may add is bounded like the queue, at any
    QoS (mosquitto's bound too): the oldest topics first, then nothing more."""
    base = unique()
    with raw_client(limited, m.Connect(f"pub-{base}")) as pub:
        for i in range(INFLIGHT + QUEUED + 4):
            pub.send(m.Publish(f"{base}/{i}", b"%d" % i, 0, True))
        assert pub.request(m.PingReq()) == m.PingResp()
    with raw_client(limited, m.Connect(f"sub-{base}")) as sub:
        request = m.Subscribe(1, ((f"{base}/+", 0), (f"{base}/#", 0)))
        assert sub.request(request) == m.SubAck(1, (0, 0))
        got = [sub.recv() for _ in range(INFLIGHT + QUEUED)]
        assert [g.payload for g in got] == [b"%d" % i for i in range(INFLIGHT + QUEUED)]
        assert sub.request(m.PingReq()) == m.PingResp()
        # Live messages are not held back by it.
        with raw_client(limited, m.Connect(f"pub2-{base}")) as pub:
            pub.send(m.Publish(f"{base}/0", b"live", 0))
            assert pub.request(m.PingReq()) == m.PingResp()
        assert sub.recv() == m.Publish(f"{base}/0", b"live")


def test_topics_deeper_than_max_topic_levels_are_refused(limited: int, port: int) -> None:
    """A filter over the bound fails in the SUBACK (the others are served); a PUBLISH
    or a will topic over it closes the connection (MQTT 3.1.1 cannot refuse one)."""
    base = unique()
    deepest = "/".join([base] + ["l"] * (LEVELS - 1))  # LEVELS levels
    with raw_client(limited, m.Connect(f"deep-{base}")) as client:
        request = m.Subscribe(1, ((deepest, 1), (deepest + "/x", 1), ("/".join(["+"] * 32767), 0),
                                  (f"{base}/#", 0), ("/" * LEVELS, 0)))
        assert client.request(request) == m.SubAck(1, (1, 0x80, 0x80, 0, 0x80))
        client.send(m.Publish(deepest, b"ok", 1, packet_id=1))
        got = [client.recv(), client.recv()]  # its own copy (one, at QoS 1) and the PUBACK
        assert m.PubAck(1) in got
        copy = next(g for g in got if g.type == "publish")
        assert (copy.topic, copy.payload, copy.qos) == (deepest, b"ok", 1)
        client.send(m.PubAck(copy.packet_id))
        assert client.request(m.PingReq()) == m.PingResp()
        client.send(m.Publish(deepest + "/x", b"too deep", 0))  # a protocol error
        assert client.wait_closed()
    with raw_client(limited) as client:  # a will that could never be published
        client.send(m.Connect(f"will-{base}", will=m.Will(deepest + "/x", b"w")))
        assert client.wait_closed()
        with pytest.raises(ConnectionClosed):
            client.recv()
    with raw_client(port, m.Connect(f"default-{base}")) as client:  # the default: 200
        request = m.Subscribe(2, (("/".join(["+"] * 200), 0), ("/".join(["+"] * 201), 0)))
        assert client.request(request) == m.SubAck(2, (0, 0x80))


# -- limits: the retained-tree nodes one SUBSCRIBE may visit ---------------------------


def broker_module() -> Any:
    """``examples/mqtt_broker.py``, imported, for what a subprocess cannot show: its
    retained tree's walks, its counters and its log."""
    import importlib

    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module("mqtt_broker")


def ten_topics() -> Any:
    """A retained tree of ``a/0`` .. ``a/9``, stored in that order (oldest first).

    Visits (see RetainedTree.walk): ``a/3`` 5 (root taken, ``a`` looked up, ``a``
    taken, ``3`` looked up, ``3`` taken); ``a/+`` 23 and ``#`` 23 (root, ``a``, the 10
    children looked at, then each taken)."""
    tree = broker_module().RetainedTree()
    for k in range(10):
        tree.set(f"a/{k}", b"%d" % k, 0)
    return tree


def test_a_retained_walk_stops_at_its_visits_with_what_it_found() -> None:
    tree = ten_topics()
    topics = [f"a/{k}" for k in range(10)]

    def walk(topic_filter: str, visits: int) -> tuple[list[str], int]:
        found, left = tree.walk(topic_filter, visits)
        return [message.topic for message in found], left

    for topic_filter in ("a/+", "#", "+/+"):
        assert walk(topic_filter, 23) == (topics, 0)  # exactly enough
        assert walk(topic_filter, 1000) == (topics, 977)
    assert walk("a/3", 5) == (["a/3"], 0)
    assert walk("a/3", 4) == ([], -1)
    assert walk("a/x", 4) == ([], 0)  # the miss costs its look-up
    # Short: a level is paid for before it is looked at, then its children are taken in
    # the order they were made, so a cut walk has found the oldest it could.
    assert walk("a/+", 17) == (topics[:4], -1)
    assert walk("#", 19) == (topics[:6], -1)
    assert walk("a/+", 12) == ([], -1)  # the 10 children's looks did not fit
    assert walk("a/+", 0) == ([], -1)
    # Matching nothing costs what is looked at: "+/+/x" takes "a", looks at its 10
    # children (none goes on), and finds nothing.
    assert walk("+/+/x", 13) == ([], 0)
    assert walk("+/+/x", 12) == ([], -1)
    assert tree.match("#") == tree.walk("#", 1 << 62)[0]  # match: no bound


def test_a_subscribe_sends_retained_messages_up_to_max_retained_visits(
        serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Past the visits, the rest of the SUBSCRIBE's retained messages are not sent
    (counted, logged); the SUBACK grants every filter all the same, and live messages
    reach them."""
    module = broker_module()
    broker = module.Broker(CODEC, max_retained_visits=5 + 23 + 10)
    server = serve(broker, codec=CODEC)
    port = server.address[1]
    with raw_client(port, m.Connect("pub")) as pub:
        for k in range(10):
            pub.send(m.Publish(f"a/{k}", b"%d" % k, 0, True))
        assert pub.request(m.PingReq()) == m.PingResp()
    caplog.set_level("WARNING", logger="mqtt_broker")
    with raw_client(port, m.Connect("sub")) as sub:
        # "a/3" costs 5, "a/+" 23; "#" runs out (10 left: root, "a", then its 10
        # children do not fit) and "a/5" is not walked.
        request = m.Subscribe(1, (("a/3", 0), ("a/+", 0), ("#", 0), ("a/5", 0)))
        assert sub.request(request) == m.SubAck(1, (0, 0, 0, 0))
        got = [sub.recv() for _ in range(11)]
        assert [g.topic for g in got] == ["a/3"] + [f"a/{k}" for k in range(10)]
        assert all(g.retain for g in got)
        assert sub.request(m.PingReq()) == m.PingResp()  # nothing more
        assert (broker.retained_cut_by_visits, broker.retained_cut_by_queue) == (1, 0)
        assert [r.getMessage() for r in caplog.records] == [
            "sub: a SUBSCRIBE visited max_retained_visits (38) retained-tree nodes: the rest "
            "of its retained messages are not sent (its subscriptions stand)"]
        with raw_client(port, m.Connect("pub2")) as pub:
            pub.send(m.Publish("a/5", b"live", 0))
            assert pub.request(m.PingReq()) == m.PingResp()
        assert sub.recv() == m.Publish("a/5", b"live")  # once: "a/+", "#", "a/5" all hold
        assert sub.request(m.PingReq()) == m.PingResp()
        # A walk cut short sends what it found, the oldest first; the next SUBSCRIBE has
        # its own visits.
        request = m.Subscribe(2, (("a/+", 0), ("a/+", 0), ("a/9", 0)))
        assert sub.request(request) == m.SubAck(2, (0, 0, 0))
        got = [sub.recv() for _ in range(21)]  # a repeated filter: walked once, sent twice
        assert [g.topic for g in got] == [f"a/{k}" for k in range(10)] * 2 + ["a/9"]
        assert sub.request(m.PingReq()) == m.PingResp()
        assert broker.retained_cut_by_visits == 1
        broker.max_retained_visits = 17
        assert sub.request(m.Subscribe(3, (("a/+", 0), ("a/9", 0)))) == m.SubAck(3, (0, 0))
        got = [sub.recv() for _ in range(4)]
        assert [g.topic for g in got] == ["a/0", "a/1", "a/2", "a/3"]
        assert sub.request(m.PingReq()) == m.PingResp()
        assert broker.retained_cut_by_visits == 2
    assert len(caplog.records) == 1  # logged at most every 10 s per client


def test_max_retained_visits_is_checked_and_set_from_the_command_line() -> None:
    module = broker_module()
    with pytest.raises(ValueError, match="max_retained_visits"):
        module.Broker(CODEC, max_retained_visits=-1)
    assert module.Broker(CODEC).max_retained_visits == module.MAX_RETAINED_VISITS == 100_000
    # 0: no retained message is looked up, every subscription is granted.
    with example_server("mqtt_broker.py", "--max-retained-visits", "0") as (proc, own):
        with raw_client(own, m.Connect("pub")) as pub:
            assert pub.request(m.Publish("kept", b"v", 1, True, packet_id=1)) == m.PubAck(1)
        with raw_client(own, m.Connect("sub")) as sub:
            assert sub.request(m.Subscribe(1, (("kept", 1), ("#", 0)))) == m.SubAck(1, (1, 0))
            assert sub.request(m.PingReq()) == m.PingResp()
        assert_stops_cleanly(proc)


def test_limits_out_of_range_are_refused_on_the_command_line() -> None:
    for option, value in (("--max-inflight", "0"), ("--max-inflight", "65536"),
                          ("--max-queued", "-1"), ("--max-topic-levels", "0"),
                          ("--max-retained-visits", "-1"), ("--max-sessions", "0"),
                          ("--max-session-expiry", "-1"),
                          ("--max-session-expiry", "4294967296"),
                          ("--max-connections", "-1"), ("--connect-timeout", "0")):
        done = subprocess.run([sys.executable, str(EXAMPLES / "mqtt_broker.py"), "--port",
                               "0", option, value], env=example_env(), capture_output=True,
                              text=True, timeout=WAIT + STOP_TIMEOUT)
        assert done.returncode == 2, (option, value, done.stderr)
        assert option.lstrip("-").replace("-", "_") in done.stderr


# -- mosquitto_pub / mosquitto_sub -----------------------------------------------------


@pytest.fixture(scope="module")
def mosquitto() -> tuple[str, str]:
    from system_packages import require_program

    return (require_program("mosquitto_pub", package="mosquitto-clients"),
            require_program("mosquitto_sub", package="mosquitto-clients"))


@contextmanager
def mosquitto_sub(programs: tuple[str, str], port: int, topic: str, *, count: int,
                  qos: int = 0, timeout: int = 10, options: tuple[str, ...] = (),
                  output_format: str = "%t|%q|%r|%p") -> Iterator[list[str]]:
    """mosquitto_sub printing ``topic|qos|retain|payload`` lines; yields once its SUBACK
    has arrived (``-d`` says so), and fills the list with its message lines at exit.

    Its stdout is a pipe, which C's stdio buffers whole: ``stdbuf -oL`` makes it line
    buffered, so the SUBACK line arrives when it is printed.
    """
    stdbuf = shutil.which("stdbuf")
    if stdbuf is None:
        pytest.skip("stdbuf (coreutils) is needed to read mosquitto_sub as it prints")
    proc = subprocess.Popen(
        [stdbuf, "-oL", programs[1], "-h", "127.0.0.1", "-p", str(port), "-t", topic,
         "-q", str(qos), "-C", str(count), "-W", str(timeout), "-d", "-F", output_format,
         *options],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    output: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            output.put(raw.decode(errors="replace").rstrip("\n"))
        output.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    lines: list[str] = []
    try:
        deadline = time.monotonic() + WAIT
        while True:
            line = output.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, "mosquitto_sub exited before its SUBACK"
            if "received SUBACK" in line:
                break
        yield lines
        proc.wait(timeout + 5)
        reader.join(WAIT)
        while (line := output.get(timeout=WAIT)) is not None:
            if not line.startswith(("Client ", "Subscribed ")):
                lines.append(line)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
        reader.join(WAIT)
        proc.stdout.close()


def mosquitto_pub(programs: tuple[str, str], port: int, topic: str, message: str | None,
                  *options: str) -> None:
    payload = ["-n"] if message is None else ["-m", message]
    done = subprocess.run([programs[0], "-h", "127.0.0.1", "-p", str(port), "-t", topic,
                           *payload, *options], capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("qos", [0, 1])
def test_mosquitto_sub_receives_what_mosquitto_pub_publishes(
        mosquitto: tuple[str, str], port: int, qos: int) -> None:
    base = unique()
    with mosquitto_sub(mosquitto, port, f"{base}/#", count=3, qos=qos) as lines:
        for i, topic in enumerate((f"{base}/a", f"{base}/a/b", f"{base}/c")):
            mosquitto_pub(mosquitto, port, topic, f"hello {i}", "-q", str(qos))
    assert lines == [f"{base}/a|{qos}|0|hello 0", f"{base}/a/b|{qos}|0|hello 1",
                     f"{base}/c|{qos}|0|hello 2"]


def test_mosquitto_single_level_wildcard(mosquitto: tuple[str, str], port: int) -> None:
    base = unique()
    with mosquitto_sub(mosquitto, port, f"{base}/+/temp", count=2, qos=1) as lines:
        for topic in (f"{base}/kitchen/temp", f"{base}/kitchen/hum",
                      f"{base}/x/y/temp", f"{base}/hall/temp"):
            mosquitto_pub(mosquitto, port, topic, topic, "-q", "1")
    assert lines == [f"{base}/kitchen/temp|1|0|{base}/kitchen/temp",
                     f"{base}/hall/temp|1|0|{base}/hall/temp"]


def test_mosquitto_retained(mosquitto: tuple[str, str], port: int) -> None:
    topic = f"{unique()}/status"
    mosquitto_pub(mosquitto, port, topic, "online", "-r", "-q", "1")
    with mosquitto_sub(mosquitto, port, topic, count=1, qos=1) as lines:
        pass  # the retained message follows the SUBACK
    assert lines == [f"{topic}|1|1|online"]
    mosquitto_pub(mosquitto, port, topic, "replaced", "-r")
    with mosquitto_sub(mosquitto, port, topic, count=1, qos=1) as lines:
        pass
    assert lines == [f"{topic}|0|1|replaced"]
    mosquitto_pub(mosquitto, port, topic, None, "-r")  # -n: an empty retained deletes
    with mosquitto_sub(mosquitto, port, topic, count=1, timeout=1) as lines:
        pass
    assert not [line for line in lines if line.startswith(topic)], lines  # -W ran out


# -- stopping --------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_broker_stops_cleanly_with_clients_connected(sig: signal.Signals) -> None:
    with example_server("mqtt_broker.py", "--loops", "1", "--quiet") as (proc, broker_port):
        client = Paho(broker_port, "stopper")
        try:
            client.subscribe("x/#")
            assert_stops_cleanly(proc, sig)
        finally:
            client.client.loop_stop()
