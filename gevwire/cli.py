"""``python -m gevwire run module:handler``: serve a handler from the command line.

Like uvicorn: the handler is named ``module:attribute`` (a :class:`~gevwire.Handler`
instance, a class instantiated with no arguments, or a zero-argument factory), and the
working directory (``--app-dir``) is put first on ``sys.path`` so a module beside you
imports.  ``SIGTERM`` and ``SIGINT`` stop the server gracefully; the exit status is 0.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import ssl
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

from gevwire import __version__
from gevwire.codec import BaseCodec, RawCodec
from gevwire.server import Server

__all__ = [
    "BUILTIN_CODECS",
    "CliError",
    "add_ssl_arguments",
    "load_codec",
    "load_handler",
    "main",
    "ssl_context_from",
    "ssl_server_options",
]

log = logging.getLogger("gevwire")

#: ``--codec`` short names: factories in ``gevwire.codecs`` called with no arguments.
BUILTIN_CODECS = ("raw", "line", "length_field", "varint")

_CALLBACKS = ("on_connect", "on_message", "on_close")
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


class CliError(Exception):
    """A command-line argument names something that cannot be used."""


def _import_attribute(spec: str, what: str) -> Any:
    """The object ``"package.module:attr.sub"`` names."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise CliError(f"{what} {spec!r}: expected 'module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only the named module missing is our error; a missing import inside it is the
        # module's own (raised with its traceback).
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise CliError(f"{what} {spec!r}: no module named {exc.name!r} "
                           f"(sys.path starts with {sys.path[0]!r})") from None
        raise
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"{what} {spec!r}: module {module_name!r} has no attribute "
                           f"{attribute!r}") from None
    return obj


def _is_handler(obj: Any) -> bool:
    return not isinstance(obj, type) and all(
        callable(getattr(obj, name, None)) for name in _CALLBACKS)


def load_handler(spec: str) -> Any:
    """The handler ``spec`` names: an instance as is, a class or factory called."""
    obj = _import_attribute(spec, "handler")
    if not _is_handler(obj) and callable(obj):
        obj = obj()
    if not _is_handler(obj):
        raise CliError(f"handler {spec!r} is not a handler: it needs "
                       f"{', '.join(_CALLBACKS)} (subclass gevwire.Handler)")
    return obj


def load_codec(spec: str) -> BaseCodec:
    """The codec ``spec`` names: a built-in short name or ``module:attribute``."""
    if ":" in spec:
        obj = _import_attribute(spec, "codec")
    elif spec == "raw":
        return RawCodec()
    elif spec in BUILTIN_CODECS:
        try:
            codecs = importlib.import_module("gevwire.codecs")
        except ImportError as exc:
            raise CliError(f"codec {spec!r}: gevwire.codecs is not available ({exc})") from None
        obj = getattr(codecs, spec, None)
        if obj is None:
            raise CliError(f"codec {spec!r} is not in this gevwire.codecs")
    else:
        raise CliError(f"unknown codec {spec!r}: use one of {', '.join(BUILTIN_CODECS)} "
                       "or 'module:attribute'")
    if not isinstance(obj, BaseCodec) and callable(obj):
        try:
            obj = obj()
        except TypeError as exc:
            raise CliError(f"codec {spec!r} cannot be made with no arguments ({exc}); "
                           "name a configured instance as 'module:attribute'") from None
    if not isinstance(obj, BaseCodec):
        raise CliError(f"codec {spec!r} is not a codec (a gevwire.BaseCodec)")
    return obj


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


_CERT_REQS = {"0": ssl.CERT_NONE, "none": ssl.CERT_NONE, "1": ssl.CERT_OPTIONAL,
              "optional": ssl.CERT_OPTIONAL, "2": ssl.CERT_REQUIRED,
              "required": ssl.CERT_REQUIRED}


def _cert_reqs(text: str) -> ssl.VerifyMode:
    try:
        return _CERT_REQS[text.strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: 0 / none, 1 / optional or 2 / required") from None


def add_ssl_arguments(parser: argparse.ArgumentParser) -> None:
    """Add uvicorn's TLS options (``--ssl-certfile``, ``--ssl-keyfile``,
    ``--ssl-keyfile-password``, ``--ssl-ca-certs``, ``--ssl-cert-reqs``,
    ``--ssl-ciphers``) and ``--ssl-alpn``, ``--ssl-handshake-timeout``,
    ``--ssl-shutdown-timeout`` to ``parser``;
    :func:`ssl_context_from` makes the context.  The examples take the same flags."""
    group = parser.add_argument_group("TLS (serve TLS when --ssl-certfile is given)")
    group.add_argument("--ssl-certfile", metavar="PEM",
                       help="the server's certificate chain (and key, if in one file)")
    group.add_argument("--ssl-keyfile", metavar="PEM", help="the server's private key")
    group.add_argument("--ssl-keyfile-password", metavar="PASSWORD",
                       help="the private key's password")
    group.add_argument("--ssl-ca-certs", metavar="PEM",
                       help="CA certificates client certificates are verified against")
    group.add_argument("--ssl-cert-reqs", type=_cert_reqs, default=ssl.CERT_NONE,
                       metavar="0|1|2",
                       help="client certificates: 0 none (default), 1 optional, "
                            "2 required (mutual TLS; needs --ssl-ca-certs)")
    group.add_argument("--ssl-ciphers", metavar="LIST",
                       help="OpenSSL cipher list for TLS 1.2 (default: OpenSSL's)")
    group.add_argument("--ssl-alpn", metavar="PROTOCOLS",
                       help="ALPN protocols to offer, comma-separated (e.g. mqtt)")
    group.add_argument("--ssl-handshake-timeout", type=_positive_float, default=10.0,
                       metavar="SECONDS",
                       help="close a peer whose TLS handshake is not done by then "
                            "(default: %(default)s)")
    group.add_argument("--ssl-shutdown-timeout", type=_non_negative_float, default=10.0,
                       metavar="SECONDS",
                       help="after our close_notify, wait this long for the peer's "
                            "(0: not at all; default: %(default)s)")


def ssl_context_from(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The server context the ``--ssl-*`` options describe, or None without
    ``--ssl-certfile``.  Raises :class:`CliError` for options that cannot be used."""
    if not args.ssl_certfile:
        for option in ("ssl_keyfile", "ssl_ca_certs", "ssl_ciphers", "ssl_alpn"):
            if getattr(args, option):
                raise CliError(f"--{option.replace('_', '-')} needs --ssl-certfile")
        if args.ssl_cert_reqs != ssl.CERT_NONE:
            raise CliError("--ssl-cert-reqs needs --ssl-certfile")
        return None
    if args.ssl_cert_reqs != ssl.CERT_NONE and not args.ssl_ca_certs:
        raise CliError("--ssl-cert-reqs 1 or 2 needs --ssl-ca-certs (the CA that signs "
                       "client certificates)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(args.ssl_certfile, args.ssl_keyfile,
                                args.ssl_keyfile_password)
        if args.ssl_ca_certs:
            context.load_verify_locations(args.ssl_ca_certs)
        if args.ssl_ciphers:
            context.set_ciphers(args.ssl_ciphers)
    except (OSError, ssl.SSLError) as exc:
        raise CliError(f"cannot load the TLS certificate or key: {exc}") from exc
    context.verify_mode = args.ssl_cert_reqs
    if args.ssl_alpn:
        context.set_alpn_protocols([p.strip() for p in args.ssl_alpn.split(",") if p.strip()])
    return context


def ssl_server_options(parser: argparse.ArgumentParser,
                       args: argparse.Namespace) -> dict[str, Any]:
    """``Server`` keyword arguments from the ``--ssl-*`` options (``{}`` without
    ``--ssl-certfile``); a usage error on ``parser`` for options that cannot be used.
    For programs with their own parser: ``add_ssl_arguments(parser)``, then
    ``gevwire.Server(..., **ssl_server_options(parser, args))``."""
    try:
        context = ssl_context_from(args)
    except CliError as exc:
        parser.error(str(exc))
    if context is None:
        return {}
    return {"ssl": context, "ssl_handshake_timeout": args.ssl_handshake_timeout,
            "ssl_shutdown_timeout": args.ssl_shutdown_timeout}


def build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The ``python -m gevwire`` parser and its ``run`` sub-parser."""
    parser = argparse.ArgumentParser(
        prog="python -m gevwire", description="Fast non-blocking TCP servers (gevwire).")
    parser.add_argument("--version", action="version", version=f"gevwire {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    run = commands.add_parser(
        "run", help="serve a handler",
        description="Serve a handler until SIGTERM / SIGINT (a graceful stop).  Every "
                    "option's default can also come from the environment: --max-connections "
                    "from GEVWIRE_MAX_CONNECTIONS, --proxy-protocol from "
                    "GEVWIRE_PROXY_PROTOCOL=1, and so on.",
        epilog="example: python -m gevwire run myapp:Echo --address 0.0.0.0:1833 --workers 4")
    run.add_argument("handler", metavar="MODULE:HANDLER",
                     help="a gevwire.Handler instance, a class (made with no arguments) or a "
                          "zero-argument factory, e.g. myapp:Echo")
    run.add_argument("--address", default="127.0.0.1:1833",
                     help="host:port, [v6]:port, :port or unix:/path (default: %(default)s)")
    run.add_argument("--loops", type=_positive_int, default=1,
                     help="event loops per process (default: %(default)s)")
    run.add_argument("--backend", choices=("epoll", "io_uring", "auto"),
                     help="I/O backend (default: epoll; io_uring needs Linux 6.1+; auto: "
                          "io_uring where the kernel allows it)")
    run.add_argument("--reuse-port", action="store_true",
                     help="set SO_REUSEPORT on the listening socket (several processes "
                          "started apart on one port; --workers does this itself)")
    run.add_argument("--workers", type=_positive_int, default=1,
                     help="processes, each with its own SO_REUSEPORT listener; handler state "
                          "is per process (default: %(default)s)")
    run.add_argument("--worker-timeout", type=_positive_float, default=30.0,
                     metavar="SECONDS",
                     help="kill and restart a worker whose loops stop answering this long "
                          "(a handler that never returns; default: %(default)s)")
    run.add_argument("--codec", default="raw",
                     help=f"{', '.join(BUILTIN_CODECS)} or module:attribute (a codec or a "
                          "zero-argument factory; default: %(default)s)")
    run.add_argument("--idle-timeout", type=_positive_float, metavar="SECONDS",
                     help="close connections idle this long")
    run.add_argument("--frame-timeout", type=_positive_float, metavar="SECONDS",
                     help="close connections that leave a frame incomplete this long")
    run.add_argument("--metrics-address", metavar="HOST:PORT",
                     help="serve Prometheus metrics at http://HOST:PORT/metrics (worker i: "
                          "PORT + i); needs prometheus_client")
    run.add_argument("--max-connections", type=_non_negative_int, metavar="N",
                     help="refuse connections over N (per process)")
    run.add_argument("--max-buffered-bytes", type=_positive_int, metavar="BYTES",
                     help="bound the storage all connections' buffers hold (per process): "
                          "reading pauses on the largest holders above it, and they are "
                          "closed above 1.5 times it")
    run.add_argument("--proxy-protocol", action="store_true",
                     help="expect a PROXY protocol v1/v2 header on every connection")
    run.add_argument("--proxy-timeout", type=_positive_float, default=10.0,
                     metavar="SECONDS",
                     help="the PROXY header must be complete this long after the connect "
                          "(default: %(default)s)")
    run.add_argument("--max-pending-per-connection", type=_positive_int, default=100,
                     metavar="N",
                     help="frames of one connection whose async or blocking handler may "
                          "run at once; reading pauses there (1: one at a time; default: "
                          "%(default)s)")
    run.add_argument("--handler-timeout", type=_positive_float, metavar="SECONDS",
                     help="fail a frame whose async or blocking handler runs this long")
    run.add_argument("--stop-timeout", type=_positive_float, default=5.0, metavar="SECONDS",
                     help="how long a graceful stop may flush output (default: %(default)s)")
    run.add_argument("--log-level", choices=_LOG_LEVELS, default="info",
                     help="(default: %(default)s)")
    run.add_argument("--app-dir", default=".",
                     help="put this directory first on sys.path (default: the current one)")
    add_ssl_arguments(run)
    _environment_defaults(run)
    return parser, run


def _environment_defaults(parser: argparse.ArgumentParser) -> None:
    """Take each option's default from ``GEVWIRE_<OPTION>`` when it is set (uvicorn's
    ``UVICORN_*``): ``--max-connections`` from ``GEVWIRE_MAX_CONNECTIONS``."""
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "version"):
            continue
        name = "GEVWIRE_" + action.dest.upper()
        text = os.environ.get(name)
        if text is None:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            action.default = text.strip().lower() in ("1", "true", "yes", "on")
            continue
        try:
            value = action.type(text) if callable(action.type) else text
        except (ValueError, argparse.ArgumentTypeError) as exc:
            parser.error(f"{name}={text!r}: {exc}")
        if action.choices is not None and value not in action.choices:
            parser.error(f"{name}={text!r}: not one of {', '.join(map(str, action.choices))}")
        action.default = value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser, run_parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s [%(process)d] %(message)s")
    app_dir = os.path.abspath(args.app_dir)
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    try:
        handler = load_handler(args.handler)
        codec = load_codec(args.codec)
        context = ssl_context_from(args)
    except CliError as exc:
        run_parser.error(str(exc))  # exits with status 2
    try:
        server = Server(
            handler,
            address=args.address,
            loops=args.loops,
            backend=args.backend,
            reuse_port=args.reuse_port,
            workers=args.workers,
            worker_timeout=args.worker_timeout,
            codec=codec,
            idle_timeout=args.idle_timeout,
            frame_timeout=args.frame_timeout,
            metrics_address=args.metrics_address,
            max_connections=args.max_connections,
            max_buffered_bytes=args.max_buffered_bytes,
            proxy_protocol=args.proxy_protocol,
            proxy_timeout=args.proxy_timeout,
            max_pending_per_connection=args.max_pending_per_connection,
            handler_timeout=args.handler_timeout,
            ssl=context,
            ssl_handshake_timeout=args.ssl_handshake_timeout,
            ssl_shutdown_timeout=args.ssl_shutdown_timeout,
        )
    except (ValueError, TypeError, RuntimeError) as exc:
        run_parser.error(str(exc))

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        server.stop(args.stop_timeout)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.run()
    except (OSError, RuntimeError) as exc:
        log.error("cannot serve on %s: %s", args.address, exc)
        return 1
    return 0
