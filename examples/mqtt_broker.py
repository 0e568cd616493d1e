"""An MQTT broker on gevwire (3.1, 3.1.1 and 5.0 on one port): ``gevwire.codecs.mqtt``
and a ``Router(key="type")``.

What it does, by packet:

- CONNECT: protocol ``MQTT`` level 4 (3.1.1) or 5 (5.0), and MQTT 3.1's ``MQIsdp`` level
  3; another level gets CONNACK 0x01 (the 3.1.1 form; MQTT 3.1.1 requires it) and the
  connection is closed.  Client ids: MQTT 3.1 wants 1-23 characters (else CONNACK 2); in
  3.1.1 an empty one without clean session gets CONNACK 2, with clean session a
  generated id; an MQTT 5.0 client with an empty id gets one generated and told in
  CONNACK's Assigned Client Identifier.  A second connection with the same client id
  takes over (the first is closed; an MQTT 5.0 one is told DISCONNECT 0x8E). Sessions:
  3.1.1's ``clean_session=0`` keeps the session for ever; MQTT 5.0's Session Expiry
  Interval keeps it that many seconds after its connection ends (0: not at all;
  0xFFFFFFFF: for ever; a DISCONNECT may change it), Clean Start drops an old one; in
  both, at most ``max_session_expiry`` seconds (below). A session keeps its
  subscriptions and unacknowledged QoS 1 and 2 messages (queued while the client is
  away, sent on reconnect, with DUP if sent before, and PUBREL again for a QoS 2 message
  the client had PUBREC'd; CONNACK's session-present flag says so).
  CONNACK to an MQTT 5.0 client announces the broker's Receive Maximum
  (``receive_maximum``), Topic Alias Maximum (``topic_alias_maximum``), Maximum Packet
  Size (the codec's), and a Server Keep Alive where the client asked for more than
  ``max_keep_alive`` (or for none).  Enhanced authentication (an Authentication Method)
  is refused: CONNACK 0x8C.
- PUBLISH: fanned out to every matching subscription (``+`` / ``#`` wildcards; ``$``
  topics are not matched by a leading wildcard) once per client, at the lower of the
  message's QoS and the highest granted QoS; QoS 1 is acknowledged with PUBACK, QoS 2
  with PUBREC / PUBCOMP (delivered once, on the first PUBLISH of its packet id).
  Subscriptions are granted the QoS asked for, QoS 2 included: QoS 2 messages go to
  subscribers with PUBLISH / PUBREC / PUBREL / PUBCOMP, exactly once, across reconnects
  of a persistent session too.  Clients may not publish to ``$`` topics (``$SYS/...``):
  such a message is dropped (acknowledged all the same in 3.1.1; with reason 0x90 in
  MQTT 5.0).  MQTT 5.0 messages keep their properties (user properties, content type,
  response topic, correlation data, payload format) on the way to MQTT 5.0 subscribers;
  a Message Expiry Interval is honoured (a message whose interval has passed is not
  delivered; the interval left is forwarded), and a subscriber's Subscription
  Identifiers are added.  PUBACK says 0x10 where nobody subscribed.  Topic aliases both
  ways: a client may set aliases up to the broker's Topic Alias Maximum (beyond it:
  DISCONNECT 0x94; an unknown alias: DISCONNECT 0x82), and the broker gives topics it
  sends an MQTT 5.0 client aliases, first come first served, up to the lower of the
  client's maximum and its own.  A client's Receive Maximum caps its window (below);
  more QoS 2 messages of a client awaiting PUBREL than the broker's Receive Maximum:
  DISCONNECT 0x93.  A message larger than a client's Maximum Packet Size is not sent to
  it. RETAIN stores the message for its topic (an empty payload deletes it); retained
  messages are sent, with RETAIN set and at the lower of their QoS and the granted one,
  to each new subscription right after its SUBACK: for each filter of the SUBSCRIBE in
  turn, every retained message it matches, oldest topic first (a message matched by two
  filters of it is sent twice, once per subscription; a filter repeated in one SUBSCRIBE
  is looked up once).  Retained messages live in a tree of topic levels that a filter is
  walked through, so a SUBSCRIBE costs the nodes its filters reach, not the number of
  retained topics times the number of filters.  Two bounds, both mosquitto-like in that
  the SUBACK still grants every subscription and only retained messages are left out
  (counted; logged as drops are, at most every 10 s per client): a SUBSCRIBE sends at
  most ``max_inflight + max_queued`` retained messages in all (QoS 0 ones included, as
  mosquitto does), and none more once the client's queue (below) overflows; and its
  filters' walks visit at most ``max_retained_visits`` (100,000) tree nodes in all,
  10-30 ms of work, because a wildcard filter matching nothing may still look at every
  child of wide levels (``+/+/+/x`` against 20,000 topics looks at 20,000, and 4,000
  such filters held the loop and the lock for 2.4 s).  A walk that runs out sends what
  it found, oldest first; the filters after it get no retained messages.
- Flow control, per client (mosquitto's ``max_inflight_messages`` and
  ``max_queued_messages``): at most ``max_inflight`` (20; an MQTT 5.0 client's own
  Receive Maximum if lower) QoS 1 and 2 messages are sent and unacknowledged at a time;
  the next ones wait in the client's queue, in order, and go out as PUBACKs / PUBCOMPs
  free the window; the queue holds at most ``max_queued`` (1000) messages, and newer
  ones are dropped (counted; logged once, then at most every 10 s per client).  The same
  queue and bound hold a persistent session's messages while its client is away.  QoS 0
  messages to a connected client are sent at once, never queued (so they may overtake
  queued QoS 1 ones: the spec orders messages of one topic *and QoS* only), and are
  bounded by the server's write buffer cap, which closes a client that does not read;
  QoS 0 messages for an absent client are dropped.
- Sessions, bounded (a client connecting with ever new client ids would otherwise grow
  the broker without end): a session outlives its connection at most
  ``max_session_expiry`` seconds (86,400, as mosquitto's
  ``persistent_client_expiration``; 0xFFFFFFFF: no limit), to which a longer Session
  Expiry Interval, in CONNECT or DISCONNECT, and 3.1.1's ``clean_session=0`` are
  lowered; an MQTT 5.0 client is told the value used in CONNACK's Session Expiry
  Interval.  At most ``max_sessions`` (10,000) sessions that outlive their connection
  (an expiry over 0 after that cap) are stored, of connected clients or not: a CONNECT
  that would add one more gets CONNACK 0x97 quota exceeded (3.1 and 3.1.1: 3 server
  unavailable) and is closed (counted; logged at most every 10 s).  A client that has
  such a session reconnects or takes it over as ever, no session is dropped to make
  room, and a clean session (gone with its connection) is never refused.  A session is
  dropped when its expiry ends, by a timer; one whose expiry ended while that timer is
  late is dropped before a CONNECT is refused.
- Topic depth: a topic filter or topic name of more than ``max_topic_levels`` levels
  (200; mosquitto's ``TOPIC_HIERARCHY_LIMIT`` counts 200 separators, so 201 levels) is
  refused, because every level costs a tree node: such a filter gets return code 0x80 in
  the SUBACK (MQTT 5.0: 0x8F; the rest of the SUBSCRIBE is served); such a PUBLISH (or a
  will with such a topic, at CONNECT) closes the connection, as MQTT 3.1.1 has no way to
  refuse one (MQTT 5.0: PUBACK / PUBREC 0x90, CONNACK 0x90).  Length needs no limit of
  its own: a topic is at most 65535 bytes (and ``max_packet_size``).  The levels of one
  client's filters, summed, are bounded too (``max_subscription_levels``, 20,000: a few
  MiB of tree): a filter past it gets 0x80 (MQTT 5.0: 0x97, quota exceeded).
- SUBSCRIBE / UNSUBSCRIBE: an invalid topic filter gets return code 0x80 in the SUBACK
  (MQTT 5.0: 0x8F).  Shared subscriptions (``$share/NAME/filter``, in every version):
  each message goes to one session of the group, in turn, a connected one first; no
  retained messages are sent for one, and No Local on one is a protocol error.  MQTT 5.0
  subscription options: No Local (a client's own messages are not sent back to it),
  Retain As Published (the RETAIN flag is kept on forwarded messages) and Retain
  Handling (0: retained messages at every SUBSCRIBE, 1: only for a new subscription, 2:
  never); one Subscription Identifier per SUBSCRIBE.  UNSUBACK says 0x11 for a filter
  that was not subscribed.
- PINGREQ → PINGRESP; DISCONNECT closes and drops the will (MQTT 5.0 reason 0x04 keeps
  it); a connection that ends any other way publishes its will, after its Will Delay
  Interval (MQTT 5.0) unless the session is resumed first, and at the latest when the
  session ends.
- Keep-alive: a client silent for 1.5x its keep-alive is closed (MQTT 5.0: DISCONNECT
  0x8D first).  One loop timer per connection, re-armed only when it fires (packets just
  stamp the time).
- A connection that sends no CONNECT within ``connect_timeout`` seconds (10) is closed.
  Its timer is cancelled when CONNECT is accepted or the connection closes, as the
  keep-alive timer is at close (a cancelled timer lets go of the connection at once).
- A packet before CONNECT, a second CONNECT, a packet only a server sends, or a
  malformed packet closes the connection, as the spec asks; an MQTT 5.0 client is told
  why first (DISCONNECT 0x81 malformed, 0x82 protocol error, 0x95 packet too large).
- ``$SYS/broker/...``: every ``sys_interval`` seconds (10; 0: never) the broker
  publishes, retained, ``clients/connected``, ``clients/total`` (sessions),
  ``messages/received`` and ``messages/sent`` (PUBLISH packets), ``messages/dropped``,
  ``messages/expired``, ``retained messages/count``, ``subscriptions/count``, ``uptime``
  ("N seconds") and ``version``.

With ``--loops N`` connections live on N loops (threads): the subscription tree, the
retained messages and the sessions are shared under one lock, and messages reach
subscribers on other loops through ``conn.send``, which is thread-safe.

    python examples/mqtt_broker.py --port 1883          # --port 0 picks a free port
    python examples/mqtt_broker.py --max-inflight 20 --max-queued 1000 --max-topic-levels 200
    python examples/mqtt_broker.py --max-subscription-levels 20000 --max-retained-visits 100000
    python examples/mqtt_broker.py --receive-maximum 100 --topic-alias-maximum 10 --sys-interval 10
    python examples/mqtt_broker.py --max-session-expiry 86400 --max-sessions 10000
    python examples/mqtt_broker.py --max-connections 10000
    mosquitto_sub -p 1883 -t 'sensors/#' -v &
    mosquitto_pub -p 1883 -t sensors/kitchen -m 21.5 -V mqttv5 -D publish user-property k v

Prints ``listening on HOST:PORT`` once it accepts connections; stops cleanly on
SIGTERM / SIGINT (exit status 0).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
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
    NO_LOCAL,
    RETAIN_AS_PUBLISHED,
    RETAIN_HANDLING_SHIFT,
    SUBACK_FAILURE,
    ConnAck,
    Connect,
    Disconnect,
    EncodedProperties,
    MqttCodec,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    UnsubAck,
    Will,
    encode_properties,
    valid_topic_filter,
)
from gevwire.errors import FrameError, FrameTooLarge
from gevwire.timers import TimerHandle

log = logging.getLogger("mqtt_broker")

#: Highest QoS granted to a subscription.
MAX_QOS = 2
#: QoS 1 and 2 messages sent to a client and not yet acknowledged, at most (its window).
MAX_INFLIGHT = 20
#: QoS 1 and 2 messages waiting for a client's window (or for an absent client), at
#: most; beyond it new ones are dropped.
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
#: The broker's Receive Maximum (MQTT 5.0): QoS 2 messages of one client that may await
#: their PUBREL at a time (each holds a packet id in the session).
RECEIVE_MAXIMUM = 100
#: The broker's Topic Alias Maximum (MQTT 5.0): aliases one client may set (mosquitto's
#: default); each holds a topic name for the connection's life.
TOPIC_ALIAS_MAXIMUM = 10
#: Longest keep-alive granted to an MQTT 5.0 client (65535: whatever it asks).
MAX_KEEP_ALIVE = 65535
#: Seconds between two publications of the ``$SYS/broker/`` tree.
SYS_INTERVAL = 10.0
#: A client whose messages are dropped is logged at most once per this many seconds.
DROP_LOG_INTERVAL = 10.0
#: A connection that sends no CONNECT within this many seconds is closed (default).
CONNECT_TIMEOUT = 10.0
PROTOCOLS = {("MQTT", 4), ("MQIsdp", 3), ("MQTT", 5)}
#: A Session Expiry Interval that never ends (what 3.1.1's ``clean_session=0`` asks for).
NEVER = 0xFFFF_FFFF
#: Seconds a session outlives its connection, at most (mosquitto's
#: ``persistent_client_expiration``): a longer Session Expiry Interval, and 3.1.1's
#: ``clean_session=0`` (for ever), is lowered to it.  :data:`NEVER`: no limit.
MAX_SESSION_EXPIRY = 86_400
#: Sessions stored at once (those that outlive their connection), of connected clients
#: or not: a CONNECT that would add one more is refused.  Each costs a few KiB, and up
#: to its queue of messages.
MAX_SESSIONS = 10_000
#: Connections open at once (``--max-connections``; the server's ``max_connections``):
#: past it a connection is accepted and closed at once.  Each costs ~1 KiB idle, and
#: its clean session (subscriptions, queue) while it lasts.
MAX_CONNECTIONS = 10_000
#: The MQTT 5.0 properties of a PUBLISH that travel with it to subscribers (its Message
#: Expiry Interval travels too, as what is left of it).
FORWARDED = frozenset({"payload_format_indicator", "content_type", "response_topic",
                       "correlation_data", "user_property"})
#: Subscription options beside the QoS that a subscription keeps.  A subscription's
#: ``options`` int is the Subscription Options byte, with the Subscription Identifier
#: (MQTT 5.0) from bit 8 up; merged for a message that several of a client's
#: subscriptions match, identifiers take 28 bits each.
_SUB_ID_SHIFT = 8
_ID_BITS = 28
_ID_MASK = (1 << _ID_BITS) - 1
VERSION = "gevwire mqtt_broker example (MQTT 3.1, 3.1.1, 5.0)"


def subscription_ids(options: int) -> tuple[int, ...]:
    """The Subscription Identifiers held in a (merged) subscription ``options`` int."""
    ids = options >> _SUB_ID_SHIFT
    out = []
    while ids:
        out.append(ids & _ID_MASK)
        ids >>= _ID_BITS
    return tuple(sorted(set(out)))


def _merge(a: int, b: int) -> int:
    """The options of one delivery for two subscriptions of a client that both match:
    the higher QoS, Retain As Published if either has it, both identifiers."""
    qos = max(a & 3, b & 3)
    flags = (a | b) & RETAIN_AS_PUBLISHED
    ids_a, ids_b = a >> _SUB_ID_SHIFT, b >> _SUB_ID_SHIFT
    ids: int = ids_a if not ids_b else ids_b if not ids_a else (ids_a << _ID_BITS) | ids_b
    return qos | flags | (ids << _SUB_ID_SHIFT)


class Session:
    """What the broker keeps for a client id: subscriptions and unacknowledged messages.

    Outlives its connection for ``expiry`` seconds (0: not at all; :data:`NEVER`).
    """

    __slots__ = (
        "client",
        "client_id",
        "deadline",
        "drop_logged",
        "dropped",
        "expiry",
        "generation",
        "inflight",
        "levels",
        "packet_ids",
        "pending_will",
        "qos2_received",
        "queue",
        "subscriptions",
    )

    def __init__(self, client_id: str, expiry: int) -> None:
        self.client_id = client_id
        self.expiry = expiry
        self.client: Client | None = None  # the connection attached now, if any
        # topic filter -> options (QoS in bits 0-1, MQTT 5.0 options, identifier)
        self.subscriptions: dict[str, int] = {}
        self.inflight: dict[int, Outgoing] = {}  # QoS 1 and 2 sent, not yet done
        self.queue: deque[Outgoing] = deque()  # waiting for the window, no id yet
        self.qos2_received: set[int] = set()  # QoS 2 packet ids awaiting PUBREL
        self.packet_ids = itertools.count()
        self.dropped = 0  # messages dropped for want of room
        self.drop_logged = -DROP_LOG_INTERVAL  # monotonic time of the last drop warning
        self.levels = 0  # topic levels of its subscriptions, summed (tree nodes it may hold)
        self.generation = 0  # one more per connection attached: what timers check
        self.pending_will: Will | None = None  # waiting for its Will Delay Interval
        # Monotonic time its expiry ends, while no client is attached (None: attached, or
        # kept for ever).
        self.deadline: float | None = None

    def next_packet_id(self) -> int:
        """1..65535, cycling, skipping ids still in flight."""
        for _ in range(0x10000):
            packet_id = next(self.packet_ids) % 0xFFFF + 1
            if packet_id not in self.inflight:
                return packet_id
        raise RuntimeError("no free packet identifier")


class Outgoing:
    """A message on its way to one session: queued, or in flight with its packet id.
    ``released``: a QoS 2 message the client PUBREC'd (PUBREL sent, PUBCOMP awaited)."""

    __slots__ = ("dup", "expires", "options", "packet_id", "payload", "properties", "qos",
                 "released", "retain", "topic")

    def __init__(self, topic: str, payload: bytes, qos: int, retain: bool,
                 properties: EncodedProperties | None, expires: float | None,
                 options: int) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties  # what travels to MQTT 5.0 subscribers
        self.expires = expires  # monotonic end of its Message Expiry Interval
        self.options = options  # the matching subscriptions' (identifiers)
        self.packet_id: int | None = None
        self.dup = False
        self.released = False


class Client:
    """One connection's state (``conn.context``) once it has sent CONNECT."""

    __slots__ = (
        "alias_max_out",
        "aliases_in",
        "aliases_out",
        "asked_expiry",
        "conn",
        "disconnected",
        "keep_alive",
        "last_seen",
        "max_packet",
        "session",
        "timer",
        "v5",
        "will",
        "window",
    )

    def __init__(self, conn: gevwire.Connection, session: Session, packet: Connect,
                 keep_alive: int, window: int) -> None:
        self.conn = conn
        self.session = session
        self.will: Will | None = packet.will
        self.keep_alive = keep_alive
        self.last_seen = time.monotonic()
        self.disconnected = False  # sent DISCONNECT: the will is dropped
        self.timer: TimerHandle | None = None
        self.v5 = packet.protocol_level == 5
        self.window = window  # QoS 1 and 2 messages in flight to it, at most
        props = packet.properties or {}
        self.max_packet: int | None = props.get("maximum_packet_size")
        self.alias_max_out: int = props.get("topic_alias_maximum", 0)
        # The Session Expiry Interval its CONNECT asked for (MQTT 5.0), before the cap.
        self.asked_expiry: int = props.get("session_expiry_interval", 0)
        self.aliases_in: dict[int, str] = {}  # the client's topic aliases
        self.aliases_out: dict[str, int] = {}  # ours, for topics sent to it


class _Node:
    # The dicts are made on first use: a level that only leads on (most of them) costs
    # its object and its parent's entry.
    __slots__ = ("children", "shared", "subscribers")

    def __init__(self) -> None:
        self.children: dict[str, _Node] | None = None
        self.subscribers: dict[Session, int] | None = None
        self.shared: dict[str, SharedGroup] | None = None  # by share name


class SharedGroup:
    """The sessions of one shared subscription (``$share/NAME/filter``): each message
    goes to one of them, in turn, a connected one first."""

    __slots__ = ("members", "turn")

    def __init__(self) -> None:
        self.members: dict[Session, int] = {}  # session -> options
        self.turn = 0

    def choose(self) -> tuple[Session, int]:
        members = list(self.members.items())
        count = len(members)
        start = self.turn % count
        self.turn = start + 1
        for k in range(count):
            session, options = members[(start + k) % count]
            if session.client is not None:
                self.turn = start + k + 1
                return session, options
        return members[start]  # nobody connected: queued for the one in turn


def split_shared(topic_filter: str) -> tuple[str | None, str]:
    """``("NAME", "filter")`` for a shared subscription ``$share/NAME/filter``, else
    ``(None, topic_filter)``."""
    if not topic_filter.startswith("$share/"):
        return None, topic_filter
    name, _, real = topic_filter[len("$share/"):].partition("/")
    return name, real


def valid_subscription(topic_filter: str) -> bool:
    """A valid topic filter, or a shared subscription: a share name of at least one
    character without ``/``, ``+`` or ``#``, then a valid filter (MQTT 5.0, 4.8.2)."""
    name, real = split_shared(topic_filter)
    if name is not None and (not name or "+" in name or "#" in name):
        return False
    return valid_topic_filter(real)


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

    def add(self, topic_filter: str, session: Session, options: int) -> None:
        share, topic_filter = split_shared(topic_filter)
        node = _path(self.root, topic_filter, _Node)
        if share is not None:
            if node.shared is None:
                node.shared = {}
            group = node.shared.get(share)
            if group is None:
                group = node.shared[share] = SharedGroup()
            group.members[session] = options
            return
        if node.subscribers is None:
            node.subscribers = {}
        node.subscribers[session] = options

    def remove(self, topic_filter: str, session: Session) -> None:
        share, topic_filter = split_shared(topic_filter)
        levels = topic_filter.split("/")
        path = _find_path(self.root, levels)
        if path is None:
            return
        leaf = path[-1]
        if share is not None:
            group = leaf.shared.get(share) if leaf.shared is not None else None
            if group is not None:
                group.members.pop(session, None)
                if not group.members:
                    del leaf.shared[share]
                    if not leaf.shared:
                        leaf.shared = None
        elif leaf.subscribers is not None:
            leaf.subscribers.pop(session, None)
            if not leaf.subscribers:
                leaf.subscribers = None
        _prune(levels, path, lambda node: bool(node.subscribers) or bool(node.shared))

    def match(self, topic: str, publisher: Session | None = None) -> dict[Session, int]:
        """Each subscribed session whose filters match ``topic``, with the options of
        its delivery (the highest QoS of its matching subscriptions, and so on: see
        :func:`_merge`); a subscription with No Local does not match ``publisher``'s
        own messages."""
        levels = topic.split("/")
        depth = len(levels)
        found: dict[Session, int] = {}
        groups: list[SharedGroup] = []

        def take(node: _Node) -> None:
            if node.shared is not None:
                groups.extend(node.shared.values())
            if node.subscribers is None:
                return
            for session, options in node.subscribers.items():
                if options & NO_LOCAL and session is publisher:
                    continue
                old = found.get(session)
                if old is None or old == options:
                    found[session] = options
                else:
                    found[session] = _merge(old, options)

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
        for group in groups:  # one member each (its copy merged with the member's own)
            session, options = group.choose()
            old = found.get(session)
            found[session] = options if old is None else _merge(old, options)
        return found


class Retained:
    """One retained message: ``order`` keeps the order in which topics first got one;
    ``properties`` are its MQTT 5.0 properties to forward, ``expires`` the monotonic
    time its Message Expiry Interval ends (None: never)."""

    __slots__ = ("expires", "order", "payload", "properties", "qos", "topic")

    def __init__(self, order: int, topic: str, payload: bytes, qos: int,
                 properties: EncodedProperties | None = None,
                 expires: float | None = None) -> None:
        self.order = order
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.properties = properties
        self.expires = expires


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

    def set(self, topic: str, payload: bytes, qos: int,
            properties: EncodedProperties | None = None, expires: float | None = None) -> None:
        node = _path(self.root, topic, _RetainedNode)
        old = node.message
        if old is None:
            node.message = Retained(next(self._order), topic, payload, qos, properties,
                                    expires)
            self.count += 1
        else:  # replaced: keeps its place in the order, as a dict value would
            old.payload, old.qos = payload, qos
            old.properties, old.expires = properties, expires

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
    and 2 messages and the queue behind it (see the module docstring);
    ``max_topic_levels``: the deepest topic name or filter accepted;
    ``max_subscription_levels``: the levels of one client's filters, summed (a filter
    past it is refused); ``max_retained_visits``: the retained-tree nodes one
    SUBSCRIBE may visit looking up retained messages (the rest are not sent);
    ``receive_maximum`` / ``topic_alias_maximum``: what the broker takes from an MQTT
    5.0 client (QoS 2 messages awaiting PUBREL, topic aliases); ``max_keep_alive``: the
    longest keep-alive an MQTT 5.0 client is granted; ``max_session_expiry``: the
    longest a session outlives its connection, in seconds (:data:`NEVER`: no limit);
    ``max_sessions``: the sessions that outlive their connection stored at once (a
    CONNECT that would add one more is refused); ``sys_interval``: seconds between
    publications of ``$SYS/broker/`` (0: none), from :meth:`start`;
    ``connect_timeout``: seconds a connection may take to send CONNECT.
    """

    def __init__(self, codec: MqttCodec, *, max_inflight: int = MAX_INFLIGHT,
                 max_queued: int = MAX_QUEUED,
                 max_topic_levels: int = MAX_TOPIC_LEVELS,
                 max_subscription_levels: int = MAX_SUBSCRIPTION_LEVELS,
                 max_retained_visits: int = MAX_RETAINED_VISITS,
                 receive_maximum: int = RECEIVE_MAXIMUM,
                 topic_alias_maximum: int = TOPIC_ALIAS_MAXIMUM,
                 max_keep_alive: int = MAX_KEEP_ALIVE,
                 max_session_expiry: int = MAX_SESSION_EXPIRY,
                 max_sessions: int = MAX_SESSIONS,
                 sys_interval: float = SYS_INTERVAL,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
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
        if not 1 <= receive_maximum <= 0xFFFF:
            raise ValueError("receive_maximum must be in 1..65535")
        if not 0 <= topic_alias_maximum <= 0xFFFF:
            raise ValueError("topic_alias_maximum must be in 0..65535")
        if not 1 <= max_keep_alive <= 0xFFFF:
            raise ValueError("max_keep_alive must be in 1..65535")
        if not 0 <= max_session_expiry <= NEVER:
            raise ValueError(f"max_session_expiry must be in 0..{NEVER} ({NEVER}: no limit)")
        if max_sessions < 1:
            raise ValueError("max_sessions must be >= 1")
        if sys_interval < 0:
            raise ValueError("sys_interval must be >= 0 (0: no $SYS tree)")
        if not connect_timeout > 0:
            raise ValueError("connect_timeout must be > 0")
        super().__init__(key="type")
        self.codec = codec
        self.max_inflight = max_inflight
        self.max_queued = max_queued
        self.max_topic_levels = max_topic_levels
        self.max_subscription_levels = max_subscription_levels
        self.max_retained_visits = max_retained_visits
        self.receive_maximum = receive_maximum
        self.topic_alias_maximum = topic_alias_maximum
        self.max_keep_alive = max_keep_alive
        self.max_session_expiry = max_session_expiry
        self.max_sessions = max_sessions
        self.sys_interval = sys_interval
        self.connect_timeout = connect_timeout
        # The CONNECT timer of each connection that has not sent CONNECT yet (each
        # connection's entry is set and taken on its own loop's thread).
        self._connect_timers: dict[gevwire.Connection, TimerHandle] = {}
        # Reentrant: a send on the loop thread may close a connection (its write buffer
        # overflowed), which runs on_close, which takes the lock again.
        self.lock = threading.RLock()
        self.tree = TopicTree()
        self.retained = RetainedTree()
        self.sessions: dict[str, Session] = {}
        self.dropped = 0  # messages dropped for want of queue room, all clients
        self.expired = 0  # messages not delivered: their expiry interval passed
        self.too_large = 0  # messages over a client's Maximum Packet Size
        self.received = 0  # PUBLISH packets from clients
        self.sent = 0  # PUBLISH packets to clients
        self.connected = 0  # clients connected now
        self.stored = 0  # sessions that outlive their connection (expiry > 0)
        self.refused_sessions = 0  # CONNECTs refused: max_sessions were stored
        self._refusal_logged = -DROP_LOG_INTERVAL  # monotonic time of the last warning
        # No absent session's deadline is earlier (a bound, made exact by each sweep).
        self._next_deadline = math.inf
        self.subscription_count = 0
        self.started = time.monotonic()
        # SUBSCRIBEs whose retained messages were cut short: by the client's window and
        # queue (max_inflight + max_queued), by max_retained_visits.
        self.retained_cut_by_queue = 0
        self.retained_cut_by_visits = 0
        self.on("connect")(self.connect)
        self.on("publish")(self.publish)
        self.on("puback")(self.puback)
        self.on("pubrec")(self.pubrec)
        self.on("pubrel")(self.pubrel)
        self.on("pubcomp")(self.pubcomp)
        self.on("subscribe")(self.subscribe)
        self.on("unsubscribe")(self.unsubscribe)
        self.on("pingreq")(self.pingreq)
        self.on("disconnect")(self.disconnect)
        self.default(self.unexpected)
        self.on_error(self._on_error)

    def start(self, server: gevwire.Server) -> None:
        """``Server(on_start=broker.start)``: publish ``$SYS/broker/`` now and every
        ``sys_interval`` seconds."""
        if self.sys_interval:
            self.publish_sys()
            server.run_every(self.sys_interval, self.publish_sys)

    def publish_sys(self) -> None:
        """The ``$SYS/broker/`` counters, retained, to their subscribers."""
        with self.lock:
            values = {
                "clients/connected": self.connected,
                "clients/total": len(self.sessions),
                "messages/received": self.received,
                "messages/sent": self.sent,
                "messages/dropped": self.dropped,
                "messages/expired": self.expired,
                "retained messages/count": len(self.retained),
                "subscriptions/count": self.subscription_count,
                "uptime": f"{int(time.monotonic() - self.started)} seconds",
                "version": VERSION,
            }
            for name, value in values.items():
                topic = f"$SYS/broker/{name}"
                payload = str(value).encode()
                self._retain(topic, payload, 0, None, None)
                self._publish(topic, payload, 0, True, None, None, None)

    # -- connection lifecycle -----------------------------------------------------------

    def on_connect(self, conn: Any) -> None:  # type: ignore[override]
        self._connect_timers[conn] = conn.loop.run_after(
            self.connect_timeout, self._check_connected, conn)

    def _check_connected(self, conn: gevwire.Connection) -> None:
        self._connect_timers.pop(conn, None)
        if conn.context is None and conn.connected:
            log.info("%r sent no CONNECT in %.1fs: closing", conn, self.connect_timeout)
            conn.close()

    def _stop_connect_timer(self, conn: gevwire.Connection) -> None:
        timer = self._connect_timers.pop(conn, None)
        if timer is not None:
            timer.cancel()

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

    def _on_error(self, conn: gevwire.Connection, error: BaseException) -> None:
        """A malformed packet from an MQTT 5.0 client: tell it why (DISCONNECT with the
        spec's reason code) before the connection closes."""
        client: Client | None = conn.context
        if client is not None and client.v5 and isinstance(error, FrameError):
            reason = 0x95 if isinstance(error, FrameTooLarge) else \
                getattr(error, "reason_code", 0x81)
            self._send(client, Disconnect(reason, {}))
        gevwire.Handler.on_error(self, conn, error)

    def _disconnect(self, client: Client, reason: int, why: str) -> None:
        """Close a client for a protocol error; an MQTT 5.0 one gets DISCONNECT first
        (its will is published: this is no DISCONNECT of its own)."""
        log.warning("%s: %s: closing", client.session.client_id, why)
        if client.v5:
            self._send(client, Disconnect(reason, {}))
        client.conn.close()

    def on_close(self, conn: Any) -> None:  # type: ignore[override]
        self._stop_connect_timer(conn)
        client: Client | None = conn.context
        if client is None:
            return
        if client.timer is not None:
            client.timer.cancel()
            client.timer = None
        with self.lock:
            self.connected -= 1
            session = client.session
            will = client.will if not client.disconnected else None
            attached = session.client is client
            if attached:
                session.client = None
            delay = 0
            if will is not None and will.properties:
                delay = will.properties.get("will_delay_interval", 0)
            if will is not None and attached and delay and session.expiry:
                session.pending_will = will  # published when the delay or session ends
                conn.loop.run_after(min(delay, session.expiry), self._will_due, session,
                                    session.generation)
            elif will is not None and not (delay and not attached and
                                           self.sessions.get(session.client_id) is session):
                # (Taken over by a connection that resumed the session within the will
                # delay: no will.)
                self._publish_will(session, will)
            if attached:
                if not session.expiry:
                    self._drop_session(session)
                elif session.expiry != NEVER:
                    session.deadline = time.monotonic() + session.expiry
                    self._next_deadline = min(self._next_deadline, session.deadline)
                    conn.loop.run_after(session.expiry, self._expire, session,
                                        session.generation)

    def _publish_will(self, session: Session, will: Will) -> None:
        log.info("%s went away: publishing its will on %s", session.client_id, will.topic)
        props, expires = self._forwarded(will.properties)
        if will.topic.startswith("$"):
            return  # clients may not publish to $ topics, by will neither
        if will.retain:
            self._retain(will.topic, will.message, will.qos, props, expires)
        self._publish(will.topic, will.message, will.qos, False, props, expires, None)

    def _will_due(self, session: Session, generation: int) -> None:
        with self.lock:
            will = session.pending_will
            if will is not None and session.generation == generation:
                session.pending_will = None
                self._publish_will(session, will)

    def _expire(self, session: Session, generation: int) -> None:
        """Session Expiry Interval timer: the session ends unless a client resumed it."""
        with self.lock:
            if session.client is None and session.generation == generation and \
                    self.sessions.get(session.client_id) is session:
                log.info("%s: session expired", session.client_id)
                self._drop_session(session)

    def _sweep_expired(self) -> None:
        """Drop the absent sessions whose expiry has passed but whose timer has not run
        yet (it runs on the loop of the session's last connection, which may be busy),
        so that they never refuse a new one.  Walks the sessions only once the earliest
        deadline has passed: at most once per deadline, not per CONNECT refused."""
        now = time.monotonic()
        if now < self._next_deadline:
            return
        earliest = math.inf
        for session in list(self.sessions.values()):
            deadline = session.deadline
            if deadline is None or session.client is not None:
                continue
            if deadline <= now:
                log.info("%s: session expired", session.client_id)
                self._drop_session(session)
            elif deadline < earliest:
                earliest = deadline
        self._next_deadline = earliest

    def _refuse_session(self, conn: gevwire.Connection, v5: bool) -> ConnAck:
        """A CONNECT that would store one session more than ``max_sessions``: refused
        (MQTT 5.0: 0x97 quota exceeded; 3.1.1: 3 server unavailable) and closed;
        counted, and logged at most every 10 s."""
        self.refused_sessions += 1
        now = time.monotonic()
        if now - self._refusal_logged >= DROP_LOG_INTERVAL:
            self._refusal_logged = now
            log.warning("%r: max_sessions (%d) stored: CONNECT of a new session refused "
                        "(%d so far)", conn, self.max_sessions, self.refused_sessions)
        conn.close()
        return ConnAck(0x97, properties={}) if v5 else ConnAck(3)

    def _set_expiry(self, session: Session, expiry: int) -> None:
        """Set a stored session's expiry, counting the sessions that outlive their
        connection (``stored``, what ``max_sessions`` bounds)."""
        if self.sessions.get(session.client_id) is session:
            self.stored += (expiry > 0) - (session.expiry > 0)
        session.expiry = expiry

    def _drop_session(self, session: Session) -> None:
        will = session.pending_will
        if will is not None:  # the session ends before the will delay: publish it now
            session.pending_will = None
            self._publish_will(session, will)
        for topic_filter in session.subscriptions:
            self.tree.remove(topic_filter, session)
        self.subscription_count -= len(session.subscriptions)
        session.subscriptions.clear()
        session.inflight.clear()
        session.queue.clear()
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
            if session.expiry:
                self.stored -= 1

    def _arm_keep_alive(self, client: Client, delay: float) -> None:
        """Check ``client``'s keep-alive in ``delay`` seconds (cancelled at close)."""
        client.timer = client.conn.loop.run_after(delay, self._check_keep_alive,
                                                  client)

    def _check_keep_alive(self, client: Client) -> None:
        """Keep-alive timer: close a client silent for 1.5x keep-alive (spec 3.1.2.10)."""
        client.timer = None
        conn = client.conn
        if not conn.connected:
            return
        limit = client.keep_alive * 1.5
        left = client.last_seen + limit - time.monotonic()
        if left > 0:
            self._arm_keep_alive(client, left)
            return
        log.info("%s silent for %.1fs (keep-alive %ds): closing",
                 client.session.client_id, limit, client.keep_alive)
        if client.v5:
            self._send(client, Disconnect(0x8D, {}))  # keep alive timeout
        conn.close()

    # -- packets ------------------------------------------------------------------------

    def connect(self, conn: gevwire.Connection, packet: Connect) -> Any:
        if conn.context is not None:
            self._disconnect(conn.context, 0x82, "second CONNECT")
            return None
        if (packet.protocol_name, packet.protocol_level) not in PROTOCOLS:
            if packet.protocol_name not in ("MQTT", "MQIsdp"):
                log.warning("%r: protocol %r: closing", conn, packet.protocol_name)
                conn.close()
                return None
            log.info("%r: protocol level %d: CONNACK 1", conn, packet.protocol_level)
            conn.close()
            return ConnAck(1)  # unacceptable protocol level (3.1.1 form: 3.1.2-2)
        v5 = packet.protocol_level == 5
        props = packet.properties or {}

        def refuse(code: int, code5: int, why: str) -> ConnAck:
            log.warning("%r: %s: CONNACK %#04x", conn, why, code5 if v5 else code)
            conn.close()
            return ConnAck(code5, properties={}) if v5 else ConnAck(code)

        will = packet.will
        if will is not None and topic_levels(will.topic) > self.max_topic_levels:
            if v5:
                return refuse(0, 0x90, f"will topic of {topic_levels(will.topic)} levels")
            log.warning("%r: will topic of %d levels (max_topic_levels %d): closing", conn,
                        topic_levels(will.topic), self.max_topic_levels)
            conn.close()
            return None
        if "authentication_method" in props:
            return refuse(0, 0x8C, "enhanced authentication asked for")
        client_id = packet.client_id
        assigned = False
        if packet.protocol_level == 3 and not 1 <= len(client_id) <= 23:
            return refuse(2, 0x85, f"MQTT 3.1 client id of {len(client_id)} characters")
        if not client_id:
            if not packet.clean_session and not v5:
                return refuse(2, 0x85, "empty client id without clean session")
            client_id = f"auto-{uuid.uuid4().hex}"
            assigned = v5
        if v5:
            requested = props.get("session_expiry_interval", 0)
        else:
            requested = 0 if packet.clean_session else NEVER
        expiry = min(requested, self.max_session_expiry)
        keep_alive = packet.keep_alive
        connack_props: dict[str, Any] | None = None
        window = self.max_inflight
        if v5:
            window = min(window, props.get("receive_maximum", 0xFFFF))
            connack_props = {
                "receive_maximum": self.receive_maximum,
                "topic_alias_maximum": self.topic_alias_maximum,
                "maximum_packet_size": self.codec.max_packet_size,
            }
            if assigned:
                connack_props["assigned_client_identifier"] = client_id
            if expiry < requested:  # the server's own value, told (3.2.2.3.2)
                connack_props["session_expiry_interval"] = expiry
            if self.max_keep_alive < MAX_KEEP_ALIVE and \
                    (keep_alive == 0 or keep_alive > self.max_keep_alive):
                keep_alive = self.max_keep_alive
                connack_props["server_keep_alive"] = keep_alive
        with self.lock:
            session = self.sessions.get(client_id)
            if expiry and (session is None or not session.expiry) and \
                    self.stored >= self.max_sessions:  # one more would be stored
                self._sweep_expired()  # (expired ones first)
                if self.stored >= self.max_sessions:
                    return self._refuse_session(conn, v5)
            if session is not None and session.client is not None:
                log.info("%s connected again: closing its previous connection", client_id)
                old = session.client
                if old.v5:
                    self._send(old, Disconnect(0x8E, {}))  # session taken over
                old.conn.close()
                session.client = None
                if not session.expiry:
                    self._drop_session(session)  # it ended with its connection
                    session = None
            if session is not None and packet.clean_session:
                self._drop_session(session)  # clean start
                session = None
            present = session is not None
            if session is None:
                session = Session(client_id, 0)
                self.sessions[client_id] = session
            self._set_expiry(session, expiry)
            session.generation += 1  # the timers of its last connection are void
            session.deadline = None
            session.pending_will = None  # resumed within the will delay: no will
            client = Client(conn, session, packet, keep_alive, window)
            # Each alias holds a topic for the connection's life: ours are bounded too.
            client.alias_max_out = min(client.alias_max_out, self.topic_alias_maximum)
            session.client = client
            conn.context = client
            self._stop_connect_timer(conn)
            self.connected += 1
            conn.send(ConnAck(0, present, connack_props))
            for message in list(session.inflight.values()):  # unacknowledged, in order
                if message.released:
                    self._send(client, PubRel(message.packet_id or 0))
                else:
                    self._send_publish(client, message)  # DUP: it was sent before
            self._fill_window(session)  # then what waited in the queue
        if keep_alive:
            self._arm_keep_alive(client, keep_alive * 1.5)
        log.info("%s connected (MQTT level %d, clean %s, keep-alive %ds)", client_id,
                 packet.protocol_level, packet.clean_session, keep_alive)
        return None

    def publish(self, conn: gevwire.Connection, packet: Publish) -> Any:
        client: Client = conn.context
        session = client.session
        topic = packet.topic
        qos = packet.qos
        packet_id = packet.packet_id
        props: EncodedProperties | None = None
        expires: float | None = None
        # A decoded PUBLISH carries its properties as a dict (EncodedProperties are only
        # made to be sent).
        in_props = packet.properties if isinstance(packet.properties, dict) else None
        if client.v5 and in_props:
            alias = in_props.get("topic_alias")
            if alias is not None:
                if alias > self.topic_alias_maximum:
                    self._disconnect(client, 0x94, f"topic alias {alias} over the maximum "
                                                   f"{self.topic_alias_maximum}")
                    return None
                if topic:
                    client.aliases_in[alias] = topic
                else:
                    known = client.aliases_in.get(alias)
                    if known is None:
                        self._disconnect(client, 0x82, f"unknown topic alias {alias}")
                        return None
                    topic = known
            if "subscription_identifier" in in_props:
                self._disconnect(client, 0x82, "PUBLISH with a subscription identifier")
                return None
            props, expires = self._forwarded(in_props)
        self.received += 1
        refused = 0
        if topic_levels(topic) > self.max_topic_levels:
            if not client.v5:
                # No PUBACK / PUBREC can refuse a message in MQTT 3.1.1: a protocol error.
                log.warning("%s: PUBLISH topic of %d levels (max_topic_levels %d): "
                            "closing", session.client_id, topic_levels(topic),
                            self.max_topic_levels)
                conn.close()
                return None
            refused = 0x90  # topic name invalid
        elif topic.startswith("$"):
            refused = 0x90 if client.v5 else -1  # dropped; 3.1.1 acknowledges it
        if qos == 2:
            assert packet_id is not None
            received = session.qos2_received
            if packet_id in received:
                return PubRec(packet_id)  # a resend: delivered already
            if refused > 0:
                return PubRec(packet_id, refused)  # no PUBREL follows a refusal
            if client.v5 and len(received) >= self.receive_maximum:
                self._disconnect(client, 0x93, f"over the Receive Maximum "
                                               f"{self.receive_maximum}")
                return None
            received.add(packet_id)
        matched = False
        if not refused:
            with self.lock:
                if packet.retain:
                    self._retain(topic, packet.payload, qos, props, expires)
                matched = self._publish(topic, packet.payload, qos, packet.retain, props,
                                        expires, session)
        if qos == 0:
            return None
        assert packet_id is not None
        code = 0
        if client.v5:
            code = refused if refused > 0 else 0 if matched else 0x10  # no subscribers
        return PubAck(packet_id, code) if qos == 1 else PubRec(packet_id, code)

    @staticmethod
    def _forwarded(properties: dict[str, Any] | None
                   ) -> tuple[EncodedProperties | None, float | None]:
        """The properties of a PUBLISH (or will) that travel with it to subscribers,
        encoded once for all of them (a PUBLISH may hold 20,000 user properties, 30 ms
        to encode), and the monotonic time its Message Expiry Interval ends (None:
        never)."""
        if not properties:
            return None, None
        props = {k: v for k, v in properties.items() if k in FORWARDED}
        interval = properties.get("message_expiry_interval")
        return (encode_properties(props, Publish.packet_type) if props else None,
                None if interval is None else time.monotonic() + interval)

    def puback(self, conn: gevwire.Connection, packet: PubAck) -> None:
        session = conn.context.session
        with self.lock:
            message = session.inflight.get(packet.packet_id)
            if message is not None and message.qos == 1:
                del session.inflight[packet.packet_id]
                self._fill_window(session)

    def pubrec(self, conn: gevwire.Connection, packet: PubRec) -> Any:
        """A subscriber received a QoS 2 message: release it (PUBREL), or forget it if
        the subscriber refused it (MQTT 5.0 reason 0x80 and up)."""
        client: Client = conn.context
        session = client.session
        with self.lock:
            message = session.inflight.get(packet.packet_id)
            if message is None or message.qos != 2:
                return PubRel(packet.packet_id, 0x92 if client.v5 else 0)  # id not found
            if packet.reason_code >= 0x80:
                del session.inflight[packet.packet_id]
                self._fill_window(session)
                return None
            message.released = True
        return PubRel(packet.packet_id)

    def pubcomp(self, conn: gevwire.Connection, packet: PubComp) -> None:
        session = conn.context.session
        with self.lock:
            message = session.inflight.get(packet.packet_id)
            if message is not None and message.released:
                del session.inflight[packet.packet_id]
                self._fill_window(session)

    def pubrel(self, conn: gevwire.Connection, packet: Any) -> Any:
        client: Client = conn.context
        received = client.session.qos2_received
        if packet.packet_id not in received and client.v5:
            return PubComp(packet.packet_id, 0x92)  # packet identifier not found
        received.discard(packet.packet_id)
        return PubComp(packet.packet_id)

    def subscribe(self, conn: gevwire.Connection, packet: Any) -> None:
        client: Client = conn.context
        session = client.session
        subscriptions = session.subscriptions
        v5 = client.v5
        codes: list[int] = []
        granted: list[tuple[str, int]] = []
        extra = 0  # a v5 subscription's options beside its QoS, with its identifier
        if v5 and packet.properties:
            ids = packet.properties.get("subscription_identifier")
            if ids:
                extra = ids[0] << _SUB_ID_SHIFT
        # A 1 MiB SUBSCRIBE may hold 262,000 filters (one repeated, say): the loop is
        # kept lean, and a filter subscribed already with the same options (checked
        # then) costs two lookups.
        get, add_code, add_granted = subscriptions.get, codes.append, granted.append
        with self.lock:
            for topic_filter, requested in packet.topics:
                qos = requested & 3
                if qos > MAX_QOS:
                    qos = MAX_QOS
                handling = 0
                if v5:
                    handling = (requested >> RETAIN_HANDLING_SHIFT) & 3
                    options = qos | (requested & (NO_LOCAL | RETAIN_AS_PUBLISHED)) | extra
                else:
                    options = qos
                shared = topic_filter.startswith("$share/")
                if shared and options & NO_LOCAL:
                    # A protocol error (MQTT 5.0, 3.8.3.1): the rest is not served.
                    self._disconnect(client, 0x82, "No Local on a shared subscription")
                    return
                old = get(topic_filter)
                if old != options:
                    if old is None:
                        levels = topic_levels(split_shared(topic_filter)[1])
                        if levels > self.max_topic_levels or \
                                not valid_subscription(topic_filter):
                            add_code(0x8F if v5 else SUBACK_FAILURE)
                            continue
                        if session.levels + levels > self.max_subscription_levels:
                            add_code(0x97 if v5 else SUBACK_FAILURE)  # quota exceeded
                            continue
                        session.levels += levels
                        self.subscription_count += 1
                    subscriptions[topic_filter] = options
                    self.tree.add(topic_filter, session, options)
                add_code(qos)
                # No retained messages for a shared subscription (MQTT 5.0, 4.8.2).
                if not shared and (handling == 0 or (handling == 1 and old is None)):
                    add_granted((topic_filter, options))
            conn.send(SubAck(packet.packet_id, tuple(codes), {} if v5 else None))
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
        now = time.monotonic()
        for topic_filter, options in granted:
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
                if message.expires is not None and message.expires <= now:
                    continue  # expired: deleted when next published to, never sent
                allowance -= 1
                self._deliver(session, message.topic, message.payload,
                              min(options & 3, message.qos), True, message.properties,
                              message.expires, options)
            if visits < 0:  # that walk was cut short: what it found is sent, no more
                self.retained_cut_by_visits += 1
                self._retained_cut(session, f"visited max_retained_visits "
                                            f"({self.max_retained_visits}) retained-"
                                            f"tree nodes")
                return

    def unsubscribe(self, conn: gevwire.Connection, packet: Any) -> Any:
        client: Client = conn.context
        session = client.session
        codes: list[int] = []
        with self.lock:
            for topic_filter in packet.topics:
                if session.subscriptions.pop(topic_filter, None) is not None:
                    session.levels -= topic_levels(split_shared(topic_filter)[1])
                    self.subscription_count -= 1
                    self.tree.remove(topic_filter, session)
                    codes.append(0)
                else:
                    codes.append(0x11)  # no subscription existed
        if client.v5:
            return UnsubAck(packet.packet_id, tuple(codes), {})
        return UnsubAck(packet.packet_id)

    def pingreq(self, conn: gevwire.Connection, packet: Any) -> Any:
        return PingResp()

    def disconnect(self, conn: gevwire.Connection, packet: Disconnect) -> None:
        client: Client = conn.context
        if client.v5:
            interval = (packet.properties or {}).get("session_expiry_interval")
            if interval is not None:
                if not client.asked_expiry and interval:
                    # From 0 to more on DISCONNECT: a protocol error (3.14.2.2.2).
                    self._disconnect(client, 0x82, "session expiry set from 0 on "
                                                   "DISCONNECT")
                    return
                with self.lock:
                    self._set_expiry(client.session, min(interval, self.max_session_expiry))
        client.disconnected = packet.reason_code != 0x04  # 0x04: send my will
        conn.close()

    def unexpected(self, conn: gevwire.Connection, packet: Any) -> None:
        client: Client | None = conn.context
        if client is not None and client.v5:
            self._disconnect(client, 0x82, f"unexpected {packet.type} from a client")
            return
        log.warning("%r: unexpected %s from a client: closing", conn, packet.type)
        conn.close()

    # -- routing (under self.lock) ------------------------------------------------------

    def _retain(self, topic: str, payload: bytes, qos: int,
                properties: EncodedProperties | None, expires: float | None) -> None:
        if payload:
            self.retained.set(topic, payload, qos, properties, expires)
        else:
            self.retained.delete(topic)  # spec 3.3.1-10: an empty one deletes

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool,
                 properties: EncodedProperties | None, expires: float | None,
                 publisher: Session | None) -> bool:
        """Send to every matching session (True if there was one); QoS 0 copies are
        encoded once for all the clients they are the same bytes for."""
        targets = self.tree.match(topic, publisher)
        if not targets:
            return False
        shared: dict[tuple[bool, bool], bytes] = {}
        for session, options in targets.items():
            effective = min(qos, options & 3)
            kept = retain and options & RETAIN_AS_PUBLISHED != 0
            client = session.client
            if effective or client is None or options >> _SUB_ID_SHIFT or \
                    (client.v5 and (client.alias_max_out or expires is not None)):
                self._deliver(session, topic, payload, effective, kept, properties,
                              expires, options)
                continue
            key = (client.v5, kept)
            encoded = shared.get(key)
            if encoded is None:
                encoded = shared[key] = self.codec.encode(Publish(
                    topic, payload, 0, kept, properties=(
                        {} if properties is None else properties) if client.v5 else None))
            if client.max_packet is not None and len(encoded) > client.max_packet:
                self.too_large += 1
                continue
            self.sent += 1
            self._send(client, encoded)
        return True

    def _deliver(self, session: Session, topic: str, payload: bytes, qos: int,
                 retain: bool, properties: EncodedProperties | None, expires: float | None,
                 options: int) -> None:
        client = session.client
        if expires is not None and expires <= time.monotonic():
            self.expired += 1
            return
        message = Outgoing(topic, payload, qos, retain, properties, expires, options)
        if qos == 0:
            if client is not None:
                self._send_publish(client, message)
            return
        if client is not None and not session.queue and len(session.inflight) < client.window:
            self._send_inflight(session, client, message)
        elif len(session.queue) < self.max_queued:
            session.queue.append(message)
        else:
            self._drop(session)

    def _fill_window(self, session: Session) -> None:
        """Send queued messages, in order, while the client's window has room; those
        whose expiry interval passed while they waited are dropped."""
        client = session.client
        if client is None:
            return
        queue, inflight, limit = session.queue, session.inflight, client.window
        now = time.monotonic()
        while queue and len(inflight) < limit:
            message = queue.popleft()
            if message.expires is not None and message.expires <= now:
                self.expired += 1
                continue
            self._send_inflight(session, client, message)

    def _send_inflight(self, session: Session, client: Client, message: Outgoing) -> None:
        packet_id = session.next_packet_id()
        message.packet_id = packet_id
        session.inflight[packet_id] = message
        if not self._send_publish(client, message):
            del session.inflight[packet_id]  # too large for the client: as if delivered
        message.dup = True  # a later resend of it is one (3.3.1.1)

    def _send_publish(self, client: Client, message: Outgoing) -> bool:
        """Encode ``message`` for the client's version (properties, the expiry interval
        left, identifiers, a topic alias) and send it; False if it is over the
        client's Maximum Packet Size (then not sent)."""
        if not client.v5:
            packet = Publish(message.topic, message.payload, message.qos, message.retain,
                             message.dup, message.packet_id)
            encoded = self.codec.encode(packet)
        else:
            props: dict[str, Any] = {}  # what differs by client, on what all share
            if message.expires is not None:
                props["message_expiry_interval"] = max(
                    0, math.ceil(message.expires - time.monotonic()))
            ids = subscription_ids(message.options)
            if ids:
                props["subscription_identifier"] = ids
            topic = message.topic
            aliases = client.aliases_out
            alias = aliases.get(topic)
            new_alias = False
            if alias is not None:
                topic = ""
                props["topic_alias"] = alias
            elif len(aliases) < client.alias_max_out:
                alias = aliases[topic] = len(aliases) + 1
                props["topic_alias"] = alias
                new_alias = True
            base = message.properties
            encoded = self.codec.encode(Publish(
                topic, message.payload, message.qos, message.retain, message.dup,
                message.packet_id, props if base is None else
                encode_properties(props, Publish.packet_type, base=base) if props else base))
            if client.max_packet is not None and len(encoded) > client.max_packet and \
                    new_alias:
                del aliases[message.topic]  # not sent: the client never learns it
        if client.max_packet is not None and len(encoded) > client.max_packet:
            self.too_large += 1
            return False
        self.sent += 1
        self._send(client, encoded)
        return True

    def _drop(self, session: Session) -> None:
        """A message found the queue full: count it; warn now and then."""
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
            pass  # closing: QoS 1 and 2 stay in flight for a persistent session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--loops", type=int, default=1)
    # 256 KiB: what one packet costs the loop (decoding a SUBSCRIBE of 65,000 filters,
    # walking them) stays in the tens of ms; mosquitto allows up to 256 MiB.
    parser.add_argument("--max-packet-size", type=int, default=256 << 10)
    parser.add_argument("--max-inflight", type=int, default=MAX_INFLIGHT,
                        help="QoS 1 and 2 messages sent and unacknowledged per client "
                             "(1..65535)")
    parser.add_argument("--max-queued", type=int, default=MAX_QUEUED,
                        help="QoS 1 and 2 messages queued per client behind its window or "
                             "while it is away; newer ones are dropped (0: no queue)")
    parser.add_argument("--max-topic-levels", type=int, default=MAX_TOPIC_LEVELS,
                        help="levels of a topic name or filter, at most")
    parser.add_argument("--max-subscription-levels", type=int,
                        default=MAX_SUBSCRIPTION_LEVELS,
                        help="levels of one client's topic filters, summed, at most")
    parser.add_argument("--max-retained-visits", type=int, default=MAX_RETAINED_VISITS,
                        help="retained-tree nodes one SUBSCRIBE may visit looking up "
                             "retained messages; past it the rest are not sent")
    parser.add_argument("--receive-maximum", type=int, default=RECEIVE_MAXIMUM,
                        help="MQTT 5.0: QoS 2 messages of a client awaiting PUBREL, at "
                             "most (1..65535)")
    parser.add_argument("--topic-alias-maximum", type=int, default=TOPIC_ALIAS_MAXIMUM,
                        help="MQTT 5.0: topic aliases a client may set (0..65535)")
    parser.add_argument("--max-keep-alive", type=int, default=MAX_KEEP_ALIVE,
                        help="MQTT 5.0: the longest keep-alive granted, in seconds")
    parser.add_argument("--max-session-expiry", type=int, default=MAX_SESSION_EXPIRY,
                        help="seconds a session outlives its connection, at most: a longer "
                             f"Session Expiry Interval is lowered to it ({NEVER}: no limit)")
    parser.add_argument("--max-sessions", type=int, default=MAX_SESSIONS,
                        help="sessions that outlive their connection stored at once, of "
                             "connected clients or not; a CONNECT that would add one more "
                             "is refused")
    parser.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS,
                        help="connections open at once; more are accepted and closed at "
                             "once (0: none; the clean sessions they hold end with them)")
    parser.add_argument("--sys-interval", type=float, default=SYS_INTERVAL,
                        help="seconds between publications of $SYS/broker/ (0: none)")
    parser.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT,
                        help="seconds a connection may take to send CONNECT; then it is "
                             "closed")
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
                        max_retained_visits=args.max_retained_visits,
                        receive_maximum=args.receive_maximum,
                        topic_alias_maximum=args.topic_alias_maximum,
                        max_keep_alive=args.max_keep_alive,
                        max_session_expiry=args.max_session_expiry,
                        max_sessions=args.max_sessions,
                        sys_interval=args.sys_interval,
                        connect_timeout=args.connect_timeout)
    except ValueError as exc:
        parser.error(str(exc))
    if args.max_connections < 0:
        parser.error("max_connections must be >= 0")
    server = gevwire.Server(broker, address=f"{args.host}:{args.port}", loops=args.loops,
                            codec=codec, on_start=broker.start,
                            max_connections=args.max_connections,
                            **ssl_server_options(parser, args))

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
             "%d SUBSCRIBEs' retained messages cut short, %d CONNECTs refused at "
             "max_sessions", len(broker.sessions), len(broker.retained), broker.dropped,
             broker.retained_cut_by_queue + broker.retained_cut_by_visits,
             broker.refused_sessions)


if __name__ == "__main__":
    main()
