"""``examples/mqtt_broker.py`` serving MQTT 5.0 (and what 5.0 brought to every version:
QoS 2 to subscribers, ``$SYS``, the 3.1 client-id rules), against clients nobody here
wrote: paho-mqtt speaking ``MQTTv5``, the mosquitto clients with ``-V mqttv5`` and
MQTT.js (installed with npm), plus raw packets (``BlockingClient`` with
``mqtt(protocol_level=5)``) for what those clients never do.

The scenarios of Eclipse Paho's interoperability suite (``interoperability/
client_test.py`` and ``client_test5.py`` in eclipse/paho.mqtt.testing) are written as
tests of our own, named ``test_interop_*`` after the suite's, each run on MQTT 3.1.1
and 5.0 where the scenario exists in both; and the suite's MQTT 5.0 scenarios
themselves, as paho-mqtt's source distribution on PyPI ships them, run against the
broker (``test_paho_interoperability_suite_mqtt5``).

The broker runs as a subprocess on a free loopback port, with two loops; every wait is
bounded and the broker is always killed.
"""

from __future__ import annotations

import importlib.metadata
import json
import queue
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from example_process import example_env, example_server
from test_mqtt_broker import broker_module, mosquitto, mosquitto_pub, mosquitto_sub

from gevwire.codecs import mqtt as m
from gevwire.testing import BlockingClient

paho_client = pytest.importorskip("paho.mqtt.client")
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402
from paho.mqtt.subscribeoptions import SubscribeOptions  # noqa: E402

__all__ = ["mosquitto"]  # a fixture, used by the mosquitto tests below

WAIT = 10.0  # any single expected event
CODEC = m.mqtt()
CODEC5 = m.mqtt(protocol_level=5)
#: The broker's limits for these tests, set on its command line.
ALIASES, RECEIVE_MAX, MAX_KEEP_ALIVE, SYS_INTERVAL = 4, 3, 30, 0.5

pytestmark = [pytest.mark.timeout(120), pytest.mark.io]


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with example_server("mqtt_broker.py", "--loops", "2", "--quiet",
                        "--topic-alias-maximum", str(ALIASES),
                        "--receive-maximum", str(RECEIVE_MAX),
                        "--max-keep-alive", str(MAX_KEEP_ALIVE),
                        "--sys-interval", str(SYS_INTERVAL)) as (proc, broker_port):
        yield broker_port
        assert proc.poll() is None, "the broker died during the tests"


def unique() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def props(packet: int, **values: Any) -> Any:
    """paho Properties of a packet type: ``props(PacketTypes.PUBLISH, UserProperty=...)``."""
    out = Properties(packet)
    for name, value in values.items():
        for item in (value if isinstance(value, list) else [value]):
            setattr(out, name, item)
    return out


# -- paho ------------------------------------------------------------------------------

VERSIONS = pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])


class Paho:
    """A paho-mqtt client (callback API v2), MQTT 5.0 or 3.1.1, with bounded helpers."""

    def __init__(self, port: int, client_id: str = "", *, v5: bool = True,
                 clean: bool = True, keepalive: int = 60, properties: Any = None,
                 will: tuple[str, bytes, int, bool, Any] | None = None) -> None:
        kwargs: dict[str, Any] = {} if v5 else {"clean_session": clean}
        self.client = paho_client.Client(
            paho_client.CallbackAPIVersion.VERSION2, client_id=client_id,
            protocol=paho_client.MQTTv5 if v5 else paho_client.MQTTv311, **kwargs)
        self.v5 = v5
        self.messages: queue.Queue[Any] = queue.Queue()
        self.acks: queue.Queue[Any] = queue.Queue()
        self.disconnects: queue.Queue[Any] = queue.Queue()
        self.connected = threading.Event()
        self.connack: Any = None
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.acks.put(
            ("suback", mid, [int(code.value) for code in codes]))
        self.client.on_unsubscribe = lambda c, u, mid, codes, p: self.acks.put(
            ("unsuback", mid, [int(code.value) for code in codes]))
        self.client.on_disconnect = lambda c, u, flags, reason, p: self.disconnects.put(
            int(reason.value))
        if will is not None:
            topic, payload, qos, retain, will_props = will
            self.client.will_set(topic, payload, qos, retain, properties=will_props)
        if v5:
            self.client.connect("127.0.0.1", port, keepalive, clean_start=clean,
                                properties=properties)
        else:
            self.client.connect("127.0.0.1", port, keepalive)
        self.client.loop_start()
        assert self.connected.wait(WAIT), "no CONNACK"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        self.connack = (flags, int(reason.value), properties)
        self.connected.set()

    def subscribe(self, topic: str, qos: int = 0, *, options: Any = None,
                  properties: Any = None) -> list[int]:
        if options is not None:
            _, mid = self.client.subscribe(topic, options=options, properties=properties)
        elif self.v5:
            _, mid = self.client.subscribe(topic, qos, properties=properties)
        else:
            _, mid = self.client.subscribe(topic, qos)
        kind, ack_mid, codes = self.acks.get(timeout=WAIT)
        assert (kind, ack_mid) == ("suback", mid)
        return list(codes)

    def unsubscribe(self, topic: str) -> list[int]:
        _, mid = self.client.unsubscribe(topic)
        kind, ack_mid, codes = self.acks.get(timeout=WAIT)
        assert (kind, ack_mid) == ("unsuback", mid)
        return list(codes)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                properties: Any = None) -> Any:
        info = self.client.publish(topic, payload, qos, retain, properties=properties)
        info.wait_for_publish(WAIT)
        assert info.is_published()
        return info

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

    def make(*args: Any, **kwargs: Any) -> Paho:
        client = Paho(port, *args, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def raw5(port: int, connect: m.Connect | None = None, **connack: Any) -> BlockingClient:
    """A raw MQTT 5.0 client; ``connect`` sent and its CONNACK's reason code checked."""
    client = BlockingClient(("127.0.0.1", port), CODEC5, timeout=WAIT)
    if connect is not None:
        got = client.request(connect)
        assert isinstance(got, m.ConnAck) and got.return_code == 0, got
        for key, value in connack.items():
            assert getattr(got, key) == value, (key, got)
    return client


def connect5(client_id: str, *, clean: bool = True, keep_alive: int = 60,
             **properties: Any) -> m.Connect:
    return m.Connect(client_id, clean, keep_alive, protocol_level=5, properties=properties)


def receive_acking(client: BlockingClient, count: int) -> list[m.Publish]:
    """The next ``count`` PUBLISHes, QoS 1 acknowledged, QoS 2 taken to PUBCOMP."""
    got = []
    while len(got) < count:
        message = client.recv()
        if message.type == "pubrel":
            client.send(m.PubComp(message.packet_id))
            continue
        assert message.type == "publish", message
        if message.qos == 1:
            client.send(m.PubAck(message.packet_id))
        elif message.qos == 2:
            client.send(m.PubRec(message.packet_id))
        got.append(message)
    return got


# -- the Paho interoperability suite's scenarios, 3.1.1 and 5.0 ------------------------


@VERSIONS
def test_interop_basic(paho: Any, v5: bool) -> None:
    topic = f"{unique()}/basic"
    client = paho(v5=v5)
    assert client.subscribe(topic, 2) == [2]
    for qos in (0, 1, 2):
        client.publish(topic, b"qos %d" % qos, qos)
    got = [client.receive() for _ in range(3)]
    assert sorted((g.payload, g.qos) for g in got) == [(b"qos 0", 0), (b"qos 1", 1),
                                                       (b"qos 2", 2)]
    assert client.nothing_more()


@VERSIONS
def test_interop_retained_messages(paho: Any, v5: bool) -> None:
    base = unique()
    publisher = paho(v5=v5)
    for qos, name in enumerate(("a", "b/c", "b/d")):
        publisher.publish(f"{base}/{name}", b"retained %d" % qos, qos, retain=True)
    subscriber = paho(v5=v5)
    assert subscriber.subscribe(f"{base}/#", 2) == [2]
    got = sorted((g.topic, g.payload, g.qos, g.retain) for g in
                 (subscriber.receive() for _ in range(3)))
    assert got == [(f"{base}/a", b"retained 0", 0, True), (f"{base}/b/c", b"retained 1", 1,
                                                              True),
                   (f"{base}/b/d", b"retained 2", 2, True)]
    for name in ("a", "b/c", "b/d"):  # clean up: an empty retained message deletes
        publisher.publish(f"{base}/{name}", b"", 1, retain=True)
    late = paho(v5=v5)
    assert late.subscribe(f"{base}/#", 2) == [2]
    assert late.nothing_more()


@VERSIONS
def test_interop_offline_message_queueing(paho: Any, port: int, v5: bool) -> None:
    topic = f"{unique()}/offline"
    client_id = f"offline-{unique()}"
    expiry = props(PacketTypes.CONNECT, SessionExpiryInterval=60) if v5 else None
    first = paho(client_id, v5=v5, clean=False, properties=expiry)
    assert first.subscribe(topic, 2) == [2]
    first.close()
    publisher = paho(v5=v5)
    for qos in (0, 1, 2):
        publisher.publish(topic, b"qos %d" % qos, qos)
    again = paho(client_id, v5=v5, clean=False, properties=expiry)
    assert again.connack[0].session_present
    got = sorted((g.payload, g.qos) for g in (again.receive() for _ in range(2)))
    assert got == [(b"qos 1", 1), (b"qos 2", 2)]  # QoS 0 is not queued for the absent
    assert again.nothing_more()


@VERSIONS
def test_interop_will_message(paho: Any, port: int, v5: bool) -> None:
    topic = f"{unique()}/will"
    watcher = paho(v5=v5)
    assert watcher.subscribe(topic, 2) == [2]
    with raw5(port) if v5 else BlockingClient(("127.0.0.1", port), CODEC, timeout=WAIT) \
            as doomed:
        will = m.Will(topic, b"gone", 2, False, {} if v5 else None)
        connect = m.Connect(f"doomed-{unique()}", will=will, protocol_level=5 if v5 else 4,
                            properties={} if v5 else None)
        assert doomed.request(connect).return_code == 0
        doomed.sock.shutdown(socket.SHUT_RDWR)  # gone without DISCONNECT
    got = watcher.receive()
    assert (got.topic, got.payload, got.qos) == (topic, b"gone", 2)


@VERSIONS
def test_interop_overlapping_subscriptions(paho: Any, v5: bool) -> None:
    base = unique()
    client = paho(v5=v5)
    assert client.subscribe(f"{base}/#", 2) == [2]
    assert client.subscribe(f"{base}/+", 1) == [1]
    client.publish(f"{base}/x", b"overlap", 2)
    got = client.receive()
    assert (got.payload, got.qos) == (b"overlap", 2)  # once, at the highest QoS
    assert client.nothing_more()


@VERSIONS
def test_interop_keepalive(port: int, v5: bool) -> None:
    """A client silent for 1.5x its keep-alive is closed; its will is published; an
    MQTT 5.0 one is told DISCONNECT 0x8D first."""
    codec = CODEC5 if v5 else CODEC
    with BlockingClient(("127.0.0.1", port), codec, timeout=WAIT) as silent:
        level = 5 if v5 else 4
        silent.send(m.Connect(f"silent-{unique()}", keep_alive=1, protocol_level=level,
                              properties={} if v5 else None))
        assert silent.recv().return_code == 0
        started = time.monotonic()
        if v5:
            assert silent.recv(5.0) == m.Disconnect(0x8D, {})
        assert silent.wait_closed(5.0)
        assert 1.2 < time.monotonic() - started < 3.5


@VERSIONS
def test_interop_redelivery_on_reconnect(port: int, paho: Any, v5: bool) -> None:
    """Unacknowledged QoS 1 and 2 messages come again, with DUP, to a resumed session;
    a QoS 2 message PUBREC'd before gets its PUBREL again, not the message: exactly
    once."""
    topic = f"{unique()}/redeliver"
    client_id = f"redeliver-{unique()}"
    codec, level = (CODEC5, 5) if v5 else (CODEC, 4)
    session = {"session_expiry_interval": 60} if v5 else None

    def connect(present: bool) -> BlockingClient:
        client = BlockingClient(("127.0.0.1", port), codec, timeout=WAIT)
        ack = client.request(m.Connect(client_id, False, protocol_level=level,
                                       properties=session))
        assert (ack.return_code, ack.session_present) == (0, present)
        return client

    with connect(False) as client:
        assert client.request(m.Subscribe(1, ((topic, 2),), {} if v5 else None)).type == \
            "suback"
    publisher = paho(v5=v5)
    with connect(True) as client:
        publisher.publish(topic, b"one", 1)
        publisher.publish(topic, b"two", 2)
        publisher.publish(topic, b"three", 2)
        first = [client.recv() for _ in range(3)]
        assert [(p.payload, p.qos, p.dup) for p in first] == [
            (b"one", 1, False), (b"two", 2, False), (b"three", 2, False)]
        assert client.request(m.PubRec(first[1].packet_id)) == m.PubRel(first[1].packet_id)
        # gone: "one" unacknowledged, "two" awaiting PUBCOMP, "three" not PUBREC'd
    with connect(True) as client:
        again = [client.recv() for _ in range(3)]
        assert again[0] == m.Publish(topic, b"one", 1, dup=True, packet_id=first[0].packet_id,
                                     properties={} if v5 else None)
        assert again[1] == m.PubRel(first[1].packet_id)
        assert (again[2].payload, again[2].dup, again[2].packet_id) == (
            b"three", True, first[2].packet_id)
        client.send(m.PubAck(first[0].packet_id))
        client.send(m.PubComp(first[1].packet_id))
        assert client.request(m.PubRec(first[2].packet_id)) == m.PubRel(first[2].packet_id)
        client.send(m.PubComp(first[2].packet_id))
        assert client.request(m.PingReq()) == m.PingResp()
    with connect(True) as client:  # nothing is left in flight: each came exactly once
        assert client.request(m.PingReq()) == m.PingResp()


@VERSIONS
def test_interop_zero_length_clientid(port: int, v5: bool) -> None:
    with BlockingClient(("127.0.0.1", port), CODEC5 if v5 else CODEC, timeout=WAIT) as c:
        if v5:
            ack = c.request(connect5("", clean=False))
            assert ack.return_code == 0
            assert ack.properties["assigned_client_identifier"].startswith("auto-")
        else:
            assert c.request(m.Connect("", clean_session=False)) == m.ConnAck(2)
            assert c.wait_closed(WAIT)
    with BlockingClient(("127.0.0.1", port), CODEC, timeout=WAIT) as c:
        assert c.request(m.Connect("", clean_session=True)) == m.ConnAck(0)


@VERSIONS
def test_interop_subscribe_failure(paho: Any, v5: bool) -> None:
    client = paho(v5=v5)
    # A filter the broker takes no subscription for (deeper than max_topic_levels;
    # paho itself refuses a malformed one) is refused in the SUBACK: 0x80 in 3.1.1,
    # 0x8F (topic filter invalid) in 5.0.
    deep = "/".join([unique()] + ["l"] * 200)
    assert client.subscribe(deep, 1) == [0x8F if v5 else 0x80]


@VERSIONS
def test_interop_dollar_topics(paho: Any, v5: bool) -> None:
    """``#`` does not match ``$SYS``; a client may not publish to ``$`` topics."""
    client = paho(v5=v5)
    assert client.subscribe("#", 0) == [0]
    watcher = paho(v5=v5)
    assert watcher.subscribe("$nope/#", 1) == [1]
    client.publish("$nope/x", b"forbidden", 1)  # acknowledged, and dropped
    assert watcher.nothing_more(SYS_INTERVAL * 2)
    while True:  # what "#" got meanwhile (other tests' traffic), never a $ topic
        try:
            got = client.messages.get_nowait()
        except queue.Empty:
            break
        assert not got.topic.startswith("$"), got.topic


@VERSIONS
def test_interop_unsubscribe(paho: Any, v5: bool) -> None:
    base = unique()
    client = paho(v5=v5)
    for name in ("a", "b", "c"):
        assert client.subscribe(f"{base}/{name}", 1) == [1]
    codes = client.unsubscribe(f"{base}/b")
    assert codes == ([0] if v5 else [])
    if v5:
        assert client.unsubscribe(f"{base}/never") == [0x11]  # no subscription existed
    for name in ("a", "b", "c"):
        client.publish(f"{base}/{name}", name.encode(), 1)
    assert sorted(client.receive().payload for _ in range(2)) == [b"a", b"c"]
    assert client.nothing_more()


# -- MQTT 5.0 only (client_test5.py) ---------------------------------------------------


def test_interop_session_expiry(paho: Any, port: int) -> None:
    topic = f"{unique()}/expiry"
    short, forever = f"short-{unique()}", f"forever-{unique()}"
    with raw5(port, connect5(short, session_expiry_interval=1)) as client:
        assert client.request(m.Subscribe(1, ((topic, 1),), {})).return_codes == (1,)
    with raw5(port, connect5(forever, session_expiry_interval=60)) as client:
        assert client.request(m.Subscribe(1, ((topic, 1),), {})).return_codes == (1,)
    time.sleep(2.0)
    with raw5(port, connect5(short, clean=False), session_present=False), \
            raw5(port, connect5(forever, clean=False, session_expiry_interval=0),
                 session_present=True):
        pass
    with raw5(port, connect5(forever, clean=False), session_present=False):
        pass  # expiry 0 at the last connect: the session ended with it


def test_interop_session_expiry_set_on_disconnect(port: int) -> None:
    client_id = f"later-{unique()}"
    with raw5(port, connect5(client_id, session_expiry_interval=60)) as client:
        client.send(m.Disconnect(0, {"session_expiry_interval": 0}))
        assert client.wait_closed(WAIT)
    with raw5(port, connect5(client_id, clean=False), session_present=False):
        pass
    with raw5(port, connect5(client_id)) as client:  # expiry 0, then more: protocol error
        client.send(m.Disconnect(0, {"session_expiry_interval": 10}))
        assert client.recv() == m.Disconnect(0x82, {})
        assert client.wait_closed(WAIT)


def test_interop_user_properties_and_publish_properties_pass_through(paho: Any) -> None:
    topic = f"{unique()}/props"
    sub, pub = paho(), paho()
    assert sub.subscribe(topic, 1) == [1]
    pub.publish(topic, b"{}", 1, properties=props(
        PacketTypes.PUBLISH, UserProperty=[("a", "1"), ("a", "2"), ("b", "3")],
        ContentType="application/json", PayloadFormatIndicator=1,
        ResponseTopic=f"{topic}/reply", CorrelationData=b"\x00\x01"))
    got = sub.receive()
    assert got.properties.UserProperty == [("a", "1"), ("a", "2"), ("b", "3")]  # in order
    assert (got.properties.ContentType, got.properties.PayloadFormatIndicator,
            got.properties.ResponseTopic, got.properties.CorrelationData) == (
        "application/json", 1, f"{topic}/reply", b"\x00\x01")


def test_interop_message_expiry(paho: Any, port: int) -> None:
    """An expired message is not delivered; one still alive carries what is left of its
    interval."""
    topic = f"{unique()}/expiring"
    client_id = f"away-{unique()}"
    with raw5(port, connect5(client_id, session_expiry_interval=60)) as client:
        assert client.request(m.Subscribe(1, ((topic, 1),), {})).return_codes == (1,)
    pub = paho()
    pub.publish(topic, b"short", 1, properties=props(PacketTypes.PUBLISH,
                                                     MessageExpiryInterval=1))
    pub.publish(topic, b"long", 1, properties=props(PacketTypes.PUBLISH,
                                                    MessageExpiryInterval=60))
    pub.publish(f"{topic}/kept", b"retained", 1, True, props(PacketTypes.PUBLISH,
                                                             MessageExpiryInterval=1))
    time.sleep(2.2)
    with raw5(port, connect5(client_id, clean=False), session_present=True) as client:
        got = receive_acking(client, 1)[0]
        assert got.payload == b"long"
        assert 55 <= got.properties["message_expiry_interval"] <= 58
        assert client.request(m.Subscribe(2, ((f"{topic}/kept", 1),), {})) == \
            m.SubAck(2, (1,), {})
        assert client.request(m.PingReq()) == m.PingResp()  # neither "short" nor retained


def test_interop_subscribe_options(paho: Any) -> None:
    base = unique()
    client = paho()
    other = paho()
    other.publish(f"{base}/rap", b"r", 1, retain=True)
    assert client.subscribe(f"{base}/local", options=SubscribeOptions(
        qos=1, noLocal=True)) == [1]
    client.publish(f"{base}/local", b"mine", 1)
    other.publish(f"{base}/local", b"theirs", 1)
    assert client.receive().payload == b"theirs"  # No Local: not its own
    # Retain As Published: the RETAIN flag stays on forwarded messages
    assert client.subscribe(f"{base}/rap", options=SubscribeOptions(
        qos=1, retainAsPublished=True, retainHandling=2)) == [1]  # 2: no retained now
    other.publish(f"{base}/rap", b"again", 1, retain=True)
    got = client.receive()
    assert (got.payload, got.retain) == (b"again", True)
    # Retain Handling 1: retained messages for a new subscription only
    assert client.subscribe(f"{base}/rap", options=SubscribeOptions(
        qos=1, retainHandling=1)) == [1]
    assert client.nothing_more()
    fresh = paho()
    assert fresh.subscribe(f"{base}/rap", options=SubscribeOptions(
        qos=1, retainHandling=1)) == [1]
    got = fresh.receive()
    assert (got.payload, got.retain) == (b"again", True)
    other.publish(f"{base}/rap", b"", 1, retain=True)


def test_interop_subscription_identifiers(paho: Any) -> None:
    base = unique()
    client = paho()
    assert client.subscribe(f"{base}/#", 1, properties=props(
        PacketTypes.SUBSCRIBE, SubscriptionIdentifier=7)) == [1]
    assert client.subscribe(f"{base}/+", 1, properties=props(
        PacketTypes.SUBSCRIBE, SubscriptionIdentifier=9)) == [1]
    client.publish(f"{base}/x", b"both", 1)
    got = client.receive()
    assert sorted(got.properties.SubscriptionIdentifier) == [7, 9]
    assert client.nothing_more()


def test_interop_client_topic_alias(paho: Any, port: int) -> None:
    topic = f"{unique()}/alias"
    sub = paho()
    assert sub.subscribe(topic, 1) == [1]
    with raw5(port, connect5(f"aliaser-{unique()}"),
              properties={"receive_maximum": RECEIVE_MAX, "topic_alias_maximum": ALIASES,
                          "maximum_packet_size": 256 << 10,
                          "server_keep_alive": MAX_KEEP_ALIVE}) as client:
        client.send(m.Publish(topic, b"set", 1, packet_id=1, properties={"topic_alias": 1}))
        client.send(m.Publish("", b"used", 1, packet_id=2, properties={"topic_alias": 1}))
        assert client.recv().type == "puback"
        assert client.recv().type == "puback"
        assert [sub.receive().payload for _ in range(2)] == [b"set", b"used"]
        # Beyond the broker's Topic Alias Maximum: DISCONNECT 0x94
        client.send(m.Publish(topic, b"x", 0, properties={"topic_alias": ALIASES + 1}))
        assert client.recv() == m.Disconnect(0x94, {})
        assert client.wait_closed(WAIT)
    with raw5(port, connect5(f"unknown-{unique()}")) as client:
        client.send(m.Publish("", b"x", 0, properties={"topic_alias": 2}))
        assert client.recv() == m.Disconnect(0x82, {})  # an alias never set
        assert client.wait_closed(WAIT)


def test_interop_server_topic_alias(paho: Any) -> None:
    """The broker gives aliases to topics it sends, up to the client's maximum: the
    first message of a topic carries the topic and its alias, later ones the alias
    alone (paho leaves aliases to its user)."""
    base = unique()
    sub = paho(properties=props(PacketTypes.CONNECT, TopicAliasMaximum=1))
    assert sub.subscribe(f"{base}/#", 0) == [0]
    pub = paho()
    for name in ("a", "a", "b", "a"):
        pub.publish(f"{base}/{name}", name.encode(), 1)
    got = [sub.receive() for _ in range(4)]
    assert [(g.topic, getattr(g.properties, "TopicAlias", None), g.payload) for g in got] == [
        (f"{base}/a", 1, b"a"), ("", 1, b"a"), (f"{base}/b", None, b"b"), ("", 1, b"a")]


def test_interop_maximum_packet_size(paho: Any) -> None:
    """Messages over the client's Maximum Packet Size are not sent to it."""
    topic = f"{unique()}/big"
    small = paho(properties=props(PacketTypes.CONNECT, MaximumPacketSize=200))
    assert small.subscribe(topic, 1) == [1]
    big = paho()
    big.publish(topic, b"x" * 300, 1)
    big.publish(topic, b"fits", 1)
    assert small.receive().payload == b"fits"
    assert small.nothing_more()


def test_interop_server_keep_alive(paho: Any) -> None:
    client = paho(keepalive=MAX_KEEP_ALIVE * 2)
    assert client.connack[2].ServerKeepAlive == MAX_KEEP_ALIVE
    fine = paho(keepalive=10)
    assert not hasattr(fine.connack[2], "ServerKeepAlive")


def test_interop_flow_control(port: int, paho: Any) -> None:
    """The broker honours the client's Receive Maximum (at most that many QoS 1 and 2
    messages unacknowledged), and announces its own, which a client may not exceed."""
    topic = f"{unique()}/flow"
    with raw5(port, connect5(f"slow-{unique()}", receive_maximum=2)) as client:
        assert client.request(m.Subscribe(1, ((topic, 2),), {})).return_codes == (2,)
        pub = paho()
        for i in range(5):
            pub.publish(topic, b"%d" % i, 2)
        first = [client.recv() for _ in range(2)]
        with pytest.raises(TimeoutError):
            client.recv(0.5)  # the window is full
        client.send(m.PubAck(first[0].packet_id))  # wrong ack: QoS 2 needs PUBREC
        assert client.request(m.PubRec(first[0].packet_id)) == m.PubRel(first[0].packet_id)
        with pytest.raises(TimeoutError):
            client.recv(0.3)  # still in flight until PUBCOMP
        client.send(m.PubComp(first[0].packet_id))
        assert client.recv().payload == b"2"
    with raw5(port, connect5(f"eager-{unique()}")) as client:
        for i in range(RECEIVE_MAX):
            assert client.request(m.Publish(f"{topic}/in", b"", 2, packet_id=i + 1,
                                            properties={})) == \
                m.PubRec(i + 1, 0x10)  # nobody subscribes: "no matching subscribers"
        client.send(m.Publish(f"{topic}/in", b"", 2, packet_id=RECEIVE_MAX + 1,
                              properties={}))
        assert client.recv() == m.Disconnect(0x93, {})  # receive maximum exceeded
        assert client.wait_closed(WAIT)


def test_interop_will_delay(paho: Any, port: int) -> None:
    """A will waits its Will Delay Interval, and is not sent if the session resumes
    first; it is sent when the session ends if that comes sooner."""
    base = unique()
    watcher = paho()
    assert watcher.subscribe(f"{base}/#", 1) == [1]

    def vanish(client_id: str, will_topic: str, delay: int, expiry: int) -> None:
        with BlockingClient(("127.0.0.1", port), CODEC5, timeout=WAIT) as client:
            will = m.Will(f"{base}/{will_topic}", b"bye", 1, False,
                          {"will_delay_interval": delay})
            assert client.request(m.Connect(client_id, True, 60, will, protocol_level=5,
                                            properties={"session_expiry_interval": expiry})
                                  ).return_code == 0
            client.sock.shutdown(socket.SHUT_RDWR)

    vanish(f"away-{unique()}", "delay2", 2, 60)
    client_id = f"back-{unique()}"
    vanish(client_id, "resumed", 2, 60)
    with raw5(port, connect5(client_id, clean=False, session_expiry_interval=60)):
        pass  # resumed within the delay: no will
    vanish(f"late-{unique()}", "delayed", 1, 60)
    vanish(f"short-{unique()}", "session-ended", 60, 1)  # the session ends first
    started = time.monotonic()
    first = watcher.receive(5.0)
    assert time.monotonic() - started > 0.6  # none went at once (the first after ~1 s)
    got = sorted([first.topic, *(watcher.receive(5.0).topic for _ in range(2))])
    assert got == [f"{base}/delay2", f"{base}/delayed", f"{base}/session-ended"]
    assert watcher.nothing_more(1.0)


@VERSIONS
def test_interop_shared_subscriptions(paho: Any, v5: bool) -> None:
    """Each message of a shared subscription goes to one member of the group, in
    turn; a plain subscription beside it still gets every one."""
    base = unique()
    a, b, plain, pub = paho(v5=v5), paho(v5=v5), paho(v5=v5), paho(v5=v5)
    if v5:
        assert not hasattr(a.connack[2], "SharedSubscriptionAvailable")  # 1: available
    for member in (a, b):
        assert member.subscribe(f"$share/group/{base}/+", 1) == [1]
    assert plain.subscribe(f"{base}/#", 1) == [1]
    for i in range(6):
        pub.publish(f"{base}/x", b"%d" % i, 1)
    assert sorted(plain.receive().payload for _ in range(6)) == [b"%d" % i for i in range(6)]
    got_a = [a.receive().payload for _ in range(3)]
    got_b = [b.receive().payload for _ in range(3)]
    assert sorted(got_a + got_b) == [b"%d" % i for i in range(6)]  # each once, shared
    assert a.nothing_more() and b.nothing_more()
    assert a.unsubscribe(f"$share/group/{base}/+") == ([0] if v5 else [])
    pub.publish(f"{base}/y", b"b only", 1)
    assert b.receive().payload == b"b only"


def test_shared_subscriptions_are_checked(port: int) -> None:
    with raw5(port, connect5(f"share-{unique()}")) as client:
        bad = ("$share/g", "$share//t", "$share/g+/t", "$share/g/a/#/b")
        assert client.request(m.Subscribe(1, tuple((f, 1) for f in bad), {})) == \
            m.SubAck(1, (0x8F,) * len(bad), {})
        client.send(m.Subscribe(2, (("$share/g/t", 1 | m.NO_LOCAL),), {}))
        assert client.recv() == m.Disconnect(0x82, {})  # No Local on a shared one
        assert client.wait_closed(WAIT)


def test_shared_subscriptions_get_no_retained_messages(paho: Any) -> None:
    topic = f"{unique()}/kept"
    pub = paho()
    pub.publish(topic, b"retained", 1, retain=True)
    member = paho()
    assert member.subscribe(f"$share/g/{topic}", 1) == [1]
    assert member.nothing_more()
    pub.publish(topic, b"", 1, retain=True)


# -- what the spec requires of CONNECT -------------------------------------------------


@pytest.mark.parametrize("level", [0, 2, 6, 255])
def test_an_unsupported_protocol_level_gets_connack_1(port: int, level: int) -> None:
    """MQTT 3.1.1 [MQTT-3.1.2-2]: CONNACK 0x01 and close, whatever the rest holds."""
    body = b"\x00\x04MQTT" + bytes((level,)) + b"\x02\x00\x3c\x05\x11\x00\x00\x00\x10\x00\x00"
    with BlockingClient(("127.0.0.1", port), CODEC, timeout=WAIT) as client:
        client.send_bytes(m._fixed_header(0x10, len(body)) + body)
        assert client.recv() == m.ConnAck(1)
        assert client.wait_closed(WAIT)


@pytest.mark.parametrize(("client_id", "accepted"), [
    ("", False), ("a", True), ("x" * 23, True), ("x" * 24, False)])
def test_mqtt31_client_ids_are_1_to_23_characters(port: int, client_id: str,
                                                  accepted: bool) -> None:
    with BlockingClient(("127.0.0.1", port), CODEC, timeout=WAIT) as client:
        connect = m.Connect(client_id + (unique() if accepted and client_id == "a" else ""),
                            protocol_name="MQIsdp", protocol_level=3)
        if accepted:
            connect.client_id = connect.client_id[:23]
        assert client.request(connect) == m.ConnAck(0 if accepted else 2)
        if not accepted:
            assert client.wait_closed(WAIT)


def test_paho_mqtt31_connects(paho: Any, port: int) -> None:
    client = paho_client.Client(paho_client.CallbackAPIVersion.VERSION2,
                                client_id=f"old-{unique()}"[:23], protocol=paho_client.MQTTv31)
    result: queue.Queue[int] = queue.Queue()
    client.on_connect = lambda c, u, f, reason, p: result.put(int(reason.value))
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert result.get(timeout=WAIT) == 0
    finally:
        client.disconnect()
        client.loop_stop()


def test_enhanced_authentication_is_refused(port: int) -> None:
    with raw5(port) as client:
        assert client.request(connect5("auth", authentication_method="SCRAM-SHA-1")) == \
            m.ConnAck(0x8C, False, {})
        assert client.wait_closed(WAIT)


def test_a_malformed_packet_gets_disconnect_with_its_reason(port: int) -> None:
    with raw5(port, connect5(f"bad-{unique()}")) as client:
        # PUBLISH with message_expiry_interval twice: a protocol error (0x82)
        body = b"\x00\x01t\x0a\x02\x00\x00\x00\x01\x02\x00\x00\x00\x02"
        client.send_bytes(m._fixed_header(0x30, len(body)) + body)
        assert client.recv() == m.Disconnect(0x82, {})
        assert client.wait_closed(WAIT)
    with raw5(port, connect5(f"bad-{unique()}")) as client:
        client.send_bytes(b"\x30\x04\x00\x01t\x01")  # property length past the packet
        assert client.recv() == m.Disconnect(0x81, {})
        assert client.wait_closed(WAIT)


def test_a_second_connection_takes_over_with_disconnect_0x8e(port: int) -> None:
    client_id = f"twice-{unique()}"
    with raw5(port, connect5(client_id)) as first, raw5(port, connect5(client_id)):
        assert first.recv() == m.Disconnect(0x8E, {})
        assert first.wait_closed(WAIT)


# -- QoS 2 to subscribers, $SYS --------------------------------------------------------


def test_qos2_to_a_subscriber_is_delivered_once(port: int, paho: Any) -> None:
    topic = f"{unique()}/q2"
    with BlockingClient(("127.0.0.1", port), CODEC, timeout=WAIT) as sub:
        assert sub.request(m.Connect(f"q2-{unique()}")) == m.ConnAck(0)
        assert sub.request(m.Subscribe(1, ((topic, 2),))) == m.SubAck(1, (2,))
        paho(v5=False).publish(topic, b"exactly once", 2)
        got = sub.recv()
        assert (got.payload, got.qos, got.dup) == (b"exactly once", 2, False)
        assert sub.request(m.PubRec(got.packet_id)) == m.PubRel(got.packet_id)
        assert sub.request(m.PubRec(got.packet_id)) == m.PubRel(got.packet_id)  # again
        sub.send(m.PubComp(got.packet_id))
        assert sub.request(m.PingReq()) == m.PingResp()


def test_sys_tree_counts_clients_and_messages(paho: Any) -> None:
    client = paho()
    assert client.subscribe("$SYS/broker/#", 0) == [0]
    seen: dict[str, bytes] = {}
    deadline = time.monotonic() + WAIT
    names = {"clients/connected", "clients/total", "messages/received", "messages/sent",
             "uptime", "version", "retained messages/count", "subscriptions/count"}
    first = client.receive()
    assert first.retain  # the tree is retained: a new subscriber has it at once
    seen[first.topic.removeprefix("$SYS/broker/")] = first.payload
    while not names <= set(seen) and time.monotonic() < deadline:
        got = client.receive()
        seen[got.topic.removeprefix("$SYS/broker/")] = got.payload
    assert names <= set(seen)
    while int(seen["clients/connected"]) < 1:  # the retained copy may predate us
        got = client.receive()
        seen[got.topic.removeprefix("$SYS/broker/")] = got.payload
    assert seen["uptime"].endswith(b" seconds")
    before = int(seen["messages/received"])
    client.publish(f"{unique()}/count", b"x", 1)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        got = client.receive()
        if got.topic == "$SYS/broker/messages/received" and int(got.payload) > before:
            break
    else:
        raise AssertionError("messages/received did not grow")


def test_sys_interval_and_new_limits_are_checked() -> None:
    module = broker_module()
    for kwargs in ({"sys_interval": -1}, {"receive_maximum": 0},
                   {"topic_alias_maximum": 70000}, {"max_keep_alive": 0}):
        with pytest.raises(ValueError):
            module.Broker(CODEC, **kwargs)


# -- mosquitto clients, MQTT 5.0 -------------------------------------------------------


def test_mosquitto_v5_properties_reach_a_v5_subscriber(mosquitto: tuple[str, str],
                                                       port: int) -> None:
    topic = f"{unique()}/mosq5"
    with mosquitto_sub(mosquitto, port, topic, count=1, qos=2,
                       options=("-V", "mqttv5"), output_format="%t|%q|%P|%C|%p") as lines:
        mosquitto_pub(mosquitto, port, topic, "hello", "-V", "mqttv5", "-q", "2",
                      "-D", "publish", "user-property", "k", "v",
                      "-D", "publish", "content-type", "text/plain")
    assert lines == [f"{topic}|2|k:v|text/plain|hello"]


def test_mosquitto_v5_and_v311_share_the_broker(mosquitto: tuple[str, str],
                                                port: int) -> None:
    topic = f"{unique()}/mixed"
    with mosquitto_sub(mosquitto, port, topic, count=2, qos=1,
                       options=("-V", "mqttv311")) as lines:
        mosquitto_pub(mosquitto, port, topic, "from5", "-V", "mqttv5", "-q", "1")
        mosquitto_pub(mosquitto, port, topic, "from31", "-V", "mqttv31", "-q", "1",
                      "-i", f"m31{unique()}"[:20])
    assert sorted(lines) == [f"{topic}|1|0|from31", f"{topic}|1|0|from5"]


def test_publishing_to_a_dollar_topic_is_refused_with_0x90(port: int) -> None:
    with raw5(port, connect5(f"dollar-{unique()}")) as client:
        assert client.request(m.Publish("$SYS/broker/uptime", b"0", 1, packet_id=1,
                                        properties={})) == m.PubAck(1, 0x90)
        assert client.request(m.Publish("$x", b"0", 2, packet_id=2, properties={})) == \
            m.PubRec(2, 0x90)
        assert client.request(m.PingReq()) == m.PingResp()


# -- Eclipse Paho's MQTT 5.0 interoperability suite, as paho-mqtt ships it -------------

#: Scenarios of the suite the broker does not pass, and why.
PAHO_INTEROP_EXPECTED_FAILURES = {
    # Subscribes to "test/nosubscribe", a filter Paho's own test broker is configured
    # to refuse; no spec rule refuses it.
    "test_subscribe_failure",
}


def paho_interop_suite() -> Path:
    """The folder of ``test_mqttv5.py`` from the source distribution of the installed
    paho-mqtt (downloaded from PyPI with pip once, then kept in the temp folder)."""
    version = importlib.metadata.version("paho-mqtt")
    cache = Path(tempfile.gettempdir()) / f"gevwire-tests-paho-mqtt-{version}"
    suite = cache / f"paho_mqtt-{version}" / "tests"
    if (suite / "test_mqttv5.py").exists():
        return suite
    with tempfile.TemporaryDirectory() as work:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", f"paho-mqtt=={version}",
                 "--no-binary", ":all:", "--no-deps", "-q",
                 "-d", work], capture_output=True, text=True, timeout=180)
        except subprocess.TimeoutExpired:
            pytest.skip("pip download of the paho-mqtt sdist timed out")
        archives = list(Path(work).glob("paho_mqtt-*.tar.gz"))
        if done.returncode or not archives:
            pytest.skip(f"cannot download the paho-mqtt {version} sdist from PyPI: "
                        f"{done.stderr.strip()[-300:]}")
        unpacked = Path(work) / "unpacked"
        with tarfile.open(archives[0]) as archive:
            archive.extractall(unpacked, filter="data")
        if not (unpacked / f"paho_mqtt-{version}" / "tests" / "test_mqttv5.py").exists():
            pytest.skip(f"the paho-mqtt {version} sdist has no tests/test_mqttv5.py")
        cache.mkdir(parents=True, exist_ok=True)
        try:
            (unpacked / f"paho_mqtt-{version}").rename(cache / f"paho_mqtt-{version}")
        except OSError:
            pass  # another run put it there first
    return suite


@pytest.mark.conformance
@pytest.mark.timeout(400)
def test_paho_interoperability_suite_mqtt5() -> None:
    """Every scenario of Paho's MQTT 5.0 interoperability suite passes against the
    broker, but those listed in PAHO_INTEROP_EXPECTED_FAILURES (with why)."""
    suite = paho_interop_suite()
    driver = Path(__file__).with_name("mqtt_paho_interop.py")
    with example_server("mqtt_broker.py", "--quiet") as (_, broker_port):
        done = subprocess.run([sys.executable, str(driver), str(suite), str(broker_port)],
                              capture_output=True, text=True, timeout=360,
                              env=example_env())
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\n[paho interop 5.0] {sum(v == 'ok' for v in outcome.values())} of "
          f"{len(outcome)} scenarios pass: {json.dumps(outcome, sort_keys=True)}")
    assert len(outcome) >= 20, (outcome, done.stderr[-3000:])  # each one ran
    failed = {name for name, result in outcome.items() if result != "ok"}
    assert failed == PAHO_INTEROP_EXPECTED_FAILURES, done.stderr[-5000:]


# -- the broker's limits hold for MQTT 5.0 clients -------------------------------------

INFLIGHT, QUEUED, LEVELS, SUB_LEVELS = 3, 5, 8, 20


@pytest.fixture(scope="module")
def limited() -> Iterator[int]:
    with example_server("mqtt_broker.py", "--quiet", "--max-inflight", str(INFLIGHT),
                        "--max-queued", str(QUEUED), "--max-topic-levels", str(LEVELS),
                        "--max-subscription-levels", str(SUB_LEVELS)) as (proc, port):
        yield port
        assert proc.poll() is None, "the broker died during the tests"


def test_v5_window_is_max_inflight_then_queue_then_drops(limited: int) -> None:
    topic = f"{unique()}/window"
    with raw5(limited, connect5(f"win-{unique()}")) as sub, \
            raw5(limited, connect5(f"pub-{unique()}")) as pub:
        assert sub.request(m.Subscribe(1, ((topic, 2),), {})).return_codes == (2,)
        count = INFLIGHT + QUEUED + 4
        for i in range(count):
            assert pub.request(m.Publish(topic, b"%d" % i, 2, packet_id=i + 1,
                                         properties={})).type == "pubrec"
            assert pub.request(m.PubRel(i + 1)) == m.PubComp(i + 1)
        first = [sub.recv() for _ in range(INFLIGHT)]
        with pytest.raises(TimeoutError):
            sub.recv(0.3)  # the window (max_inflight) is full
        got = [p.payload for p in first]
        for message in first:  # PUBREC does not free the window; PUBCOMP does
            assert sub.request(m.PubRec(message.packet_id)) == m.PubRel(message.packet_id)
        for message in first:
            sub.send(m.PubComp(message.packet_id))
        got += [p.payload for p in receive_acking(sub, QUEUED)]
        assert got == [b"%d" % i for i in range(INFLIGHT + QUEUED)]  # the rest dropped
        sub.send(m.PingReq())
        while (last := sub.recv()).type == "pubrel":  # the last PUBRELs, then nothing
            sub.send(m.PubComp(last.packet_id))
        assert last == m.PingResp()


def test_v5_topic_depth_and_subscription_levels_get_reason_codes(limited: int) -> None:
    deep = "/".join(["d"] * (LEVELS + 1))
    with raw5(limited, connect5(f"deep-{unique()}")) as client:
        assert client.request(m.Subscribe(1, ((deep, 1), ("ok/+", 1)), {})) == \
            m.SubAck(1, (0x8F, 1), {})  # topic filter invalid (for this broker)
        many = tuple((f"{unique()}/{'/'.join(['x'] * 6)}", 0) for _ in range(4))
        codes = client.request(m.Subscribe(2, many, {})).return_codes
        assert codes == (0, 0, 0x97, 0x97)  # 2 + 7 + 7 levels fit 20; then quota exceeded
        assert client.request(m.Publish(deep, b"x", 1, packet_id=3, properties={})) == \
            m.PubAck(3, 0x90)  # topic name invalid: refused, the connection stays
        assert client.request(m.PingReq()) == m.PingResp()


def test_disconnect_with_will_message_publishes_the_will(port: int, paho: Any) -> None:
    topic = f"{unique()}/will04"
    watcher = paho()
    assert watcher.subscribe(topic, 1) == [1]
    with BlockingClient(("127.0.0.1", port), CODEC5, timeout=WAIT) as client:
        will = m.Will(topic, b"asked for", 1, False, {})
        assert client.request(m.Connect(f"w04-{unique()}", will=will, protocol_level=5,
                                        properties={})).return_code == 0
        client.send(m.Disconnect(0x04))  # Disconnect with Will Message
        assert client.wait_closed(WAIT)
    assert watcher.receive().payload == b"asked for"
    with BlockingClient(("127.0.0.1", port), CODEC5, timeout=WAIT) as client:
        will = m.Will(topic, b"dropped", 1, False, {})
        assert client.request(m.Connect(f"w00-{unique()}", will=will, protocol_level=5,
                                        properties={})).return_code == 0
        client.send(m.Disconnect())  # normal: the will is discarded
        assert client.wait_closed(WAIT)
    assert watcher.nothing_more(0.5)


def test_a_session_resumed_by_takeover_within_the_will_delay_sends_no_will(
        port: int, paho: Any) -> None:
    topic = f"{unique()}/takeover"
    client_id = f"take-{unique()}"
    watcher = paho()
    assert watcher.subscribe(topic, 1) == [1]
    with BlockingClient(("127.0.0.1", port), CODEC5, timeout=WAIT) as first:
        will = m.Will(topic, b"late", 1, False, {"will_delay_interval": 30})
        assert first.request(m.Connect(client_id, True, 60, will, protocol_level=5,
                                       properties={"session_expiry_interval": 60})
                             ).return_code == 0
        with raw5(port, connect5(client_id, clean=False, session_expiry_interval=60),
                  session_present=True):
            assert first.recv() == m.Disconnect(0x8E, {})
            assert watcher.nothing_more(0.5)


def test_server_topic_aliases_are_bounded_by_the_brokers_maximum(paho: Any) -> None:
    """A client may allow 65,535 aliases; the broker gives at most its own maximum (each
    holds a topic for the connection's life)."""
    base = unique()
    sub = paho(properties=props(PacketTypes.CONNECT, TopicAliasMaximum=0xFFFF))
    assert sub.subscribe(f"{base}/#", 0) == [0]
    pub = paho()
    for i in range(ALIASES + 2):
        pub.publish(f"{base}/{i}", b"x", 1)
    got = [sub.receive() for _ in range(ALIASES + 2)]
    aliases = [getattr(g.properties, "TopicAlias", None) for g in got]
    assert aliases == [*range(1, ALIASES + 1), None, None]
    assert all(g.topic == f"{base}/{i}" for i, g in enumerate(got))


def test_a_packet_over_the_maximum_packet_size_gets_disconnect_0x95(port: int) -> None:
    with raw5(port, connect5(f"big-{unique()}")) as client:
        client.send_bytes(b"\x30\xff\xff\x7f")  # a PUBLISH announcing 2 MiB: refused at once
        assert client.recv() == m.Disconnect(0x95, {})  # packet too large
        assert client.wait_closed(WAIT)


def test_a_publish_with_a_subscription_identifier_is_a_protocol_error(port: int) -> None:
    with raw5(port, connect5(f"subid-{unique()}")) as client:
        client.send(m.Publish("t", b"", properties={"subscription_identifier": (1,)}))
        assert client.recv() == m.Disconnect(0x82, {})  # only a server sends one
        assert client.wait_closed(WAIT)


# -- MQTT.js (npm "mqtt"), MQTT 5.0 and 3.1.1 ------------------------------------------

MQTTJS_VERSION = "5"


def mqttjs_modules() -> Path:
    """A ``node_modules`` folder with MQTT.js, installed with npm once (then kept in the
    temp folder); skips where node or npm is missing or the install fails."""
    from system_packages import require_program

    require_program("node", package="nodejs")
    npm = require_program("npm", package="npm")
    folder = Path(tempfile.gettempdir()) / f"gevwire-tests-mqttjs-{MQTTJS_VERSION}"
    modules = folder / "node_modules"
    if (modules / "mqtt" / "package.json").exists():
        return modules
    with tempfile.TemporaryDirectory() as work:
        try:
            done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--silent",
                                   "--prefix", work, f"mqtt@{MQTTJS_VERSION}"],
                                  capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            pytest.skip("npm install mqtt timed out")
        if done.returncode:
            pytest.skip(f"npm install mqtt failed: {done.stderr.strip()[-300:]}")
        folder.mkdir(parents=True, exist_ok=True)
        try:
            (Path(work) / "node_modules").rename(modules)
        except OSError:
            pass  # another run put it there first
    return modules


@pytest.mark.timeout(400)
def test_mqttjs_v5_and_v311_clients(port: int) -> None:
    """MQTT.js: an MQTT 5.0 subscriber that lets the broker alias topics (MQTT.js
    resolves them), an MQTT 5.0 publisher that aliases its own, and a 3.1.1 one."""
    from system_packages import find_program

    modules = mqttjs_modules()
    node = find_program("node")
    assert node is not None
    base = unique()
    done = subprocess.run([node, str(Path(__file__).with_name("mqttjs_client.js")),
                           str(port), base], capture_output=True, text=True, timeout=60,
                          env={**example_env(), "NODE_PATH": str(modules)})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["connack"]["receiveMaximum"] == RECEIVE_MAX
    assert result["connack"]["topicAliasMaximum"] == ALIASES
    got = [(r["topic"], r["payload"], r["qos"], r["retain"], r["subscriptionIdentifier"])
           for r in result["received"][:4]]
    # "one" (QoS 2) and "two" (QoS 1) may arrive in either order: MQTT orders a topic's
    # messages per QoS only [MQTT-4.6.0-5], and "one" waits for the publisher's PUBREL.
    assert sorted(got[:2]) == [(f"{base}/a", "one", 2, False, 5),
                               (f"{base}/a", "two", 1, False, 5)]
    assert got[2:] == [(f"{base}/b", "retained", 1, True, 5),  # Retain As Published
                       (f"{base}/c", "from 3.1.1", 1, False, 5)]
    first = next(r for r in result["received"] if r["payload"] == "one")
    assert (first["userProperties"], first["contentType"]) == ({"k": "v"}, "text/plain")
    assert 55 <= first["messageExpiryInterval"] <= 60
