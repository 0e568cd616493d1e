"""An MQTT 3.1.1 broker on gevwire: ``gevwire.codecs.mqtt`` and a ``Router(key="type")``.

What it does, by packet:

- CONNECT: protocol ``MQTT`` level 4 (and MQTT 3.1's ``MQIsdp`` level 3); another level
  gets CONNACK 1, an empty client id without clean session CONNACK 2 (an empty one with
  clean session gets a generated id); a second connection with the same client id
  takes over (the first is closed).  ``clean_session=0`` keeps the session's
  subscriptions and unacknowledged QoS 1 messages (queued while the client is away,
  sent on reconnect, with DUP if sent before; CONNACK's session-present flag says
  so).  An absent client's session queues at most 1000 of them; newer ones are
  dropped (and logged).
- PUBLISH: fanned out to every matching subscription (``+`` / ``#`` wildcards; ``$``
  topics are not matched by a leading wildcard) once per client, at the lower of the
  message's QoS and the highest granted QoS; QoS 1 is acknowledged with PUBACK, QoS 2
  with PUBREC / PUBCOMP (delivered once, on the first PUBLISH of its packet id).
  Subscriptions are granted at most QoS 1.  RETAIN stores the message for its topic
  (an empty payload deletes it); retained messages are sent, with RETAIN set, to each
  new matching subscription right after its SUBACK.
- SUBSCRIBE / UNSUBSCRIBE: an invalid topic filter gets return code 0x80 in the SUBACK.
- PINGREQ → PINGRESP; DISCONNECT closes and drops the will; a connection that ends
  any other way publishes its will.
- Keep-alive: a client silent for 1.5x its keep-alive is closed.  One loop timer per
  connection, re-armed only when it fires (packets just stamp the time).
- A packet before CONNECT, a second CONNECT, a packet only a server sends, or a
  malformed packet closes the connection, as the spec asks.

With ``--loops N`` connections live on N loops (threads): the subscription tree, the
retained messages and the sessions are shared under one lock, and messages reach
subscribers on other loops through ``conn.send``, which is thread-safe.

    python examples/mqtt_broker.py --port 1883          # --port 0 picks a free port
    mosquitto_sub -p 1883 -t 'sensors/#' -v &
    mosquitto_pub -p 1883 -t sensors/kitchen -m 21.5

Prints ``listening on HOST:PORT`` once it accepts connections; stops cleanly on
SIGTERM / SIGINT (exit status 0).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import signal
import threading
import time
import uuid
from types import FrameType
from typing import Any

import gevwire
from gevwire.codecs.mqtt import (
    SUBACK_FAILURE,
    ConnAck,
    Connect,
    MqttCodec,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    SubAck,
    UnsubAck,
    Will,
    topic_matches,
    valid_topic_filter,
)

log = logging.getLogger("mqtt_broker")

#: Highest QoS granted to a subscription.
MAX_QOS = 1
#: QoS 1 messages kept for a persistent session while its client is away; beyond it new
#: ones are dropped.  A connected client is bounded by its 65535 packet identifiers
#: (and by the server's write buffer cap, which closes a client that does not read).
MAX_QUEUED = 1000
#: A connection that sends no CONNECT within this many seconds is closed.
CONNECT_TIMEOUT = 10.0
PROTOCOLS = {("MQTT", 4), ("MQIsdp", 3)}


class Session:
    """What the broker keeps for a client id: subscriptions and unacknowledged messages.

    Outlives its connection when the client asked for ``clean_session=0``.
    """

    __slots__ = (
        "clean",
        "client",
        "client_id",
        "dropped",
        "inflight",
        "packet_ids",
        "qos2_received",
        "subscriptions",
    )

    def __init__(self, client_id: str, clean: bool) -> None:
        self.client_id = client_id
        self.clean = clean
        self.client: Client | None = None  # the connection attached now, if any
        self.subscriptions: dict[str, int] = {}  # topic filter -> granted QoS
        self.inflight: dict[int, Publish] = {}  # QoS 1 sent (or queued), not yet acked
        self.qos2_received: set[int] = set()  # QoS 2 packet ids awaiting PUBREL
        self.packet_ids = itertools.count()
        self.dropped = 0  # QoS 1 messages dropped for want of room

    def next_packet_id(self) -> int:
        """1..65535, cycling, skipping ids still in flight."""
        for _ in range(0x10000):
            packet_id = next(self.packet_ids) % 0xFFFF + 1
            if packet_id not in self.inflight:
                return packet_id
        raise RuntimeError("no free packet identifier")


class Client:
    """One connection's state (``conn.context``) once it has sent CONNECT."""

    __slots__ = ("conn", "disconnected", "keep_alive", "last_seen", "session", "timer", "will")

    def __init__(self, conn: gevwire.Connection, session: Session, packet: Connect) -> None:
        self.conn = conn
        self.session = session
        self.will: Will | None = packet.will
        self.keep_alive = packet.keep_alive
        self.last_seen = time.monotonic()
        self.disconnected = False  # sent DISCONNECT: the will is dropped
        self.timer: Any = None


class _Node:
    __slots__ = ("children", "subscribers")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.subscribers: dict[Session, int] = {}


class TopicTree:
    """Subscriptions by topic level: matching costs the topic's depth, not the number
    of subscriptions."""

    def __init__(self) -> None:
        self.root = _Node()

    def add(self, topic_filter: str, session: Session, qos: int) -> None:
        node = self.root
        for level in topic_filter.split("/"):
            node = node.children.setdefault(level, _Node())
        node.subscribers[session] = qos

    def remove(self, topic_filter: str, session: Session) -> None:
        path = [self.root]
        levels = topic_filter.split("/")
        for level in levels:
            child = path[-1].children.get(level)
            if child is None:
                return
            path.append(child)
        path[-1].subscribers.pop(session, None)
        for level, parent, node in zip(reversed(levels), reversed(path[:-1]),
                                       reversed(path[1:]), strict=True):
            if node.subscribers or node.children:
                break
            del parent.children[level]

    def match(self, topic: str) -> dict[Session, int]:
        """Each subscribed session whose filters match ``topic``, with its highest QoS."""
        levels = topic.split("/")
        depth = len(levels)
        found: dict[Session, int] = {}

        def take(node: _Node) -> None:
            for session, qos in node.subscribers.items():
                if found.get(session, -1) < qos:
                    found[session] = qos

        stack = [(self.root, 0)]
        while stack:
            node, i = stack.pop()
            if i == depth:
                take(node)
                multi = node.children.get("#")  # "a/#" also matches "a"
                if multi is not None:
                    take(multi)
                continue
            children = node.children
            wild_ok = i or not topic.startswith("$")  # spec 4.7.2
            if wild_ok:
                multi = children.get("#")
                if multi is not None:
                    take(multi)
                single = children.get("+")
                if single is not None:
                    stack.append((single, i + 1))
            exact = children.get(levels[i])
            if exact is not None:
                stack.append((exact, i + 1))
        return found


class Broker(gevwire.Router):
    """The broker: a ``Router`` on the packet type, with the shared state behind a lock."""

    def __init__(self, codec: MqttCodec) -> None:
        super().__init__(key="type")
        self.codec = codec
        # Reentrant: a send on the loop thread may close a connection (its write buffer
        # overflowed), which runs on_close, which takes the lock again.
        self.lock = threading.RLock()
        self.tree = TopicTree()
        self.retained: dict[str, tuple[bytes, int]] = {}  # topic -> (payload, qos)
        self.sessions: dict[str, Session] = {}
        self.on("connect")(self.connect)
        self.on("publish")(self.publish)
        self.on("puback")(self.puback)
        self.on("pubrel")(self.pubrel)
        self.on("pubcomp")(self.ignore)
        self.on("subscribe")(self.subscribe)
        self.on("unsubscribe")(self.unsubscribe)
        self.on("pingreq")(self.pingreq)
        self.on("disconnect")(self.disconnect)
        self.default(self.unexpected)

    # -- connection lifecycle -----------------------------------------------------------

    def on_connect(self, conn: Any) -> None:  # type: ignore[override]
        conn.loop.run_after(CONNECT_TIMEOUT, self._check_connected, conn)

    def _check_connected(self, conn: gevwire.Connection) -> None:
        if conn.context is None and conn.connected:
            log.info("%r sent no CONNECT in %.0fs: closing", conn, CONNECT_TIMEOUT)
            conn.close()

    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        client: Client | None = conn.context
        if client is None:
            if frame.type != "connect":
                log.warning("%r: %s before CONNECT: closing", conn, frame.type)
                conn.close()
                return None
        else:
            client.last_seen = conn.loop.now
        return super().on_message(conn, frame)

    def on_close(self, conn: Any) -> None:  # type: ignore[override]
        client: Client | None = conn.context
        if client is None:
            return
        if client.timer is not None:
            client.timer.cancel()
        with self.lock:
            if client.will is not None and not client.disconnected:
                will = client.will
                log.info("%s went away: publishing its will on %s",
                         client.session.client_id, will.topic)
                if will.retain:
                    self._retain(will.topic, will.message, will.qos)
                self._publish(will.topic, will.message, will.qos, False)
            session = client.session
            if session.client is client:
                session.client = None
                if session.clean:
                    self._drop_session(session)

    def _drop_session(self, session: Session) -> None:
        for topic_filter in session.subscriptions:
            self.tree.remove(topic_filter, session)
        session.subscriptions.clear()
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]

    def _check_keep_alive(self, client: Client) -> None:
        """Keep-alive timer: close a client silent for 1.5x keep-alive (spec 3.1.2.10)."""
        client.timer = None
        conn = client.conn
        if not conn.connected:
            return
        limit = client.keep_alive * 1.5
        left = client.last_seen + limit - time.monotonic()
        if left > 0:
            client.timer = conn.loop.run_after(left, self._check_keep_alive, client)
            return
        log.info("%s silent for %.1fs (keep-alive %ds): closing",
                 client.session.client_id, limit, client.keep_alive)
        conn.close()

    # -- packets ------------------------------------------------------------------------

    def connect(self, conn: gevwire.Connection, packet: Connect) -> Any:
        if conn.context is not None:
            log.warning("%r: second CONNECT: closing", conn)
            conn.close()
            return None
        if (packet.protocol_name, packet.protocol_level) not in PROTOCOLS:
            if packet.protocol_name not in ("MQTT", "MQIsdp"):
                log.warning("%r: protocol %r: closing", conn, packet.protocol_name)
                conn.close()
                return None
            conn.close()
            return ConnAck(1)  # unacceptable protocol level
        client_id = packet.client_id
        if not client_id:
            if not packet.clean_session:
                conn.close()
                return ConnAck(2)  # identifier rejected
            client_id = f"auto-{uuid.uuid4().hex}"
        with self.lock:
            session = self.sessions.get(client_id)
            if session is not None and session.client is not None:
                log.info("%s connected again: closing its previous connection", client_id)
                session.client.conn.close()
                session.client = None
            if session is not None and (packet.clean_session or session.clean):
                self._drop_session(session)  # a clean session ends with its connection
                session = None
            present = session is not None
            if session is None:
                session = Session(client_id, packet.clean_session)
                self.sessions[client_id] = session
            client = Client(conn, session, packet)
            session.client = client
            conn.context = client
            conn.send(ConnAck(0, present))
            for message in list(session.inflight.values()):  # unacknowledged, in order
                self._send(client, message)
                message.dup = True
        if packet.keep_alive:
            client.timer = conn.loop.run_after(packet.keep_alive * 1.5,
                                               self._check_keep_alive, client)
        log.info("%s connected (clean session %s, keep-alive %ds)", client_id,
                 packet.clean_session, packet.keep_alive)
        return None

    def publish(self, conn: gevwire.Connection, packet: Publish) -> Any:
        client: Client = conn.context
        if packet.qos == 2:
            assert packet.packet_id is not None
            received = client.session.qos2_received
            if packet.packet_id in received:
                return PubRec(packet.packet_id)  # a resend: delivered already
            received.add(packet.packet_id)
        with self.lock:
            if packet.retain:
                self._retain(packet.topic, packet.payload, packet.qos)
            self._publish(packet.topic, packet.payload, packet.qos, False)
        if packet.qos == 1:
            assert packet.packet_id is not None
            return PubAck(packet.packet_id)
        if packet.qos == 2:
            assert packet.packet_id is not None
            return PubRec(packet.packet_id)
        return None

    def puback(self, conn: gevwire.Connection, packet: PubAck) -> None:
        client: Client = conn.context
        client.session.inflight.pop(packet.packet_id, None)

    def pubrel(self, conn: gevwire.Connection, packet: Any) -> Any:
        client: Client = conn.context
        client.session.qos2_received.discard(packet.packet_id)
        return PubComp(packet.packet_id)

    def subscribe(self, conn: gevwire.Connection, packet: Any) -> None:
        client: Client = conn.context
        session = client.session
        codes: list[int] = []
        granted: list[tuple[str, int]] = []
        with self.lock:
            for topic_filter, requested in packet.topics:
                if not valid_topic_filter(topic_filter):
                    codes.append(SUBACK_FAILURE)
                    continue
                qos = min(requested, MAX_QOS)
                session.subscriptions[topic_filter] = qos
                self.tree.add(topic_filter, session, qos)
                codes.append(qos)
                granted.append((topic_filter, qos))
            conn.send(SubAck(packet.packet_id, tuple(codes)))
            for topic_filter, qos in granted:  # retained messages after the SUBACK
                for topic, (payload, retained_qos) in list(self.retained.items()):
                    if topic_matches(topic_filter, topic):
                        self._deliver(session, topic, payload, min(qos, retained_qos), True)

    def unsubscribe(self, conn: gevwire.Connection, packet: Any) -> Any:
        client: Client = conn.context
        session = client.session
        with self.lock:
            for topic_filter in packet.topics:
                if session.subscriptions.pop(topic_filter, None) is not None:
                    self.tree.remove(topic_filter, session)
        return UnsubAck(packet.packet_id)

    def pingreq(self, conn: gevwire.Connection, packet: Any) -> Any:
        return PingResp()

    def disconnect(self, conn: gevwire.Connection, packet: Any) -> None:
        client: Client = conn.context
        client.disconnected = True
        conn.close()

    def ignore(self, conn: gevwire.Connection, packet: Any) -> None:
        return None

    def unexpected(self, conn: gevwire.Connection, packet: Any) -> None:
        log.warning("%r: unexpected %s from a client: closing", conn, packet.type)
        conn.close()

    # -- routing (under self.lock) ------------------------------------------------------

    def _retain(self, topic: str, payload: bytes, qos: int) -> None:
        if payload:
            self.retained[topic] = (payload, qos)
        else:
            self.retained.pop(topic, None)  # spec 3.3.1-10: an empty one deletes

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Send to every matching session; QoS 0 copies are encoded once for all."""
        targets = self.tree.match(topic)
        if not targets:
            return
        encoded: bytes | None = None
        for session, granted in targets.items():
            effective = min(qos, granted)
            if effective == 0:
                client = session.client
                if client is None:
                    continue  # QoS 0 is not queued for an absent client
                if encoded is None:
                    encoded = self.codec.encode(Publish(topic, payload, 0, retain))
                self._send(client, encoded)
            else:
                self._deliver(session, topic, payload, effective, retain)

    def _deliver(self, session: Session, topic: str, payload: bytes, qos: int,
                 retain: bool) -> None:
        if qos == 0:
            if session.client is not None:
                self._send(session.client, Publish(topic, payload, 0, retain))
            return
        if len(session.inflight) >= (MAX_QUEUED if session.client is None else 0xFFFF):
            session.dropped += 1
            if session.dropped % 1000 == 1:
                log.warning("%s: %d messages unacknowledged, %d dropped so far",
                            session.client_id, len(session.inflight), session.dropped)
            return
        packet_id = session.next_packet_id()
        message = Publish(topic, payload, qos, retain, False, packet_id)
        session.inflight[packet_id] = message
        if session.client is not None:
            # send() encodes at once, so DUP set now marks only a later resend (3.3.1.1).
            self._send(session.client, message)
            message.dup = True

    def _send(self, client: Client, message: Any) -> None:
        try:
            client.conn.send(message)  # thread-safe: queued to the client's own loop
        except gevwire.ConnectionClosed:
            pass  # closing: QoS 1 stays in flight for a persistent session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--loops", type=int, default=1)
    parser.add_argument("--max-packet-size", type=int, default=1 << 20)
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
    )
    codec = MqttCodec(max_packet_size=args.max_packet_size)
    broker = Broker(codec)
    server = gevwire.Server(broker, address=f"{args.host}:{args.port}", loops=args.loops,
                            codec=codec)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        server.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    host, port = server.address[:2]
    print(f"listening on {host}:{port}", flush=True)
    server.run()
    log.info("stopped with %d sessions, %d retained messages", len(broker.sessions),
             len(broker.retained))


if __name__ == "__main__":
    main()
