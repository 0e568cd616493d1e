"""An in-memory Redis server (RESP2) that redis-py, redis-cli and redis-benchmark talk to.

Strings: ``GET``, ``SET`` (``EX`` / ``PX`` / ``EXAT`` / ``PXAT`` / ``KEEPTTL``, ``NX`` /
``XX``, ``GET``), ``MGET``, ``MSET``, ``INCR``, ``DECR``, ``INCRBY``, ``DECRBY``.  Keys:
``DEL``, ``EXISTS``, ``EXPIRE``, ``PEXPIRE``, ``TTL``, ``PTTL``, ``PERSIST``, ``KEYS``
(Redis glob patterns), ``TYPE``, ``DBSIZE``, ``FLUSHALL``, ``FLUSHDB``.  Lists (so that
``WRONGTYPE`` means something): ``LPUSH``, ``RPUSH``, ``LPOP``, ``RPOP``, ``LLEN``,
``LRANGE``.  Connection: ``PING``, ``ECHO``, ``QUIT``, ``SELECT 0``, ``HELLO`` (protocol
2 only: ``HELLO 3`` is refused with ``NOPROTO``, as a RESP2-only server does, and
clients stay on RESP2), ``CLIENT`` (``SETNAME``, ``GETNAME``, ``SETINFO``, ``ID``),
``COMMAND`` (``COUNT``, ``INFO``, ``DOCS``, ``LIST``), ``CONFIG GET``, ``INFO``.
Error replies are Redis's, word for word.  The glob patterns of ``KEYS`` and ``CONFIG GET``
are matched by :func:`glob_match`, which reads the pattern in place, with one backtrack
point: no regex, so no exponential cases and no compile step for a huge pattern.  Redis
matches them in C with no size limit; here, in Python, one request must not stall the
loop, so the patterns of one command may total ``max_pattern_bytes`` (64 KiB) and a
``CONFIG GET`` may carry ``max_config_patterns`` (1024): at both limits the costliest
shapes found take under 20 ms (8 MiB took up to a second).  Past either, the command gets
an ``ERR`` reply that says the limit (this server's own), and the connection stays open.
Matching is still up to pattern length times key length in Python (keys, made with
``SET``, may be long too), so the matching work of one command is counted, in steps
(a byte compared, a ``*``, a part sought; the parts of a pattern between two ``*`` that
are plain bytes are found at C speed, with ``bytes.find``), and bounded by
``max_glob_steps`` (200,000, ~40 ms at worst; each key's first 16 steps, its share of
the scan, are not counted): past it, the matching stops and the command gets ``-ERR glob
pattern too costly to match: over 200000 steps, the limit per KEYS`` (this server's own),
and the connection stays open.

The codec is ``gevwire.codecs.resp.resp(commands=True)``: every frame is a command as
a list of ``bytes``.  The command logic (:class:`RedisStore`) knows nothing of sockets;
:class:`RedisHandler` runs it for each frame and returns the reply for the codec to
encode.  A protocol error gets ``-ERR Protocol error: ...`` and the connection closes,
as in Redis.  Keys expire lazily on access and, in the background, from a heap of
deadlines every 100 ms.

    python examples/redis_server.py --port 6380      # --port 0 picks a free port
    python examples/redis_server.py --max-pattern-bytes 65536 --max-config-patterns 1024 \
        --max-glob-steps 200000
    redis-cli -p 6380 set greeting hello
    redis-benchmark -p 6380 -t ping,set,get -P 16 -q

The server prints ``listening on HOST:PORT`` on stdout once it accepts connections, and
stops cleanly on SIGTERM / SIGINT (exit status 0).  With ``--loops`` above 1, commands
run in several threads and the store takes a lock around each one.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

import gevwire
from gevwire.cli import add_ssl_arguments, ssl_server_options
from gevwire.codecs.resp import (
    NULL_ARRAY,
    NULL_BULK,
    RawResp,
    RespCodec,
    RespError,
    SimpleString,
    resp,
)

log = logging.getLogger("redis_server")

Args = list[bytes]
Value = bytes | deque[bytes]

OK = RawResp(b"+OK\r\n")
PONG = RawResp(b"+PONG\r\n")
WRONGTYPE = RespError("WRONGTYPE Operation against a key holding the wrong kind of value")
NOT_INTEGER = RespError("ERR value is not an integer or out of range")
SYNTAX = RespError("ERR syntax error")
OVERFLOW = RespError("ERR increment or decrement would overflow")
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
VERSION = "7.0.0"
#: What the glob patterns of one KEYS or CONFIG GET may total, in bytes.  Measured on two
#: cores: the costliest KEYS pattern of this size (one class of escaped ranges) takes
#: ~8 ms, the costliest CONFIG GET (1024 patterns like ``*[^a]*[^a]...``) ~20 ms.
MAX_PATTERN_BYTES = 64 << 10
#: How many patterns one CONFIG GET may carry: each costs microseconds however short (an
#: empty one too), so their bytes alone do not bound a command's cost.
MAX_CONFIG_PATTERNS = 1024
#: The steps the glob matching of one KEYS or CONFIG GET may take in Python (a byte
#: compared, a ``*``, a part sought; see :func:`glob_match`), beyond the first 16 for each
#: key: what long keys and patterns cost (pattern length times key length at worst).
#: Measured on two cores: one step takes up to ~195 ns (``*[a]...`` against ``a...``),
#: so a command that spends the budget took ~40 ms.
MAX_GLOB_STEPS = 200_000


class Client(Protocol):
    """What a command sees of its connection: ``context`` holds its :class:`Session`."""

    context: Any

    def close(self) -> None:
        """Close after the reply (QUIT)."""


@dataclass
class Session:
    """Per-connection state: what ``CLIENT`` sets and reads."""

    id: int
    name: bytes = b""
    info: dict[bytes, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Command:
    """A command's implementation and its ``COMMAND INFO`` metadata."""

    name: str
    run: Callable[[RedisStore, Args, Client], Any]
    arity: int  # Redis's: exact argument count (name included), or minus the minimum
    flags: tuple[str, ...]
    first_key: int = 0
    last_key: int = 0
    step: int = 0
    categories: tuple[str, ...] = ()

    def info(self) -> list[Any]:
        """The ``COMMAND INFO`` entry (Redis 7's ten fields)."""
        return [self.name, self.arity, [SimpleString(f) for f in self.flags],
                self.first_key, self.last_key, self.step,
                [SimpleString(c) for c in self.categories], [], [], []]


def parse_int64(data: bytes) -> int | None:
    """``data`` as a signed 64-bit integer in canonical form (as Redis's string2ll:
    no sign but ``-``, no leading zeros or spaces), else None."""
    if data.isdigit():
        if (data[0] == 48 and len(data) > 1) or len(data) > 19:
            return None
        value = int(data)
    elif data[:1] == b"-" and data[1:].isdigit() and data[1] != 48 and len(data) <= 20:
        value = -int(data[1:])
    else:
        return None
    return value if INT64_MIN <= value <= INT64_MAX else None


# -- glob patterns ---------------------------------------------------------------------------
# KEYS and CONFIG GET take Redis glob patterns from the client.  They are matched by reading
# the pattern itself, with no translation into a regex (whose backtracking went
# exponential on ``*a*a*a...b``, and whose compiling of a pattern of megabytes took seconds
# and hundreds of MiB).  Every token but ``*`` matches exactly one byte, so when a token
# fails the only choice worth revisiting is how much the last ``*`` took: one backtrack
# point, at most len(key) + 1 tries of what follows it, O(len(pattern) * len(key)) at
# worst.  An earlier ``*`` never needs revisiting: giving it more bytes only shifts the
# later one's start to where it could have started anyway.  After the last ``*`` the rest
# matches a fixed number of bytes, so it is tried once, against the end of the key.

_STAR, _QUESTION, _OPEN, _CLOSE, _BACKSLASH, _CARET, _DASH = b"*?[]\\^-"
_STARS = b"*" * 256
_ALL_BYTES = (1 << 256) - 1
_SPANS_KEPT = 4096  # what a match remembers of a pattern, whatever it cost to find...
_LONG_SPAN = 256  # ...and beyond that, what took reading at least this many bytes

_FREE_STEPS = 16  # the steps of each match not charged to a budget: a key's own cost
_STAR_STEPS = 5  # what a '*' counts for (the time of ~5 bytes compared, measured)
_UNLIMITED = 1 << 62

#: What matching remembers of one pattern, from key to key: at the position ``p`` of a
#: ``[`` or of a run of ``*``, ``(the class's bytes as a 256-bit int (0 for stars), the
#: position after it)``; at ``~p`` for the position ``p`` after a run of ``*``, ``(how
#: many bytes the rest matches (-1: a ``*`` follows), 1 if exact or 0 if a lower bound)``;
#: at that ``p`` if no ``[`` or ``?`` is there, ``(the bytes up to the next ``*`` if they
#: are literal (escapes resolved), else None; the position of that ``*``)``.
Spans = dict[int, tuple[Any, int]]


class GlobTooCostly(Exception):
    """Raised by :func:`glob_match` when the budget of a command's matching runs out."""


class GlobBudget:
    """The steps (see :func:`glob_match`) that the matching of one command may still take;
    :meth:`charge` raises :class:`GlobTooCostly` once they are spent."""

    __slots__ = ("left", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def charge(self, steps: int) -> None:
        self.left -= steps
        if self.left < 0:
            raise GlobTooCostly


def is_glob_literal(pattern: bytes) -> bool:
    """Whether ``pattern`` matches only itself (it has no ``*``, ``?``, ``[`` or ``\\``)."""
    return not (_STAR in pattern or _QUESTION in pattern or _OPEN in pattern
                or _BACKSLASH in pattern)


def glob_match(pattern: bytes, key: bytes, spans: Spans | None = None,
               budget: GlobBudget | None = None) -> bool:
    """Whether ``key`` matches the Redis glob ``pattern``: ``*`` (any bytes), ``?`` (one
    byte), ``[abc]``, ``[^abc]``, ``[a-z]`` (a class of one byte; ``\\`` escapes in it;
    a ``-`` before ``]`` is itself; ``[]`` matches nothing, ``[^]`` any byte, a class
    left open ends with the pattern), ``\\x`` (``x`` itself; a trailing ``\\`` is
    itself).

    Nothing is built from the pattern but the bytes of its literal parts: it is read in
    place, and what was costly to find in it (where a long class or run of ``*`` ends,
    what a class holds, how many bytes the part after the last ``*`` takes, which part
    between two ``*`` is plain bytes, and which) is remembered in ``spans``, so that it
    is read once, not once per position of every key: pass one dict for all the keys
    matched against one pattern.  It holds at most ``_SPANS_KEPT`` entries plus three
    per ``_LONG_SPAN`` bytes of pattern (one of each kind, each for bytes read to find
    it), and literal parts of at most the pattern's size in all.

    With ``budget``, the steps this match takes in Python beyond the first
    ``_FREE_STEPS`` are charged to it (see :class:`GlobBudget`); past what it has left,
    :class:`GlobTooCostly` is raised, in the middle of the match if need be.
    """
    if spans is None:
        spans = {}
    if budget is None:
        return _glob_match(pattern, key, spans, _UNLIMITED)[0]
    matched, steps = _glob_match(pattern, key, spans, budget.left + _FREE_STEPS)
    if steps > _FREE_STEPS:
        budget.charge(steps - _FREE_STEPS)
    return matched


def _glob_match(pattern: bytes, key: bytes, spans: Spans, allowance: int
                ) -> tuple[bool, int]:
    """``glob_match``: (whether ``key`` matches, the steps that took), raising
    :class:`GlobTooCostly` once past ``allowance`` steps.  A step is a turn of the loop,
    one token against one byte; a ``*`` counts for ``_STAR_STEPS``, and ``_STAR_STEPS``
    more and one per byte when the literal part after it is read (not found in
    ``spans``), a class read for 2 more and one per 2 of its bytes (a long one, read
    once, for ``_LONG_SPAN`` bytes at most)."""
    n = len(pattern)
    size = len(key)
    p = k = 0
    steps = 0
    resume_p = -1  # the pattern position after the last '*' seen (-1: none to revisit)
    resume_k = 0  # the key position from which what follows that '*' was last tried
    while k < size:
        steps += 1
        if p < n:
            token = pattern[p]
            if token == _STAR:
                steps += _STAR_STEPS - 1  # lookups and calls: it costs several steps
                if steps > allowance:
                    raise GlobTooCostly
                p += 1
                if p < n and pattern[p] == _STAR:
                    p = _stars_end(pattern, p - 1, spans)
                if p == n:
                    return True, steps  # a '*' at the end takes the rest of the key
                known = spans.get(~p)
                if known is not None and (known[1] or known[0] > size - k):
                    width = known[0]
                else:
                    width = _tail_width(pattern, p, size - k, spans)
                if width < 0:  # more '*' to come: try from here, then further on
                    token = pattern[p]
                    if token != _QUESTION and token != _OPEN:
                        span = spans.get(p)
                        if span is None:  # read (again): steps for its bytes
                            span = _literal_at(pattern, p, spans)
                            steps += _STAR_STEPS + min(span[1] - p, _LONG_SPAN)
                        literal, end = span
                        if literal is not None:
                            # Plain bytes up to the next '*': their first occurrence, at
                            # C speed (a later one would leave less for the rest).
                            k = key.find(literal, k)
                            if k < 0:
                                return False, steps
                            k += len(literal)
                            p = end
                            resume_p = -1
                            continue
                    resume_p, resume_k = p, k
                elif width > size - k:
                    return False, steps
                else:  # the last '*': what follows can only match the end of the key
                    resume_p = -1
                    k = size - width
                continue
            byte = key[k]
            if token == _QUESTION:
                p += 1
                k += 1
                continue
            if token == _OPEN:
                span = spans.get(p)
                if span is None:  # read (again: not remembered), a step per 2 bytes
                    span = _class_at(pattern, p, spans)
                    steps += 2 + min(span[1] - p, _LONG_SPAN) // 2
                members, end = span
                if members >> byte & 1:
                    p = end
                    k += 1
                    continue
            elif token == _BACKSLASH and p + 1 < n:
                if pattern[p + 1] == byte:
                    p += 2
                    k += 1
                    continue
            elif token == byte:
                p += 1
                k += 1
                continue
        # A mismatch, or pattern left over: the last '*' takes one more byte.
        if resume_p < 0:
            return False, steps
        if steps > allowance:
            raise GlobTooCostly
        resume_k += 1
        token = pattern[resume_p]
        if token != _QUESTION and token != _OPEN and token != _BACKSLASH:
            # What follows the '*' starts with a plain byte: skip to its next occurrence.
            resume_k = key.find(token, resume_k)
            if resume_k < 0:
                return False, steps
        p, k = resume_p, resume_k
    # The key is used up (more of it for a '*' would leave less for the rest): what is
    # left of the pattern must be stars.
    return p == n or (pattern[p] == _STAR and _stars_end(pattern, p, spans) == n), steps


def glob_matcher(pattern: bytes, budget: GlobBudget | None = None
                 ) -> Callable[[bytes], bool]:
    """``glob_match`` with ``pattern`` (and ``budget``), for many keys.  A short pattern of
    plain bytes and ``*`` (the usual ``prefix*``, ``*part*``) is matched at C speed with
    bytes methods: its parts in order, the first at the start and the last at the end (a
    step for each part sought in between)."""
    if len(pattern) <= 1024 and not (_QUESTION in pattern or _OPEN in pattern
                                     or _BACKSLASH in pattern):
        parts = pattern.split(b"*")
        if len(parts) == 1:
            return pattern.__eq__
        head, tail = parts[0], parts[-1]
        middle = [part for part in parts[1:-1] if part]
        least = len(head) + len(tail) + sum(map(len, middle))

        def match_parts(key: bytes) -> bool:
            if len(key) < least or not key.startswith(head) or not key.endswith(tail):
                return False
            at, end = len(head), len(key) - len(tail)
            steps = 0
            for steps, part in enumerate(middle, 1):  # noqa: B007 (read after the loop)
                at = key.find(part, at, end)
                if at < 0:
                    break
                at += len(part)
            if steps > _FREE_STEPS and budget is not None:
                budget.charge(steps - _FREE_STEPS)
            return at >= 0

        return match_parts
    spans: Spans = {}
    return lambda key: glob_match(pattern, key, spans, budget)


def _remember(spans: Spans, at: int, span: tuple[Any, int], cost: int) -> None:
    if len(spans) < _SPANS_KEPT or cost >= _LONG_SPAN:
        spans[at] = span


def _stars_end(pattern: bytes, p: int, spans: Spans) -> int:
    """The position after the run of ``*`` at ``p`` (a run counts as one ``*``)."""
    known = spans.get(p)
    if known is not None:
        return known[1]
    i = p + 1
    while pattern.startswith(_STARS, i):
        i += len(_STARS)
    n = len(pattern)
    while i < n and pattern[i] == _STAR:
        i += 1
    if i - p > 8:
        _remember(spans, p, (0, i), i - p)
    return i


def _class_at(pattern: bytes, p: int, spans: Spans) -> tuple[int, int]:
    """The class opened by the ``[`` at ``p``: (its bytes as a 256-bit int, its end)."""
    n = len(pattern)
    i = p + 1
    negate = i < n and pattern[i] == _CARET
    if negate:
        i += 1
    members = 0
    plain = 0  # plain bytes in a row
    next_close = next_escape = next_dash = -1  # searched again only once passed
    while i < n:
        token = pattern[i]
        if token == _CLOSE:
            break
        if token == _BACKSLASH and i + 1 < n:
            members |= 1 << pattern[i + 1]
            i += 2
            plain = 0
        elif i + 2 < n and pattern[i + 1] == _DASH and pattern[i + 2] != _CLOSE:
            low, high = token, pattern[i + 2]
            if low > high:
                low, high = high, low
            members |= ((2 << (high - low)) - 1) << low
            i += 3
            plain = 0
        else:
            members |= 1 << token
            i += 1
            plain += 1
            if plain >= 16:
                # A long run of plain bytes: the rest of it, up to the byte before the
                # next ']', backslash or '-' (which may start a range), at C speed.
                if next_close < i:
                    next_close = _find(pattern, _CLOSE, i)
                if next_escape < i:
                    next_escape = _find(pattern, _BACKSLASH, i)
                if next_dash < i:
                    next_dash = _find(pattern, _DASH, i)
                stop = min(next_close, next_escape, next_dash) - 1
                if stop > i:
                    for byte in set(memoryview(pattern)[i:stop]):
                        members |= 1 << byte
                    i = stop
                plain = 0
    if negate:
        members ^= _ALL_BYTES
    span = (members, i + 1 if i < n else n)
    _remember(spans, p, span, span[1] - p)
    return span


def _literal_at(pattern: bytes, p: int, spans: Spans) -> tuple[bytes | None, int]:
    """The part of the pattern from ``p`` to the next ``*`` (not escaped) as the bytes it
    matches if it is plain bytes and escapes, and the position of that ``*``; else (None,
    where reading stopped).  Read once: the next ``*`` and backslash are searched again
    only once passed."""
    star = pattern.find(_STAR, p)
    if star >= 0:  # the usual case at once: no backslash (nor '?' nor '[') before it
        plain = pattern[p:star]
        if not (_BACKSLASH in plain or _QUESTION in plain or _OPEN in plain):
            _remember(spans, p, (plain, star), star - p)
            return plain, star
    n = len(pattern)
    literal = bytearray()
    i = p
    next_star = next_escape = -1
    found: tuple[bytes | None, int] = (None, 0)
    while i < n:
        if next_star < i:
            next_star = _find(pattern, _STAR, i)
        if next_escape < i:
            next_escape = _find(pattern, _BACKSLASH, i)
        stop = min(next_star, next_escape)
        plain = pattern[i:stop]
        if _QUESTION in plain or _OPEN in plain or stop == n:
            break  # a token of its own, or no '*' follows: not a literal part
        literal += plain
        if stop == next_star:
            found = (bytes(literal), stop)
            break
        if stop + 1 == n:
            break  # a trailing backslash: no '*' follows
        literal.append(pattern[stop + 1])
        i = stop + 2
    if found[0] is None:
        found = (None, i)
    _remember(spans, p, found, i - p)
    return found


def _tail_width(pattern: bytes, p: int, limit: int, spans: Spans) -> int:
    """How many bytes the pattern from ``p`` on matches if no ``*`` follows (then it
    takes a fixed number), -1 if one does (as a token or not); once over ``limit``, any
    width over it."""
    n = len(pattern)
    if ~p not in spans:
        star = pattern.find(_STAR, p)
        if star >= 0:
            _remember(spans, ~p, (-1, 1), star - p)
            return -1
    width = 0
    i = p
    next_open = next_escape = -1  # searched again only once passed
    while i < n and width <= limit:
        token = pattern[i]
        if token == _OPEN:
            i = (spans.get(i) or _class_at(pattern, i, spans))[1]
            width += 1
        elif token == _BACKSLASH and i + 1 < n:
            i += 2
            width += 1
        else:  # one byte each up to the next '[' or backslash
            if next_open < i:
                next_open = _find(pattern, _OPEN, i)
            if next_escape < i:
                next_escape = _find(pattern, _BACKSLASH, i)
            stop = max(min(next_open, next_escape), i + 1)
            width += stop - i
            i = stop
    _remember(spans, ~p, (width, int(i >= n)), i - p)
    return width


def _find(pattern: bytes, byte: int, start: int) -> int:
    """The position of the next ``byte`` from ``start`` on, or the pattern's length."""
    found = pattern.find(byte, start)
    return found if found >= 0 else len(pattern)


def wrong_arity(name: str) -> RespError:
    return RespError(f"ERR wrong number of arguments for '{name}' command")


def _quoted(arg: bytes) -> str:
    return "'" + arg[:128].decode("utf-8", "replace") + "'"


class RedisStore:
    """The keyspace and the commands; no sockets (see :class:`RedisHandler`).

    ``execute(client, args)`` returns a value for the RESP codec: bytes, ``None``,
    ints, lists, :class:`SimpleString`, :class:`RespError`, or pre-encoded ``RawResp``.
    Its signature is a handler's ``on_message`` (``client`` is the connection).

    ``max_pattern_bytes``: what the glob patterns of one ``KEYS`` or ``CONFIG GET`` may
    total; ``max_config_patterns``: how many one ``CONFIG GET`` may carry.  Past either,
    the command gets an ``ERR`` reply (see :meth:`check_patterns`).  ``max_glob_steps``:
    the matching work one of them may do (see :data:`MAX_GLOB_STEPS`); once past it, the
    matching stops and the command gets an ``ERR`` reply (see :meth:`too_costly`).
    """

    def __init__(self, *, locked: bool = False, max_pattern_bytes: int = MAX_PATTERN_BYTES,
                 max_config_patterns: int = MAX_CONFIG_PATTERNS,
                 max_glob_steps: int = MAX_GLOB_STEPS) -> None:
        if max_pattern_bytes < 1:
            raise ValueError("max_pattern_bytes must be >= 1")
        if max_config_patterns < 1:
            raise ValueError("max_config_patterns must be >= 1")
        if max_glob_steps < 1:
            raise ValueError("max_glob_steps must be >= 1")
        self.max_pattern_bytes = max_pattern_bytes
        self.max_config_patterns = max_config_patterns
        self.max_glob_steps = max_glob_steps
        self.data: dict[bytes, Value] = {}
        self.expires: dict[bytes, int] = {}  # key -> deadline, ms since the epoch
        self._deadlines: list[tuple[int, bytes]] = []  # heap; may hold stale entries
        self._ids = itertools.count(1)
        self._lock = threading.Lock() if locked else None
        self.commands: dict[bytes, Command] = {}
        for command in COMMANDS:
            self.commands[command.name.upper().encode()] = command
        # Lookup by the name as sent: filled on first use of each spelling (bounded).
        self._by_spelling: dict[bytes, tuple[Callable[[RedisStore, Args, Client], Any],
                                             int, int, str]] = {}
        if locked:
            unlocked = self.execute
            lock = self._lock
            assert lock is not None

            def execute(client: Client, args: Args) -> Any:
                with lock:
                    return unlocked(client, args)

            self.execute = execute  # type: ignore[method-assign]

    def new_session(self) -> Session:
        return Session(next(self._ids))

    def check_patterns(self, args: Args, first: int, command: str) -> RespError | None:
        """The error for ``command``'s glob patterns (``args[first:]``) if they are past
        the limits (too many, or too many bytes in all), else None: checked before any is
        matched, and without copying ``args``."""
        count = len(args) - first
        if count > self.max_config_patterns:
            return RespError(f"ERR too many patterns: {count}, the limit is "
                             f"{self.max_config_patterns} per {command}")
        total = sum(map(len, itertools.islice(args, first, None)))
        if total > self.max_pattern_bytes:
            return RespError(f"ERR glob pattern too long: {total} bytes, the limit is "
                             f"{self.max_pattern_bytes} bytes per {command}")
        return None

    def glob_budget(self) -> GlobBudget:
        """The budget of one command's glob matching: ``max_glob_steps``."""
        return GlobBudget(self.max_glob_steps)

    def too_costly(self, command: str) -> RespError:
        """The error for a ``command`` whose glob matching ran out of its budget."""
        return RespError(f"ERR glob pattern too costly to match: over {self.max_glob_steps} "
                         f"steps, the limit per {command}")

    # -- dispatch ------------------------------------------------------------------------

    def execute(self, client: Client, args: Args) -> Any:
        """Run one command (``args[0]`` is its name) for ``client``; return the reply."""
        found = self._by_spelling.get(args[0])
        if found is None:
            found = self._resolve(args[0])
            if found is None:
                rest = " ".join(_quoted(a) for a in args[1:])
                name = args[0][:128].decode("utf-8", "replace")
                return RespError(f"ERR unknown command '{name}', with args beginning with: "
                                 + (rest + " " if rest else ""))
        run, low, high, name = found
        if not low <= len(args) <= high:
            return wrong_arity(name)
        return run(self, args, client)

    def _resolve(self, spelling: bytes) -> tuple[Callable[[RedisStore, Args, Client], Any],
                                                 int, int, str] | None:
        command = self.commands.get(spelling.upper())
        if command is None:
            return None
        arity = command.arity
        found = (command.run, abs(arity), arity if arity > 0 else 1 << 30, command.name)
        if len(self._by_spelling) < 4096:
            self._by_spelling[spelling] = found
        return found

    # -- the keyspace ------------------------------------------------------------------

    @staticmethod
    def now_ms() -> int:
        return time.time_ns() // 1_000_000

    def lookup(self, key: bytes) -> Value | None:
        """The live value of ``key`` (an expired key is deleted first)."""
        value = self.data.get(key)
        if value is not None and self.expires:
            deadline = self.expires.get(key)
            if deadline is not None and deadline <= self.now_ms():
                del self.data[key]
                del self.expires[key]
                return None
        return value

    def delete(self, key: bytes) -> bool:
        if self.lookup(key) is None:
            return False
        del self.data[key]
        self.expires.pop(key, None)
        return True

    def set_deadline(self, key: bytes, deadline: int) -> None:
        self.expires[key] = deadline
        heapq.heappush(self._deadlines, (deadline, key))

    def expire_due(self, budget: int = 1000) -> int:
        """Delete up to ``budget`` expired keys (the background expiry); returns how many."""
        if self._lock is not None:
            with self._lock:
                return self._expire_due(budget)
        return self._expire_due(budget)

    def _expire_due(self, budget: int) -> int:
        heap = self._deadlines
        if len(heap) > 2 * len(self.expires) + 1024:  # mostly stale: rebuild
            heap[:] = [(d, k) for k, d in self.expires.items()]
            heapq.heapify(heap)
        now = self.now_ms()
        removed = 0
        while heap and heap[0][0] <= now and budget:
            deadline, key = heapq.heappop(heap)
            budget -= 1
            if self.expires.get(key) == deadline:
                del self.expires[key]
                del self.data[key]
                removed += 1
        return removed

    def flush(self) -> None:
        self.data.clear()
        self.expires.clear()
        self._deadlines.clear()

    def string(self, key: bytes) -> bytes | RespError | None:
        value = self.lookup(key)
        if value is None or type(value) is bytes:
            return value
        return WRONGTYPE

    def list_at(self, key: bytes, create: bool = False) -> deque[bytes] | RespError | None:
        value = self.lookup(key)
        if value is None:
            if not create:
                return None
            value = self.data[key] = deque()
        if type(value) is deque:
            return value
        return WRONGTYPE


# -- commands ----------------------------------------------------------------------------
# Each takes (store, args, client); args[0] is the command name as sent.


def cmd_ping(store: RedisStore, args: Args, client: Client) -> Any:
    return PONG if len(args) == 1 else args[1]


def cmd_echo(store: RedisStore, args: Args, client: Client) -> Any:
    return args[1]


def cmd_quit(store: RedisStore, args: Args, client: Client) -> Any:
    client.close()
    return OK


def cmd_get(store: RedisStore, args: Args, client: Client) -> Any:
    value = store.data.get(args[1])
    if type(value) is bytes and not store.expires:
        return value
    found = store.string(args[1])
    return NULL_BULK if found is None else found


def cmd_set(store: RedisStore, args: Args, client: Client) -> Any:
    key = args[1]
    if len(args) == 3:
        store.data[key] = args[2]
        if store.expires:
            store.expires.pop(key, None)
        return OK
    condition = b""
    expiry = b""
    deadline = 0
    keep_ttl = get = False
    i = 3
    while i < len(args):
        option = args[i].upper()
        if option in (b"NX", b"XX") and not condition:
            condition = option
        elif option == b"GET" and not get:
            get = True
        elif option == b"KEEPTTL" and not expiry:
            keep_ttl = True
        elif option in (b"EX", b"PX", b"EXAT", b"PXAT") and not expiry and not keep_ttl \
                and i + 1 < len(args):
            expiry = option
            i += 1
            amount = parse_int64(args[i])
            if amount is None:
                return NOT_INTEGER
            if amount <= 0:
                return RespError("ERR invalid expire time in 'set' command")
            unit = 1000 if option in (b"EX", b"EXAT") else 1
            if amount > INT64_MAX // unit:
                return RespError("ERR invalid expire time in 'set' command")
            deadline = amount * unit + (store.now_ms() if option in (b"EX", b"PX") else 0)
        else:
            return SYNTAX
        i += 1
    old = store.lookup(key)
    if get and old is not None and type(old) is not bytes:
        return WRONGTYPE
    if (condition == b"NX" and old is not None) or (condition == b"XX" and old is None):
        return old if get and old is not None else NULL_BULK
    store.data[key] = args[2]
    if expiry:
        store.set_deadline(key, deadline)
    elif not keep_ttl:
        store.expires.pop(key, None)
    if get:
        return NULL_BULK if old is None else old
    return OK


def cmd_del(store: RedisStore, args: Args, client: Client) -> Any:
    return sum(store.delete(key) for key in args[1:])


def cmd_exists(store: RedisStore, args: Args, client: Client) -> Any:
    return sum(store.lookup(key) is not None for key in args[1:])


def incr_by(store: RedisStore, key: bytes, delta: int) -> Any:
    old = store.lookup(key)
    if old is None:
        current = 0
    elif type(old) is bytes:
        parsed = parse_int64(old)
        if parsed is None:
            return NOT_INTEGER
        current = parsed
    else:
        return WRONGTYPE
    value = current + delta
    if not INT64_MIN <= value <= INT64_MAX:
        return OVERFLOW
    store.data[key] = b"%d" % value
    return value


def cmd_incr(store: RedisStore, args: Args, client: Client) -> Any:
    return incr_by(store, args[1], 1)


def cmd_decr(store: RedisStore, args: Args, client: Client) -> Any:
    return incr_by(store, args[1], -1)


def cmd_incrby(store: RedisStore, args: Args, client: Client) -> Any:
    delta = parse_int64(args[2])
    return NOT_INTEGER if delta is None else incr_by(store, args[1], delta)


def cmd_decrby(store: RedisStore, args: Args, client: Client) -> Any:
    delta = parse_int64(args[2])
    if delta is None or delta == INT64_MIN:
        return NOT_INTEGER if delta is None else RespError("ERR decrement would overflow")
    return incr_by(store, args[1], -delta)


def cmd_mset(store: RedisStore, args: Args, client: Client) -> Any:
    if len(args) % 2 == 0:
        return wrong_arity("mset")
    data = store.data
    expires = store.expires
    for i in range(1, len(args), 2):
        key = args[i]
        data[key] = args[i + 1]
        if expires:
            expires.pop(key, None)
    return OK


def cmd_mget(store: RedisStore, args: Args, client: Client) -> Any:
    values = []
    for key in args[1:]:
        value = store.lookup(key)
        values.append(value if type(value) is bytes else None)
    return values


def expire_generic(store: RedisStore, args: Args, unit: int, name: str) -> Any:
    key = args[1]
    amount = parse_int64(args[2])
    if amount is None:
        return NOT_INTEGER
    if amount > INT64_MAX // unit or amount < INT64_MIN // unit:
        return RespError(f"ERR invalid expire time in '{name}' command")
    flags = {a.upper() for a in args[3:]}
    for option in args[3:]:
        if option.upper() not in (b"NX", b"XX", b"GT", b"LT"):
            return RespError(f"ERR Unsupported option {option.decode('utf-8', 'replace')}")
    if b"NX" in flags and len(flags) > 1:
        return RespError("ERR NX and XX, GT or LT options at the same time are not compatible")
    if b"GT" in flags and b"LT" in flags:
        return RespError("ERR GT and LT options at the same time are not compatible")
    if store.lookup(key) is None:
        return 0
    deadline = store.now_ms() + amount * unit
    current = store.expires.get(key)
    if (b"NX" in flags and current is not None) or (b"XX" in flags and current is None):
        return 0
    if b"GT" in flags and (current is None or deadline <= current):
        return 0
    if b"LT" in flags and current is not None and deadline >= current:
        return 0
    if amount <= 0:
        store.delete(key)
        return 1
    store.set_deadline(key, deadline)
    return 1


def cmd_expire(store: RedisStore, args: Args, client: Client) -> Any:
    return expire_generic(store, args, 1000, "expire")


def cmd_pexpire(store: RedisStore, args: Args, client: Client) -> Any:
    return expire_generic(store, args, 1, "pexpire")


def ttl_ms(store: RedisStore, key: bytes) -> int:
    if store.lookup(key) is None:
        return -2
    deadline = store.expires.get(key)
    if deadline is None:
        return -1
    return max(0, deadline - store.now_ms())


def cmd_ttl(store: RedisStore, args: Args, client: Client) -> Any:
    left = ttl_ms(store, args[1])
    return left if left < 0 else (left + 500) // 1000


def cmd_pttl(store: RedisStore, args: Args, client: Client) -> Any:
    return ttl_ms(store, args[1])


def cmd_persist(store: RedisStore, args: Args, client: Client) -> Any:
    if store.lookup(args[1]) is None:
        return 0
    return int(store.expires.pop(args[1], None) is not None)


def cmd_keys(store: RedisStore, args: Args, client: Client) -> Any:
    pattern = args[1]
    if len(pattern) > store.max_pattern_bytes:
        return store.check_patterns(args, 1, "KEYS")
    if pattern == b"*":
        return [key for key in list(store.data) if store.lookup(key) is not None]
    if is_glob_literal(pattern):  # one key at most: no scan
        return [pattern] if store.lookup(pattern) is not None else []
    match = glob_matcher(pattern, store.glob_budget())
    try:
        return [key for key in list(store.data)
                if match(key) and store.lookup(key) is not None]
    except GlobTooCostly:
        return store.too_costly("KEYS")


def cmd_type(store: RedisStore, args: Args, client: Client) -> Any:
    value = store.lookup(args[1])
    if value is None:
        return SimpleString("none")
    return SimpleString("string" if type(value) is bytes else "list")


def cmd_dbsize(store: RedisStore, args: Args, client: Client) -> Any:
    return len(store.data)


def cmd_flushall(store: RedisStore, args: Args, client: Client) -> Any:
    if len(args) > 2 or (len(args) == 2 and args[1].upper() not in (b"ASYNC", b"SYNC")):
        return SYNTAX
    store.flush()
    return OK


def push(store: RedisStore, args: Args, left: bool) -> Any:
    items = store.list_at(args[1], create=True)
    if not isinstance(items, deque):
        return items
    if left:
        items.extendleft(args[2:])
    else:
        items.extend(args[2:])
    return len(items)


def cmd_lpush(store: RedisStore, args: Args, client: Client) -> Any:
    return push(store, args, left=True)


def cmd_rpush(store: RedisStore, args: Args, client: Client) -> Any:
    return push(store, args, left=False)


def pop(store: RedisStore, args: Args, left: bool) -> Any:
    count: int | None = None
    if len(args) == 3:
        count = parse_int64(args[2])
        if count is None or count < 0:
            return RespError("ERR value is out of range, must be positive")
    items = store.list_at(args[1])
    if items is None:
        return NULL_BULK if count is None else NULL_ARRAY
    if not isinstance(items, deque):
        return items  # WRONGTYPE
    take = items.popleft if left else items.pop
    if count is None:
        value = take()
        popped: Any = value
    else:
        popped = [take() for _ in range(min(count, len(items)))]
    if not items:
        store.delete(args[1])
    return popped


def cmd_lpop(store: RedisStore, args: Args, client: Client) -> Any:
    return pop(store, args, left=True)


def cmd_rpop(store: RedisStore, args: Args, client: Client) -> Any:
    return pop(store, args, left=False)


def cmd_llen(store: RedisStore, args: Args, client: Client) -> Any:
    items = store.list_at(args[1])
    return len(items) if isinstance(items, deque) else (items if items is not None else 0)


def cmd_lrange(store: RedisStore, args: Args, client: Client) -> Any:
    first, last = parse_int64(args[2]), parse_int64(args[3])
    if first is None or last is None:
        return NOT_INTEGER
    items = store.list_at(args[1])
    if not isinstance(items, deque):
        return items if items is not None else []
    size = len(items)
    first = max(first + size if first < 0 else first, 0)
    last = last + size if last < 0 else min(last, size - 1)
    if first > last:
        return []
    return list(itertools.islice(items, first, last + 1))


def cmd_select(store: RedisStore, args: Args, client: Client) -> Any:
    index = parse_int64(args[1])
    if index is None:
        return NOT_INTEGER
    return OK if index == 0 else RespError("ERR DB index is out of range")


def hello_reply(session: Session) -> list[Any]:
    """HELLO's reply: a map, sent flat in RESP2."""
    return ["server", "redis", "version", VERSION, "proto", 2, "id", session.id,
            "mode", "standalone", "role", "master", "modules", []]


def cmd_hello(store: RedisStore, args: Args, client: Client) -> Any:
    session: Session = client.context
    i = 1
    if len(args) > 1:
        version = parse_int64(args[1])
        if version is None:
            return RespError("ERR Protocol version is not an integer or out of range")
        if version != 2:
            return RespError("NOPROTO sorry, this protocol version is not supported.")
        i = 2
    while i < len(args):
        option = args[i].upper()
        if option == b"SETNAME" and i + 1 < len(args):
            session.name = args[i + 1]
            i += 2
        elif option == b"AUTH" and i + 2 < len(args):
            return RespError("WRONGPASS invalid username-password pair or user is disabled.")
        else:
            name = option.decode("utf-8", "replace")
            return RespError(f"ERR Syntax error in HELLO option '{name}'")
    return hello_reply(session)


def unknown_subcommand(args: Args) -> RespError:
    sub = args[1][:128].decode("utf-8", "replace")
    return RespError(f"ERR unknown subcommand '{sub}'. Try {args[0].upper().decode()} HELP.")


def cmd_client(store: RedisStore, args: Args, client: Client) -> Any:
    session: Session = client.context
    sub = args[1].upper()
    if sub == b"SETNAME" and len(args) == 3:
        if any(c <= 32 or c >= 127 for c in args[2]):
            return RespError("ERR Client names cannot contain spaces, newlines or special "
                             "characters.")
        session.name = args[2]
        return OK
    if sub == b"GETNAME" and len(args) == 2:
        return session.name or NULL_BULK
    if sub == b"SETINFO" and len(args) == 4:
        attribute = args[2].upper()
        if attribute not in (b"LIB-NAME", b"LIB-VER"):
            return RespError(f"ERR Unrecognized option '{args[2].decode('utf-8', 'replace')}'")
        session.info[attribute] = args[3]
        return OK
    if sub == b"ID" and len(args) == 2:
        return session.id
    if sub in (b"SETNAME", b"GETNAME", b"SETINFO", b"ID"):
        return wrong_arity("client|" + sub.decode().lower())
    return unknown_subcommand(args)


def cmd_command(store: RedisStore, args: Args, client: Client) -> Any:
    if len(args) == 1:
        return [c.info() for c in store.commands.values()]
    sub = args[1].upper()
    if sub == b"COUNT" and len(args) == 2:
        return len(store.commands)
    if sub == b"LIST":
        return [c.name for c in store.commands.values()]
    if sub == b"INFO":
        names = args[2:] or list(store.commands)
        found = (store.commands.get(name.upper()) for name in names)
        return [c.info() if c is not None else None for c in found]
    if sub == b"DOCS":
        return []  # a map in Redis 7; empty: clients fall back to their own help
    return unknown_subcommand(args)


CONFIG: dict[bytes, bytes] = {b"save": b"", b"appendonly": b"no", b"databases": b"1"}


def cmd_config(store: RedisStore, args: Args, client: Client) -> Any:
    sub = args[1].upper()
    if sub == b"GET" and len(args) >= 3:
        refused = store.check_patterns(args, 2, "CONFIG GET")
        if refused is not None:
            return refused
        # Each parameter once, however many patterns match it (in the order of the first
        # match); names are matched without regard to case, as in Redis.
        found: dict[bytes, bytes] = {}
        budget = store.glob_budget()
        for pattern in args[2:]:
            if len(found) == len(CONFIG):
                break  # nothing left to find
            pattern = pattern.lower()
            if is_glob_literal(pattern):
                if pattern in CONFIG:
                    found.setdefault(pattern, CONFIG[pattern])
                continue
            spans: Spans = {}
            for name, value in CONFIG.items():
                try:
                    if name not in found and glob_match(pattern, name, spans, budget):
                        found[name] = value
                except GlobTooCostly:
                    return store.too_costly("CONFIG GET")
        return [item for pair in found.items() for item in pair]
    if sub == b"RESETSTAT" and len(args) == 2:
        return OK
    if sub == b"GET":
        return wrong_arity("config|get")
    return unknown_subcommand(args)


def cmd_info(store: RedisStore, args: Args, client: Client) -> Any:
    lines = ["# Server", f"redis_version:{VERSION}", "redis_mode:standalone",
             "gevwire:1", "", "# Keyspace"]
    if store.data:
        lines.append(f"db0:keys={len(store.data)},expires={len(store.expires)},avg_ttl=0")
    return ("\r\n".join(lines) + "\r\n").encode()


def cmd_auth(store: RedisStore, args: Args, client: Client) -> Any:
    return RespError("ERR AUTH <password> called without any password configured for the "
                     "default user. Are you sure your configuration is correct?")


COMMANDS: tuple[Command, ...] = (
    Command("ping", cmd_ping, -1, ("fast",), categories=("@fast", "@connection")),
    Command("echo", cmd_echo, 2, ("fast",), categories=("@fast", "@connection")),
    Command("quit", cmd_quit, -1, ("allow_busy", "fast"), categories=("@fast",
                                                                      "@connection")),
    Command("get", cmd_get, 2, ("readonly", "fast"), 1, 1, 1, ("@read", "@string", "@fast")),
    Command("set", cmd_set, -3, ("write", "denyoom"), 1, 1, 1, ("@write", "@string",
                                                                 "@slow")),
    Command("del", cmd_del, -2, ("write",), 1, -1, 1, ("@keyspace", "@write", "@slow")),
    Command("exists", cmd_exists, -2, ("readonly", "fast"), 1, -1, 1,
            ("@keyspace", "@read", "@fast")),
    Command("incr", cmd_incr, 2, ("write", "denyoom", "fast"), 1, 1, 1,
            ("@write", "@string", "@fast")),
    Command("decr", cmd_decr, 2, ("write", "denyoom", "fast"), 1, 1, 1,
            ("@write", "@string", "@fast")),
    Command("incrby", cmd_incrby, 3, ("write", "denyoom", "fast"), 1, 1, 1,
            ("@write", "@string", "@fast")),
    Command("decrby", cmd_decrby, 3, ("write", "denyoom", "fast"), 1, 1, 1,
            ("@write", "@string", "@fast")),
    Command("mset", cmd_mset, -3, ("write", "denyoom"), 1, -1, 2, ("@write", "@string",
                                                                    "@slow")),
    Command("mget", cmd_mget, -2, ("readonly", "fast"), 1, -1, 1, ("@read", "@string",
                                                                    "@fast")),
    Command("expire", cmd_expire, -3, ("write", "fast"), 1, 1, 1, ("@keyspace", "@write",
                                                                    "@fast")),
    Command("pexpire", cmd_pexpire, -3, ("write", "fast"), 1, 1, 1, ("@keyspace", "@write",
                                                                      "@fast")),
    Command("ttl", cmd_ttl, 2, ("readonly", "fast"), 1, 1, 1, ("@keyspace", "@read",
                                                               "@fast")),
    Command("pttl", cmd_pttl, 2, ("readonly", "fast"), 1, 1, 1, ("@keyspace", "@read",
                                                                 "@fast")),
    Command("persist", cmd_persist, 2, ("write", "fast"), 1, 1, 1, ("@keyspace", "@write",
                                                                    "@fast")),
    Command("keys", cmd_keys, 2, ("readonly",), categories=("@keyspace", "@read", "@slow",
                                                            "@dangerous")),
    Command("type", cmd_type, 2, ("readonly", "fast"), 1, 1, 1, ("@keyspace", "@read",
                                                                 "@fast")),
    Command("dbsize", cmd_dbsize, 1, ("readonly", "fast"), categories=("@keyspace", "@read",
                                                                       "@fast")),
    Command("flushall", cmd_flushall, -1, ("write",), categories=("@keyspace", "@write",
                                                                  "@slow", "@dangerous")),
    Command("flushdb", cmd_flushall, -1, ("write",), categories=("@keyspace", "@write",
                                                                 "@slow", "@dangerous")),
    Command("lpush", cmd_lpush, -3, ("write", "denyoom", "fast"), 1, 1, 1,
            ("@write", "@list", "@fast")),
    Command("rpush", cmd_rpush, -3, ("write", "denyoom", "fast"), 1, 1, 1,
            ("@write", "@list", "@fast")),
    Command("lpop", cmd_lpop, -2, ("write", "fast"), 1, 1, 1, ("@write", "@list", "@fast")),
    Command("rpop", cmd_rpop, -2, ("write", "fast"), 1, 1, 1, ("@write", "@list", "@fast")),
    Command("llen", cmd_llen, 2, ("readonly", "fast"), 1, 1, 1, ("@read", "@list", "@fast")),
    Command("lrange", cmd_lrange, 4, ("readonly",), 1, 1, 1, ("@read", "@list", "@slow")),
    Command("select", cmd_select, 2, ("loading", "stale", "fast"),
            categories=("@keyspace", "@fast")),
    Command("hello", cmd_hello, -1, ("noscript", "loading", "stale", "fast"),
            categories=("@fast", "@connection")),
    Command("client", cmd_client, -2, ("noscript", "loading", "stale"),
            categories=("@slow", "@connection")),
    Command("command", cmd_command, -1, ("loading", "stale"), categories=("@slow",
                                                                          "@connection")),
    Command("config", cmd_config, -2, ("admin", "noscript", "loading", "stale"),
            categories=("@admin", "@slow", "@dangerous")),
    Command("info", cmd_info, -1, ("loading", "stale"), categories=("@slow",
                                                                    "@dangerous")),
    Command("auth", cmd_auth, -2, ("noscript", "loading", "stale", "fast"),
            categories=("@fast", "@connection")),
)


# -- the server --------------------------------------------------------------------------


class RedisHandler(gevwire.Handler):
    """Runs each command frame against ``store`` and returns the reply.

    ``on_message`` is ``store.execute`` itself (the connection is the ``client``), so a
    command costs no call layer of its own.
    """

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.on_message = store.execute  # type: ignore[method-assign,assignment]

    def on_connect(self, conn: gevwire.Connection) -> None:
        conn.context = self.store.new_session()
        log.debug("connection from %s", conn.peer_addr)

    def on_error(self, conn: gevwire.Connection, error: BaseException) -> None:
        if isinstance(error, gevwire.FrameError):
            # As Redis: say what was wrong, then close.
            log.info("protocol error from %s: %s", conn.peer_addr, error)
            try:
                conn.send(RespError(f"ERR Protocol error: {error}"))
            except gevwire.ConnectionClosed:
                pass
            conn.close()
        else:
            super().on_error(conn, error)


def redis_codec(max_bulk_length: int = 64 << 20) -> RespCodec:
    """The server's codec: commands of bulk strings up to ``max_bulk_length`` each."""
    return resp(commands=True, max_bulk_length=max_bulk_length,
                max_frame_size=2 * max_bulk_length + (1 << 20))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6380)
    parser.add_argument("--loops", type=int, default=1)
    parser.add_argument("--max-bulk-length", type=int, default=64 << 20,
                        help="largest bulk string accepted (64 MiB)")
    parser.add_argument("--max-pattern-bytes", type=int, default=MAX_PATTERN_BYTES,
                        help="what the glob patterns of one KEYS or CONFIG GET may total "
                             "(64 KiB)")
    parser.add_argument("--max-config-patterns", type=int, default=MAX_CONFIG_PATTERNS,
                        help="how many patterns one CONFIG GET may carry (1024)")
    parser.add_argument("--max-glob-steps", type=int, default=MAX_GLOB_STEPS,
                        help="the glob matching work one KEYS or CONFIG GET may do, in "
                             "steps (200000: ~40 ms)")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    add_ssl_arguments(parser)  # --ssl-certfile, --ssl-keyfile ... (redis-cli --tls)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
    )
    if min(args.max_pattern_bytes, args.max_config_patterns, args.max_glob_steps) < 1:
        parser.error("--max-pattern-bytes, --max-config-patterns and --max-glob-steps must "
                     "be >= 1")
    store = RedisStore(locked=args.loops > 1, max_pattern_bytes=args.max_pattern_bytes,
                       max_config_patterns=args.max_config_patterns,
                       max_glob_steps=args.max_glob_steps)
    server = gevwire.Server(RedisHandler(store), address=f"{args.host}:{args.port}",
                            loops=args.loops, codec=redis_codec(args.max_bulk_length),
                            **ssl_server_options(parser, args))
    server.run_every(0.1, store.expire_due)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        server.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    host, port = server.address[:2]
    print(f"listening on {host}:{port}", flush=True)
    server.run()
    log.info("stopped with %d keys", len(store.data))


if __name__ == "__main__":
    main()
