"""An MQTT 3.1.1 broker on gevwire: ``gevwire.codecs.mqtt`` and a ``Router(key="type")``.

What it does, by packet:

- CONNECT: protocol ``MQTT`` level 4 (and MQTT 3.1's ``MQIsdp`` level 3); another level
  gets CONNACK 1, an empty client id without clean session CONNACK 2 (an empty one with
  clean session gets a generated id); a second connection with the same client id
  takes over (the first is closed).  ``clean_session=0`` keeps the session's
  subscriptions and unacknowledged QoS 1 messages (queued while the client is away,
  sent on reconnect, with DUP if sent before; CONNACK's session-present flag says
  so).
- PUBLISH: fanned out to every matching subscription (``+`` / ``#`` wildcards; ``$``
  topics are not matched by a leading wildcard) once per client, at the lower of the
  message's QoS and the highest granted QoS; QoS 1 is acknowledged with PUBACK, QoS 2
  with PUBREC / PUBCOMP (delivered once, on the first PUBLISH of its packet id).
  Subscriptions are granted at most QoS 1.  RETAIN stores the message for its topic
  (an empty payload deletes it); retained messages are sent, with RETAIN set and at the
  lower of their QoS and the granted one, to each new subscription right after its
  SUBACK: for each filter of the SUBSCRIBE in turn, every retained message it matches,
  oldest topic first (a message matched by two filters of it is sent twice, once per
  subscription; a filter repeated in one SUBSCRIBE is looked up once).  Retained
  messages live in a tree of topic levels that a filter is walked through, so a
  SUBSCRIBE costs the nodes its filters reach, not the number of retained topics times
  the number of filters.  Two bounds, both mosquitto-like in that the SUBACK still
  grants every subscription and only retained messages are left out (counted; logged
  as drops are, at most every 10 s per client): a SUBSCRIBE sends at most
  ``max_inflight + max_queued`` retained messages in all (QoS 0 ones included, as
  mosquitto does), and none more once the client's queue (below) overflows; and its
  filters' walks visit at most ``max_retained_visits`` (100,000) tree nodes in all,
  10-30 ms of work, because a wildcard filter matching nothing may still look at
  every child of wide levels (``+/+/+/x`` against 20,000 topics looks at 20,000, and
  4,000 such filters held the loop and the lock for 2.4 s).  A walk that runs out
  sends what it found, oldest first; the filters after it get no retained messages.
- Flow control, per client (mosquitto's ``max_inflight_messages`` and
  ``max_queued_messages``): at most ``max_inflight`` (20) QoS 1 messages are sent and
  unacknowledged at a time; the next ones wait in the client's queue, in order, and
  go out as PUBACKs free the window; the queue holds at most ``max_queued`` (1000)
  messages, and newer ones are dropped (counted; logged once, then at most every 10 s
  per client).  The same queue and bound hold a persistent session's messages while
  its client is away.  QoS 0 messages to a connected client are sent at once, never
  queued (so they may overtake queued QoS 1 ones: the spec orders messages of one
  topic *and QoS* only), and are bounded by the server's write buffer cap, which
  closes a client that does not read; QoS 0 messages for an absent client are dropped.
- Topic depth: a topic filter or topic name of more than ``max_topic_levels`` levels
  (200; mosquitto's ``TOPIC_HIERARCHY_LIMIT`` counts 200 separators, so 201 levels) is
  refused, because every level costs a tree node: such a filter gets return code 0x80
  in the SUBACK (the rest of the SUBSCRIBE is served); such a PUBLISH (or a will with
  such a topic, at CONNECT) closes the connection, as MQTT 3.1.1 has no way to refuse
  one.  Length needs no limit of its own: a topic is at most 65535 bytes (and
  ``max_packet_size``).  The levels of one client's filters, summed, are bounded too
  (``max_subscription_levels``, 20,000: a few MiB of tree): a filter past it gets 0x80.
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
    python examples/mqtt_broker.py --max-inflight 20 --max-queued 1000 --max-topic-levels 200
    python examples/mqtt_broker.py --max-subscription-levels 20000 --max-retained-visits 100000
    mosquitto_sub -p 1883 -t 'sensors/#' -v &
    mosquitto_pub -p 1883 -t sensors/kitchen -m 21.5

Prints ``listening on HOST:PORT`` once it accepts connections; stops cleanly on
SIGTERM / SIGINT (exit status 0).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import operator
import signal
import threading
import time
import uuid
from collections import deque
from types import FrameType
from typing import Any

import gevwire
from gevwire.cli import add_ssl_arguments, ssl_server_options
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
    valid_topic_filter,
)

log = logging.getLogger("mqtt_broker")

#: Highest QoS granted to a subscription.
MAX_QOS = 1
#: QoS 1 messages sent to a client and not yet acknowledged, at most (its window).
MAX_INFLIGHT = 20
#: QoS 1 messages waiting for a client's window (or for an absent client), at most;
#: beyond it new ones are dropped.
MAX_QUEUED = 1000
#: Levels of a topic name or filter, at most (``a/b/c`` has 3).
MAX_TOPIC_LEVELS = 200
#: Levels of one client's subscriptions, summed, at most: each level may be a node of
#: the subscription tree (~240 bytes), so this bounds what one client's filters cost.
MAX_SUBSCRIPTION_LEVELS = 20_000
#: Retained-tree nodes one SUBSCRIBE's filters may visit, in all, looking up retained
#: messages (see :meth:`RetainedTree.walk`); past it the rest are not sent.  Measured
#: on a loaded 2-core box: 100,000 visits take 3-33 ms by the tree's shape (the most
#: where nodes are scattered in memory and each is taken, not just looked at); a
#: "#" walk of 20,000 topics takes 40,403, "+/+/+/x" over them 20,403.
MAX_RETAINED_VISITS = 100_000
#: A client whose messages are dropped is logged at most once per this many seconds.
DROP_LOG_INTERVAL = 10.0
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
        "drop_logged",
        "dropped",
        "inflight",
        "levels",
        "packet_ids",
        "qos2_received",
        "queue",
        "subscriptions",
    )

    def __init__(self, client_id: str, clean: bool) -> None:
        self.client_id = client_id
        self.clean = clean
        self.client: Client | None = None  # the connection attached now, if any
        self.subscriptions: dict[str, int] = {}  # topic filter -> granted QoS
        self.inflight: dict[int, Publish] = {}  # QoS 1 sent, not yet acked (the window)
        self.queue: deque[Publish] = deque()  # QoS 1 waiting for the window, no id yet
        self.qos2_received: set[int] = set()  # QoS 2 packet ids awaiting PUBREL
        self.packet_ids = itertools.count()
        self.dropped = 0  # QoS 1 messages dropped for want of room
        self.drop_logged = -DROP_LOG_INTERVAL  # monotonic time of the last drop warning
        self.levels = 0  # topic levels of its subscriptions, summed (tree nodes it may hold)

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
    # Both dicts are made on first use: a level that only leads on (most of them) costs
    # its object and its parent's entry.
    __slots__ = ("children", "subscribers")

    def __init__(self) -> None:
        self.children: dict[str, _Node] | None = None
        self.subscribers: dict[Session, int] | None = None


def _path(node: Any, topic: str, make: Any) -> Any:
    """The node of ``topic`` under ``node`` (a tree node with lazy ``children``), made
    with ``make()`` level by level where missing."""
    for level in topic.split("/"):
        children = node.children
        if children is None:
            children = node.children = {}
        child = children.get(level)
        if child is None:
            child = children[level] = make()
        node = child
    return node


def _find_path(root: Any, levels: list[str]) -> list[Any] | None:
    """The nodes from ``root`` down ``levels`` (root first), or None where one is missing."""
    path = [root]
    for level in levels:
        children = path[-1].children
        child = children.get(level) if children is not None else None
        if child is None:
            return None
        path.append(child)
    return path


def _prune(levels: list[str], path: list[Any], holds: Any) -> None:
    """Drop the nodes of ``path`` (from :func:`_find_path`) that no longer lead anywhere:
    bottom up, while a node has no children and ``holds(node)`` is false."""
    for level, parent, node in zip(reversed(levels), reversed(path[:-1]),
                                   reversed(path[1:]), strict=True):
        if holds(node) or node.children:
            break
        del parent.children[level]
        if not parent.children:
            parent.children = None


class TopicTree:
    """Subscriptions by topic level: matching costs the topic's depth, not the number
    of subscriptions."""

    def __init__(self) -> None:
        self.root = _Node()

    def add(self, topic_filter: str, session: Session, qos: int) -> None:
        node = _path(self.root, topic_filter, _Node)
        if node.subscribers is None:
            node.subscribers = {}
        node.subscribers[session] = qos

    def remove(self, topic_filter: str, session: Session) -> None:
        levels = topic_filter.split("/")
        path = _find_path(self.root, levels)
        if path is None:
            return
        leaf = path[-1]
        if leaf.subscribers is not None:
            leaf.subscribers.pop(session, None)
            if not leaf.subscribers:
                leaf.subscribers = None
        _prune(levels, path, lambda node: bool(node.subscribers))

    def match(self, topic: str) -> dict[Session, int]:
        """Each subscribed session whose filters match ``topic``, with its highest QoS."""
        levels = topic.split("/")
        depth = len(levels)
        found: dict[Session, int] = {}

        def take(node: _Node) -> None:
            if node.subscribers is None:
                return
            for session, qos in node.subscribers.items():
                if found.get(session, -1) < qos:
                    found[session] = qos

        stack = [(self.root, 0)]
        while stack:
            node, i = stack.pop()
            children = node.children
            if i == depth:
                take(node)
                if children is not None:
                    multi = children.get("#")  # "a/#" also matches "a"
                    if multi is not None:
                        take(multi)
                continue
            if children is None:
                continue
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


class Retained:
    """One retained message: ``order`` keeps the order in which topics first got one."""

    __slots__ = ("order", "payload", "qos", "topic")

    def __init__(self, order: int, topic: str, payload: bytes, qos: int) -> None:
        self.order = order
        self.topic = topic
        self.payload = payload
        self.qos = qos


class _RetainedNode:
    __slots__ = ("children", "message")

    def __init__(self) -> None:
        self.children: dict[str, _RetainedNode] | None = None
        self.message: Retained | None = None


class RetainedTree:
    """Retained messages by topic level.  A filter is walked through the tree, so
    matching it costs the nodes its levels reach (and the messages found), not the
    number of retained topics."""

    def __init__(self) -> None:
        self.root = _RetainedNode()
        self.count = 0
        self._order = itertools.count()

    def __len__(self) -> int:
        return self.count

    def set(self, topic: str, payload: bytes, qos: int) -> None:
        node = _path(self.root, topic, _RetainedNode)
        old = node.message
        if old is None:
            node.message = Retained(next(self._order), topic, payload, qos)
            self.count += 1
        else:  # replaced: keeps its place in the order, as a dict value would
            old.payload, old.qos = payload, qos

    def delete(self, topic: str) -> None:
        levels = topic.split("/")
        path = _find_path(self.root, levels)
        if path is None or path[-1].message is None:
            return
        path[-1].message = None
        self.count -= 1
        _prune(levels, path, lambda node: node.message is not None)

    def match(self, topic_filter: str) -> list[Retained]:
        """The retained messages a (valid) filter matches, oldest topic first."""
        return self.walk(topic_filter, 1 << 62)[0]

    def walk(self, topic_filter: str, visits: int) -> tuple[list[Retained], int]:
        """The retained messages a (valid) filter matches, oldest topic first, found
        with at most ``visits`` node visits; and the visits left, negative if the walk
        ran out of them (what it had found by then is returned).

        ``+`` takes every child of a level, ``#`` the level it follows ("a/#" matches
        "a") and everything below; a wildcard as the first level skips topics that
        start with ``$`` (spec 4.7.2).  A visit is a node taken off the walk's stack or
        a child looked up or at (by ``+`` or ``#``, put on the stack or skipped): what
        the walk costs, whatever it finds, so that a filter matching nothing across wide
        levels is paid for too; a node taken costs its parent's look too, so at most
        half the visits are the dearer ones.  A level is paid for before it is looked
        at: a walk that runs out does so before the level that would overrun it."""
        found: list[Retained] = []
        if "+" not in topic_filter and "#" not in topic_filter:
            # One path: the visits the walk below would make, without its stack.
            node = self.root
            for level in topic_filter.split("/"):
                visits -= 2  # this node taken, its child looked up
                children = node.children
                if visits < 0 or children is None or (child := children.get(level)) is None:
                    return found, visits
                node = child
            visits -= 1
            if visits >= 0 and node.message is not None:
                found.append(node.message)
            return found, visits
        levels = topic_filter.split("/")
        depth = len(levels)
        stack = [(self.root, 0)]
        while stack:
            visits -= 1
            if visits < 0:
                break
            node, i = stack.pop()
            if i == depth:
                if node.message is not None:
                    found.append(node.message)
                continue
            level = levels[i]
            if level == "#":
                if node.message is not None:  # the parent level (never the root)
                    found.append(node.message)
                visits = self._below(node, i == 0, found, visits)
                continue
            children = node.children
            if children is None:
                continue
            if level == "+":
                visits -= len(children)
                if visits < 0:
                    break
                # A child without children can only end a match: unless the filter ends
                # with it (or goes on with "#", which matches its parent), skip it.
                # (Pushed last first, so taken in the order the levels were made: a
                # walk cut short has found older topics rather than newer ones.)
                ends = i + 1 == depth or levels[i + 1] == "#"
                for name, child in reversed(children.items()):
                    if (ends or child.children is not None) and \
                            (i or not name.startswith("$")):
                        stack.append((child, i + 1))
            else:
                visits -= 1
                exact = children.get(level)
                if exact is not None:
                    stack.append((exact, i + 1))
        found.sort(key=_ORDER)
        return found, visits

    @staticmethod
    def _below(node: _RetainedNode, skip_dollar: bool, found: list[Retained],
               visits: int) -> int:
        """Add every message strictly below ``node`` to ``found``, two visits a node (put
        on the stack, taken off); with ``skip_dollar``, not under a child whose name
        starts with ``$``.  Returns the visits left (negative: stopped short)."""
        children = node.children
        if children is None:
            return visits
        visits -= len(children)
        if visits < 0:
            return visits
        stack = [child for name, child in reversed(children.items())
                 if not (skip_dollar and name.startswith("$"))]
        while stack:
            visits -= 1
            if visits < 0:
                return visits
            node = stack.pop()
            if node.message is not None:
                found.append(node.message)
            children = node.children
            if children is not None:
                visits -= len(children)
                if visits < 0:
                    return visits
                stack.extend(reversed(children.values()))
        return visits


_ORDER = operator.attrgetter("order")


def topic_levels(topic: str) -> int:
    """How many levels a topic name or filter has (``a//b`` has 3)."""
    return topic.count("/") + 1


class Broker(gevwire.Router):
    """The broker: a ``Router`` on the packet type, with the shared state behind a lock.

    ``max_inflight`` / ``max_queued``: each client's window of unacknowledged QoS 1
    messages and the queue behind it (see the module docstring); ``max_topic_levels``:
    the deepest topic name or filter accepted; ``max_subscription_levels``: the levels
    of one client's filters, summed (a filter past it gets 0x80);
    ``max_retained_visits``: the retained-tree nodes one SUBSCRIBE may visit looking up
    retained messages (the rest are not sent).
    """

    def __init__(self, codec: MqttCodec, *, max_inflight: int = MAX_INFLIGHT,
                 max_queued: int = MAX_QUEUED,
                 max_topic_levels: int = MAX_TOPIC_LEVELS,
                 max_subscription_levels: int = MAX_SUBSCRIPTION_LEVELS,
                 max_retained_visits: int = MAX_RETAINED_VISITS) -> None:
        if not 1 <= max_inflight <= 0xFFFF:
            raise ValueError("max_inflight must be in 1..65535 (packet identifiers)")
        if max_queued < 0:
            raise ValueError("max_queued must be >= 0")
        if max_topic_levels < 1:
            raise ValueError("max_topic_levels must be >= 1")
        if max_subscription_levels < 1:
            raise ValueError("max_subscription_levels must be >= 1")
        if max_retained_visits < 0:
            raise ValueError("max_retained_visits must be >= 0")
        super().__init__(key="type")
        self.codec = codec
        self.max_inflight = max_inflight
        self.max_queued = max_queued
        self.max_topic_levels = max_topic_levels
        self.max_subscription_levels = max_subscription_levels
        self.max_retained_visits = max_retained_visits
        # Reentrant: a send on the loop thread may close a connection (its write buffer
        # overflowed), which runs on_close, which takes the lock again.
        self.lock = threading.RLock()
        self.tree = TopicTree()
        self.retained = RetainedTree()
        self.sessions: dict[str, Session] = {}
        self.dropped = 0  # QoS 1 messages dropped for want of queue room, all clients
        # SUBSCRIBEs whose retained messages were cut short: by the client's window and
        # queue (max_inflight + max_queued), by max_retained_visits.
        self.retained_cut_by_queue = 0
        self.retained_cut_by_visits = 0
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
        session.inflight.clear()
        session.queue.clear()
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
        if packet.will is not None and topic_levels(packet.will.topic) > self.max_topic_levels:
            log.warning("%r: will topic of %d levels (max_topic_levels %d): closing", conn,
                        topic_levels(packet.will.topic), self.max_topic_levels)
            conn.close()
            return None
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
                self._send(client, message)  # DUP was set when it was first sent
            self._fill_window(session)  # then what waited in the queue
        if packet.keep_alive:
            client.timer = conn.loop.run_after(packet.keep_alive * 1.5,
                                               self._check_keep_alive, client)
        log.info("%s connected (clean session %s, keep-alive %ds)", client_id,
                 packet.clean_session, packet.keep_alive)
        return None

    def publish(self, conn: gevwire.Connection, packet: Publish) -> Any:
        client: Client = conn.context
        if topic_levels(packet.topic) > self.max_topic_levels:
            # No PUBACK / PUBREC can refuse a message in MQTT 3.1.1: a protocol error.
            log.warning("%s: PUBLISH topic of %d levels (max_topic_levels %d): closing",
                        client.session.client_id, topic_levels(packet.topic),
                        self.max_topic_levels)
            conn.close()
            return None
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
        session = client.session
        with self.lock:
            if session.inflight.pop(packet.packet_id, None) is not None and session.queue:
                self._fill_window(session)

    def pubrel(self, conn: gevwire.Connection, packet: Any) -> Any:
        client: Client = conn.context
        client.session.qos2_received.discard(packet.packet_id)
        return PubComp(packet.packet_id)

    def subscribe(self, conn: gevwire.Connection, packet: Any) -> None:
        client: Client = conn.context
        session = client.session
        subscriptions = session.subscriptions
        codes: list[int] = []
        granted: list[tuple[str, int]] = []
        # A 1 MiB SUBSCRIBE may hold 262,000 filters (one repeated, say): the loop is
        # kept lean, and a filter subscribed already at that QoS (checked then) costs
        # two lookups.
        get, add_code, add_granted = subscriptions.get, codes.append, granted.append
        with self.lock:
            for topic_filter, requested in packet.topics:
                qos = MAX_QOS if requested > MAX_QOS else requested
                old = get(topic_filter)
                if old != qos:
                    if old is None:
                        levels = topic_levels(topic_filter)
                        if (levels > self.max_topic_levels
                                or session.levels + levels > self.max_subscription_levels
                                or not valid_topic_filter(topic_filter)):
                            add_code(SUBACK_FAILURE)
                            continue
                        session.levels += levels
                    subscriptions[topic_filter] = qos
                    self.tree.add(topic_filter, session, qos)
                add_code(qos)
                add_granted((topic_filter, qos))
            conn.send(SubAck(packet.packet_id, tuple(codes)))
            if granted and self.retained.count:
                self._send_retained(conn, session, granted)

    def _send_retained(self, conn: gevwire.Connection, session: Session,
                       granted: list[tuple[str, int]]) -> None:
        """The retained messages of a SUBSCRIBE's new subscriptions, after its SUBACK.

        Two bounds, mosquitto-like: every subscription is granted all the same, only
        retained messages past them are not sent (counted, and logged now and then).
        At most what the client's window and queue hold, at any QoS: 4,000 "#" filters
        against 20,000 topics would otherwise be 80 million sends or drops, lock held.
        And at most ``max_retained_visits`` tree nodes visited in all: a filter that
        matches nothing may still walk whole levels ("+/+/+/x" looks at every child of
        the third level), ~0.5 ms against 20,000 topics, so 4,000 of them held the loop
        and the lock for seconds while sending nothing.  Refusing the filters past some
        count with 0x80 would bound it too, but would refuse subscriptions a client may
        rightly ask for (MQTT 3.1.1 treats one SUBSCRIBE as a sequence of them), only
        for them to come back in more packets; retained messages on SUBSCRIBE are sent
        on a best-effort bound already, so the cut falls there and every subscription
        keeps its full meaning.  A filter repeated in the SUBSCRIBE (each time a new
        subscription, each time its retained messages) is walked once."""
        limit = self.max_inflight + self.max_queued
        allowance = limit
        visits = self.max_retained_visits
        dropped = session.dropped
        walked: dict[str, list[Retained]] = {}
        for topic_filter, qos in granted:
            messages = walked.get(topic_filter)
            if messages is None:
                messages, visits = self.retained.walk(topic_filter, visits)
                walked[topic_filter] = messages
            if messages and not conn.connected:
                return  # gone (or closed for a full write buffer): stop the work
            for message in messages:
                if not allowance or session.dropped != dropped:
                    self.retained_cut_by_queue += 1
                    self._retained_cut(session, f"matched more retained messages than "
                                                f"its queue takes ({limit})")
                    return
                allowance -= 1
                self._deliver(session, message.topic, message.payload,
                              min(qos, message.qos), True)
            if visits < 0:  # that walk was cut short: what it found is sent, no more
                self.retained_cut_by_visits += 1
                self._retained_cut(session, f"visited max_retained_visits "
                                            f"({self.max_retained_visits}) retained-"
                                            f"tree nodes")
                return

    def unsubscribe(self, conn: gevwire.Connection, packet: Any) -> Any:
        client: Client = conn.context
        session = client.session
        with self.lock:
            for topic_filter in packet.topics:
                if session.subscriptions.pop(topic_filter, None) is not None:
                    session.levels -= topic_levels(topic_filter)
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
            self.retained.set(topic, payload, qos)
        else:
            self.retained.delete(topic)  # spec 3.3.1-10: an empty one deletes

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
        client = session.client
        if qos == 0:
            if client is not None:
                self._send(client, Publish(topic, payload, 0, retain))
            return
        message = Publish(topic, payload, qos, retain)  # its packet id when it is sent
        if client is not None and not session.queue and \
                len(session.inflight) < self.max_inflight:
            self._send_inflight(session, client, message)
        elif len(session.queue) < self.max_queued:
            session.queue.append(message)
        else:
            self._drop(session)

    def _fill_window(self, session: Session) -> None:
        """Send queued messages, in order, while the client's window has room."""
        client = session.client
        if client is None:
            return
        queue, inflight, limit = session.queue, session.inflight, self.max_inflight
        while queue and len(inflight) < limit:
            self._send_inflight(session, client, queue.popleft())

    def _send_inflight(self, session: Session, client: Client, message: Publish) -> None:
        packet_id = session.next_packet_id()
        message.packet_id = packet_id
        session.inflight[packet_id] = message
        # send() encodes at once, so DUP set now marks only a later resend (3.3.1.1).
        self._send(client, message)
        message.dup = True

    def _drop(self, session: Session) -> None:
        """A QoS 1 message found the queue full: count it; warn now and then."""
        session.dropped += 1
        self.dropped += 1
        now = time.monotonic()
        if now - session.drop_logged >= DROP_LOG_INTERVAL:
            session.drop_logged = now
            log.warning("%s: queue full (%d in flight, %d queued): %d messages dropped "
                        "so far", session.client_id, len(session.inflight),
                        len(session.queue), session.dropped)

    def _retained_cut(self, session: Session, reason: str) -> None:
        now = time.monotonic()
        if now - session.drop_logged >= DROP_LOG_INTERVAL:
            session.drop_logged = now
            log.warning("%s: a SUBSCRIBE %s: the rest of its retained messages are not "
                        "sent (its subscriptions stand)", session.client_id, reason)

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
    # 256 KiB: what one packet costs the loop (decoding a SUBSCRIBE of 65,000 filters,
    # walking them) stays in the tens of ms; mosquitto allows up to 256 MiB.
    parser.add_argument("--max-packet-size", type=int, default=256 << 10)
    parser.add_argument("--max-inflight", type=int, default=MAX_INFLIGHT,
                        help="QoS 1 messages sent and unacknowledged per client (1..65535)")
    parser.add_argument("--max-queued", type=int, default=MAX_QUEUED,
                        help="QoS 1 messages queued per client behind its window or while "
                             "it is away; newer ones are dropped (0: no queue)")
    parser.add_argument("--max-topic-levels", type=int, default=MAX_TOPIC_LEVELS,
                        help="levels of a topic name or filter, at most")
    parser.add_argument("--max-subscription-levels", type=int,
                        default=MAX_SUBSCRIPTION_LEVELS,
                        help="levels of one client's topic filters, summed, at most")
    parser.add_argument("--max-retained-visits", type=int, default=MAX_RETAINED_VISITS,
                        help="retained-tree nodes one SUBSCRIBE may visit looking up "
                             "retained messages; past it the rest are not sent")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    add_ssl_arguments(parser)  # --ssl-certfile, --ssl-keyfile ... (MQTT over TLS: 8883)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
    )
    codec = MqttCodec(max_packet_size=args.max_packet_size)
    try:
        broker = Broker(codec, max_inflight=args.max_inflight, max_queued=args.max_queued,
                        max_topic_levels=args.max_topic_levels,
                        max_subscription_levels=args.max_subscription_levels,
                        max_retained_visits=args.max_retained_visits)
    except ValueError as exc:
        parser.error(str(exc))
    server = gevwire.Server(broker, address=f"{args.host}:{args.port}", loops=args.loops,
                            codec=codec, **ssl_server_options(parser, args))

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        server.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    host, port = server.address[:2]
    print(f"listening on {host}:{port}", flush=True)
    server.run()
    log.info("stopped with %d sessions, %d retained messages, %d messages dropped, "
             "%d SUBSCRIBEs' retained messages cut short", len(broker.sessions),
             len(broker.retained), broker.dropped,
             broker.retained_cut_by_queue + broker.retained_cut_by_visits)


if __name__ == "__main__":
    main()
