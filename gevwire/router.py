"""``Router``: a :class:`~gevwire.Handler` that dispatches each frame by one field."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Coroutine, Hashable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from gevwire._typing import FrameT
from gevwire.errors import RoutingError
from gevwire.handler import BlockingCall, Handler, is_blocking

if TYPE_CHECKING:
    from gevwire.connection import Connection

__all__ = ["Router"]

log = logging.getLogger("gevwire")

MessageHandler = Callable[["Connection", Any], Any]
#: A route: ``(conn, frame) -> reply`` (a reply, None, or a coroutine of one).
Route = Callable[["Connection", FrameT], object]
ConnHook = Callable[["Connection"], None]
ErrorHook = Callable[["Connection", BaseException], None]
F = TypeVar("F", bound=Callable[..., Any])


def _key_getter(key: str | Callable[[Any], Hashable]) -> Callable[[Any], Hashable]:
    if callable(key):
        return key
    if not key:
        raise ValueError("key must be a field name, a dotted path or a callable")
    path = key.split(".")
    if len(path) == 1:
        name = path[0]

        def get_one(frame: Any) -> Hashable:
            value: Hashable = frame[name]
            return value

        return get_one

    def get_path(frame: Any) -> Hashable:
        for part in path:
            frame = frame[part]
        value: Hashable = frame
        return value

    return get_path


def _enum_names(schema: Any, path: list[str]) -> frozenset[str] | None:
    """The names of the ``Enum`` at ``path`` in a construct ``schema``, or None when the
    path does not lead to one."""
    import construct  # type: ignore[import-untyped]

    node = schema
    for part in path:
        while not isinstance(node, construct.Struct) and hasattr(node, "subcon"):
            node = node.subcon
        if not isinstance(node, construct.Struct):
            return None
        for sub in node.subcons:
            if sub.name == part:
                node = sub
                break
        else:
            return None
    while not isinstance(node, construct.Enum) and hasattr(node, "subcon"):
        node = node.subcon
    if not isinstance(node, construct.Enum):
        return None
    return frozenset(str(name) for name in node.encmapping)


class Router(Handler[FrameT]):
    """Dispatches each frame to the handler registered for the value of ``key``.

    ``key`` is a field name (``"kind"``), a dotted path into nested structs
    (``"header.kind"``) or a callable ``frame -> kind``.  Enum fields match by their
    name (``@router.on("ping")``) as construct's ``EnumIntegerString`` is a ``str``.

    Example::

        router = Router(key="kind")

        @router.on("ping")
        def ping(conn, frame):
            return {"kind": "pong", "id": frame.id}

    A handler's non-None return value is encoded by the codec and sent.  Frames of an
    unknown kind go to ``@router.default``, or raise :class:`RoutingError` (reported to
    ``on_error``, whose default logs and closes the connection).

    Generic in its frames: ``Router[Message](key="kind")`` has type checkers hold
    every route to ``(conn, frame: Message)``; unparameterised, frames are ``Any``
    (routes must still take ``conn`` and ``frame``).

    A route may wait: an ``async def`` one runs on an asyncio loop, one registered with
    ``blocking=True`` (or marked :func:`gevwire.blocking`) on a thread pool; the other
    routes still run on the loop thread, and replies leave in frame order (see
    :mod:`gevwire.waiting`).  ``async def`` ``on_connect`` hooks are awaited in turn
    after the plain ones ran; frames wait until they have ended.

    ``schema``: the construct schema of the frames (given, or taken from a
    :class:`~gevwire.Codec` by the server): a kind that the ``Enum`` at ``key`` cannot
    produce (a misspelt name) is a ``ValueError`` when it is registered, not a route
    that never runs.
    """

    def __init__(self, key: str | Callable[[Any], Hashable] = "kind", *,
                 schema: Any = None) -> None:
        self.key = key
        self._enum_names: frozenset[str] | None = None
        self._get_kind = _key_getter(key)
        self._routes: dict[Hashable, MessageHandler] = {}
        self._default: MessageHandler | None = None
        self._connect_hooks: list[ConnHook] = []
        self._close_hooks: list[ConnHook] = []
        self._error_hook: ErrorHook | None = None
        #: True once a route or hook waits (``async def`` or blocking): connections
        #: then take the pipeline that runs them off the loop thread.
        self.may_wait = False
        if schema is not None:
            self.check_schema(schema)

    def check_schema(self, schema: Any) -> None:
        """Check the kinds registered (and those to come) against the ``Enum`` field that
        ``key`` names in ``schema``, if it is one; raise ``ValueError`` for a kind it
        cannot produce."""
        if not isinstance(self.key, str):
            return
        names = _enum_names(schema, self.key.split("."))
        if names is None:
            return
        self._enum_names = names
        for kind in self._routes:
            self._check_kind(kind)

    def _check_kind(self, kind: Hashable) -> None:
        names = self._enum_names
        if names is not None and isinstance(kind, str) and kind not in names:
            raise ValueError(f"kind {kind!r}: the {self.key!r} field's Enum has no such "
                             f"name (it has {', '.join(sorted(names))})")

    # -- registration ------------------------------------------------------------------

    def on(self, *kinds: Hashable, blocking: bool = False
           ) -> Callable[[Route[FrameT]], Route[FrameT]]:
        """Decorator: handle frames whose key is any of ``kinds``.

        ``blocking=True``: the handler blocks (a synchronous database driver, a
        computation); it runs on the server's thread pool, not on the loop thread.
        """
        if not kinds:
            raise TypeError("on() needs at least one kind")
        mark_blocking = blocking  # (the name "blocking" is _route's parameter too)

        def register(fn: Route[FrameT]) -> Route[FrameT]:
            for kind in kinds:
                if kind in self._routes:
                    raise ValueError(f"kind {kind!r} already has a handler")
                self._check_kind(kind)
            route = self._route(fn, mark_blocking)
            for kind in kinds:
                self._routes[kind] = route
            return fn

        return register

    def default(self, fn: Route[FrameT]) -> Route[FrameT]:
        """Decorator: handle frames of every kind that has no handler of its own
        (``async def`` and :func:`gevwire.blocking` ones as for :meth:`on`)."""
        self._default = self._route(fn, False)
        return fn

    def _route(self, fn: MessageHandler, blocking: bool) -> MessageHandler:
        """What dispatch calls for ``fn``: itself, or for a blocking one a function that
        returns the call to make on the thread pool."""
        if blocking or is_blocking(fn):
            self.may_wait = True

            def offloaded(conn: Connection, frame: Any) -> BlockingCall:
                return BlockingCall(fn, conn, frame)

            return offloaded
        if inspect.iscoroutinefunction(fn):
            self.may_wait = True
        return fn

    @property
    def kinds(self) -> list[Hashable]:
        """The kinds that have a handler."""
        return list(self._routes)

    # The server calls on_connect(conn) / on_close(conn) / on_error(conn, exc); the same
    # names register hooks when given a function, as decorators.

    @overload
    def on_connect(self, arg: Connection) -> Coroutine[Any, Any, None] | None: ...
    @overload
    def on_connect(self, arg: F) -> F: ...
    def on_connect(self, arg: Any) -> Any:
        """Decorator ``@router.on_connect`` registers a hook; called with a connection,
        runs the hooks."""
        if not callable(arg):  # a Connection: the server is calling
            waiting: list[Any] = []
            for hook in self._connect_hooks:
                result = hook(arg)
                if inspect.iscoroutine(result):
                    waiting.append(result)
            return _await_in_turn(waiting) if waiting else None
        if inspect.iscoroutinefunction(arg):
            self.may_wait = True
        self._connect_hooks.append(arg)
        return arg

    @overload
    def on_close(self, arg: Connection) -> None: ...
    @overload
    def on_close(self, arg: F) -> F: ...
    def on_close(self, arg: Any) -> Any:
        """Decorator ``@router.on_close`` registers a hook; called with a connection,
        runs the hooks."""
        if not callable(arg):
            for hook in self._close_hooks:
                hook(arg)
            return None
        self._close_hooks.append(arg)
        return arg

    @overload
    def on_error(self, conn: Connection, error: BaseException) -> None: ...
    @overload
    def on_error(self, conn: F) -> F: ...
    def on_error(self, conn: Any, error: BaseException | None = None) -> Any:
        """Decorator ``@router.on_error`` registers the error hook (it gets frame errors
        and handler exceptions); without one, errors are logged and the connection
        closed."""
        if error is None:
            self._error_hook = conn
            return conn
        assert error is not None
        if self._error_hook is not None:
            self._error_hook(conn, error)
        else:
            Handler.on_error(self, conn, error)
        return None

    # -- dispatch ----------------------------------------------------------------------

    def on_message(self, conn: Connection, frame: Any) -> Any:
        """Run the handler registered for ``frame``'s kind."""
        try:
            kind = self._get_kind(frame)
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            raise RoutingError(f"frame has no {self.key!r} to route by: {frame!r}") from exc
        handler = self._routes.get(kind)
        if handler is None:
            handler = self._default
            if handler is None:
                shown = repr(str(kind)) if isinstance(kind, str) else repr(kind)
                raise RoutingError(
                    f"no handler for kind {shown}; register one with @router.on({shown}) "
                    "or @router.default"
                )
        return handler(conn, frame)


async def _await_in_turn(coroutines: list[Coroutine[Any, Any, Any]]) -> None:
    for coroutine in coroutines:
        await coroutine
