"""Every stackmapd option, once, and how it becomes a ``struct sm_settings``.

``OPTIONS`` is the table the command line (cli.py), the config file
(config.py) and the README's flags table are made from: a long flag
``--memory-limit`` is the config key ``memory_limit``, with the same parser,
range and default.  ``EXTENDED`` does the same for memcached's ``-o key=value``
options.  Values are parsed and checked here, with messages that name where a
bad value came from (a flag or a file's key), so that both inputs fail the
same way.

``Settings`` is the dataclass whose fields are ``struct sm_settings``'s
(engine.h); ``build_settings`` turns checked option values into it.  Fields
left ``None`` keep the engine's own default from ``sm_settings_init``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

KIB = 1024
MIB = 1024 * 1024

# memcached's limits on -I (checked against memcached 1.6.18 itself).
ITEM_SIZE_MIN = KIB
ITEM_SIZE_MAX = 1024 * MIB
HASHPOWER_MIN = 12
HASHPOWER_MAX = 32


class OptionError(ValueError):
    """A value that cannot be used; the message says where it came from and why."""


# ---------------------------------------------------------------------------
# Value parsers.  Each takes the raw value (a command-line string or a TOML
# value) and returns the typed value or raises ValueError with the reason.
# ---------------------------------------------------------------------------

_INT_RE = re.compile(r"[+-]?\d+")
_SIZE_RE = re.compile(r"(\d+)([kKmM]?)")


def parse_int(raw: object) -> int:
    """An integer: a TOML integer or a decimal string."""
    if isinstance(raw, bool):
        raise ValueError(f"expected an integer, got {raw!r}")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and _INT_RE.fullmatch(raw.strip()):
        return int(raw.strip())
    raise ValueError(f"expected an integer, got {raw!r}")


def parse_size(raw: object) -> int:
    """A byte count: an integer, optionally with a k or m suffix (1024-based), as memcached's -I."""
    if isinstance(raw, bool):
        raise ValueError(f"expected a size like 1048576, 512k or 1m, got {raw!r}")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str):
        m = _SIZE_RE.fullmatch(raw.strip())
        if m:
            number, unit = int(m.group(1)), m.group(2).lower()
            return number * {"": 1, "k": KIB, "m": MIB}[unit]
    raise ValueError(f"expected a size like 1048576, 512k or 1m, got {raw!r}")


def parse_float(raw: object) -> float:
    """A decimal number."""
    if isinstance(raw, bool):
        raise ValueError(f"expected a number, got {raw!r}")
    if isinstance(raw, int | float):
        return float(raw)
    if isinstance(raw, str):
        try:
            return float(raw.strip())
        except ValueError:
            pass
    raise ValueError(f"expected a number, got {raw!r}")


def parse_bool(raw: object) -> bool:
    """true/false (TOML) or 1/0, yes/no, on/off, true/false (strings)."""
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str):
        word = raw.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off"):
            return False
    raise ValueError(f"expected true or false, got {raw!r}")


def parse_listen(raw: object) -> str:
    """A comma-separated address list (or a TOML list of addresses)."""
    if isinstance(raw, list):
        parts = raw
    elif isinstance(raw, str):
        parts = raw.split(",")
    else:
        raise ValueError(f"expected addresses like 127.0.0.1,::1, got {raw!r}")
    addrs = []
    for part in parts:
        if not isinstance(part, str) or not part.strip():
            raise ValueError(f"empty or invalid address in {raw!r}")
        if any(c.isspace() for c in part.strip()):
            raise ValueError(f"address {part.strip()!r} contains whitespace")
        addrs.append(part.strip())
    joined = ",".join(addrs)
    if len(joined.encode()) > 511:
        raise ValueError("address list longer than 511 bytes")
    return joined


def parse_str(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"expected a string, got {raw!r}")
    return raw


def parse_nonempty(raw: object) -> str:
    """A string that is not empty (a token, a path)."""
    value = parse_str(raw)
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def parse_hostport_off(raw: object) -> str | None:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) or ``off``; None means off."""
    value = parse_str(raw).strip()
    if value.lower() in ("off", "none", "no", "false", "0"):
        return None
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or any(c.isspace() for c in host):
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:9150) or off, got {value!r}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be between 0 and 65535 in {value!r}")
    return f"{host}:{int(port)}" if ":" not in host else f"[{host}]:{int(port)}"


def _num(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def ranged(
    parse: Callable[[object], Any],
    lo: float | None = None,
    hi: float | None = None,
    what: str = "",
) -> Callable[[object], Any]:
    """``parse`` followed by an inclusive range check."""

    def check(raw: object) -> Any:
        value = parse(raw)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            if hi is None:
                bound = f"at least {_num(lo)}"
            elif lo is None:
                bound = f"at most {_num(hi)}"
            else:
                bound = f"between {_num(lo)} and {_num(hi)}"
            raise ValueError(f"must be {bound}{what}, got {_num(value)}")
        return value

    return check


def greater_than(parse: Callable[[object], Any], lo: float) -> Callable[[object], Any]:
    """``parse`` followed by a strict lower bound."""

    def check(raw: object) -> Any:
        value = parse(raw)
        if not value > lo:
            raise ValueError(f"must be greater than {_num(lo)}, got {_num(value)}")
        return value

    return check


def only_zero(raw: object) -> int:
    value = parse_int(raw)
    if value != 0:
        raise ValueError(
            f"UDP is not supported by stackmapd; only 0 (UDP off, memcached's default) "
            f"is accepted, got {value}"
        )
    return value


def choice(names: Callable[[], tuple[str, ...]]) -> Callable[[object], str]:
    def check(raw: object) -> str:
        value = parse_str(raw).strip()
        allowed = names()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, got {value!r}")
        return value

    return check


def backend_names() -> tuple[str, ...]:
    """The --backend choices: stackmap_core.BACKENDS is the one list."""
    from stackmap_core import BACKENDS

    return tuple(BACKENDS)


# ---------------------------------------------------------------------------
# The option table.
# ---------------------------------------------------------------------------

# How a command-line option takes its value.
VALUE = "value"  # -p 11211
FLAG = "flag"  # -C (no value; true when given)
COUNT = "count"  # -v, -vv, -vvv
LIST = "list"  # -o may be given several times


@dataclass(frozen=True)
class Option:
    """One user-facing option: flag, config key, parser, default, doc."""

    key: str  # config-file key; the long flag is --key with '_' -> '-'
    short: str | None  # memcached's one-letter flag, e.g. "-p"
    form: str  # VALUE, FLAG, COUNT or LIST
    parse: Callable[[object], Any]  # raw value -> typed value (ValueError if bad)
    default: Any  # typed default (None: the engine's)
    default_doc: str  # default as shown in --help and the README
    help: str  # one-line meaning
    metavar: str | None = None  # placeholder in --help

    @property
    def long(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def flags(self) -> str:
        """``-p/--port`` or ``--backend``: how messages name this option."""
        return f"{self.short}/{self.long}" if self.short else self.long


OPTIONS: tuple[Option, ...] = (
    Option("port", "-p", VALUE, ranged(parse_int, 0, 65535), 11211, "11211",
           "TCP port to listen on", "NUM"),
    Option("listen", "-l", VALUE, parse_listen, "127.0.0.1", "127.0.0.1",
           "interfaces to listen on, comma-separated (host, IPv4 or IPv6 address)", "ADDR"),
    Option("memory_limit", "-m", VALUE, ranged(parse_int, 1, 1 << 40), 64, "64",
           "item memory in megabytes", "MB"),
    Option("conn_limit", "-c", VALUE, ranged(parse_int, 1, 1 << 20), 1024, "1024",
           "max simultaneous connections", "NUM"),
    Option("threads", "-t", VALUE, ranged(parse_int, 1, 256), 4, "4",
           "number of worker threads (one event loop each)", "NUM"),
    Option("max_item_size", "-I", VALUE, ranged(parse_size, ITEM_SIZE_MIN, ITEM_SIZE_MAX,
                                                " bytes (1k..1024m)"), MIB, "1m",
           "largest item (key + value + overhead); k/m suffixes; at most half of -m",
           "SIZE"),
    Option("slab_growth_factor", "-f", VALUE, greater_than(parse_float, 1.0), 1.25, "1.25",
           "chunk size growth factor between slab classes", "FACTOR"),
    Option("slab_min_size", "-n", VALUE, ranged(parse_int, 1, 1 << 20), 48, "48",
           "minimum space for key + value + flags in the smallest chunk", "BYTES"),
    Option("disable_cas", "-C", FLAG, parse_bool, False, "off",
           "disable CAS unique ids (saves 8 bytes per item)"),
    Option("verbose", "-v", COUNT, ranged(parse_int, 0, 3), 0, "0",
           "verbosity: -v errors and warnings, -vv also commands, -vvv internals"),
    Option("enable_shutdown", "-A", FLAG, parse_bool, False, "off",
           'allow clients to stop the server with "shutdown"'),
    Option("udp_port", "-U", VALUE, only_zero, 0, "0",
           "UDP port; only 0 (off) is supported", "0"),
    Option("listen_backlog", "-b", VALUE, ranged(parse_int, 1, 1 << 20), 1024, "1024",
           "listen() backlog", "NUM"),
    Option("max_reqs_per_event", "-R", VALUE, ranged(parse_int, 1, 1 << 20), 20, "20",
           "max requests served per connection before yielding to others", "NUM"),
    Option("extended", "-o", LIST, parse_str, None, "",
           "extended options, comma-separated key[=value] (listed below)", "OPTS"),
    Option("backend", None, VALUE, choice(backend_names), "auto", "auto",
           "I/O backend: auto picks the best available", "NAME"),
    # The control plane's own options (not engine settings; see CONTROL_KEYS).
    Option("metrics_listen", None, VALUE, parse_hostport_off, "127.0.0.1:9150", "127.0.0.1:9150",
           "HTTP address of /metrics, /healthz, /readyz and the admin API; off to disable",
           "HOST:PORT"),
    Option("admin_token", None, VALUE, parse_nonempty, None, "",
           "bearer token the admin API requires (required to use it beyond loopback)", "TOKEN"),
    Option("admin_token_file", None, VALUE, parse_nonempty, None, "",
           "read the admin bearer token from this file", "FILE"),
    Option("snapshot", None, VALUE, parse_nonempty, None, "",
           "warm restart file: loaded at start if present, saved on SIGTERM/SIGINT", "FILE"),
    Option("restore", None, VALUE, parse_nonempty, None, "",
           "load this snapshot at start (a bad file is refused: the server starts empty)", "FILE"),
    Option("snapshot_dir", None, VALUE, parse_nonempty, None, "",
           "the only directory the admin API may write snapshots to (default: --snapshot's directory)",
           "DIR"),
    Option("snapshot_max_age", None, VALUE, ranged(parse_int, 1, None), None, "",
           "refuse to load a snapshot created more than this many seconds ago (start empty)",
           "SECONDS"),
)

# Options the control plane keeps for itself: build_settings leaves them out.
CONTROL_KEYS = frozenset({"metrics_listen", "admin_token", "admin_token_file", "snapshot", "restore",
                          "snapshot_dir", "snapshot_max_age"})

# Options that SIGHUP / `stackmapctl reload` apply to a running server; any
# other change needs a restart.
LIVE_KEYS = frozenset({"memory_limit", "verbose", "conn_limit", "metrics_listen", "admin_token",
                       "admin_token_file", "snapshot", "snapshot_dir"})

OPTION_BY_KEY: dict[str, Option] = {o.key: o for o in OPTIONS}


@dataclass(frozen=True)
class Extended:
    """One ``-o key[=value]`` option and the sm_settings field it sets."""

    key: str  # memcached's name, e.g. "hashpower"
    field: str | None  # struct sm_settings field (None: recognised but unsupported)
    parse: Callable[[object], Any]  # raw value -> typed value; bare key gets True
    help: str  # one-line meaning
    negation: str | None = None  # bare word that sets the field false (no_lru_segmented)
    bare: bool = False  # may be given without "=value" (a switch)
    unsupported: str = ""  # why stackmapd refuses it, when field is None


EXTENDED: tuple[Extended, ...] = (
    Extended("hashpower", "hashpower_init", ranged(parse_int, HASHPOWER_MIN, HASHPOWER_MAX),
             "initial hash table size as a power of two"),
    Extended("lru_segmented", "lru_segmented", parse_bool,
             "accepted for memcached compatibility; stackmapd keeps one LRU per slab class either way",
             negation="no_lru_segmented", bare=True),
    Extended("idle_timeout", "idle_timeout", ranged(parse_int, 0, 1 << 31),
             "close client connections idle this many seconds; 0 never"),
    Extended("tcp_nodelay", "tcp_nodelay", parse_bool,
             "set TCP_NODELAY on accepted sockets", negation="no_tcp_nodelay", bare=True),
    Extended("uring_entries", "uring_entries", ranged(parse_int, 1, 1 << 15),
             "io_uring submission queue entries per worker"),
    Extended("uring_bufs", "uring_bufs", ranged(parse_int, 1, 1 << 15),
             "provided receive buffers per worker ring"),
    Extended("uring_buf_size", "uring_buf_size", ranged(parse_size, 64, 16 * MIB),
             "bytes per provided receive buffer (k/m suffixes)"),
    Extended("uring_zc_threshold", "uring_zc_threshold", ranged(parse_size, 0, 1 << 31),
             "send zero-copy at and above this many bytes; 0 never (k/m suffixes)"),
    Extended("uring_sqpoll", "uring_sqpoll", parse_bool,
             "kernel submission-queue polling thread", bare=True),
    Extended("uring_batch_usec", "uring_batch_usec", ranged(parse_int, 0, 100000),
             "a loaded worker whose CPU never idles waits up to this many microseconds "
             "for a batch of requests; 0 never"),
    Extended("slab_chunk_max", None, parse_size, "memcached's largest slab chunk",
             unsupported="stackmapd never splits items into chunks: its slab pages are "
                         "at least -I bytes, so there is no chunk maximum to set"),
)

EXTENDED_BY_KEY: dict[str, Extended] = {x.key: x for x in EXTENDED}
EXTENDED_BY_NEGATION: dict[str, Extended] = {x.negation: x for x in EXTENDED if x.negation}


def parse_extended(items: object, where: str) -> dict[str, Any]:
    """``-o`` values (or a config file's ``extended``) -> {key: typed value}.

    ``items`` is a comma-separated string, a list of such strings, or (from a
    config file) a table of key = value.  Unknown keys are errors.
    """
    pairs: list[tuple[str, object]] = []
    if isinstance(items, Mapping):
        pairs = [(str(k), v) for k, v in items.items()]
    else:
        chunks = [items] if isinstance(items, str) else items
        if not isinstance(chunks, list) or not all(isinstance(c, str) for c in chunks):
            raise OptionError(f"{where}: expected key[=value] strings, got {items!r}")
        for chunk in chunks:
            for word in chunk.split(","):
                word = word.strip()
                if not word:
                    continue
                key, eq, value = word.partition("=")
                pairs.append((key.strip(), value.strip() if eq else True))

    out: dict[str, Any] = {}
    for key, raw in pairs:
        if key in EXTENDED_BY_NEGATION:
            ext = EXTENDED_BY_NEGATION[key]
            if raw is not True:
                raise OptionError(f"{where}: {key} takes no value")
            out[ext.key] = False
            continue
        ext = EXTENDED_BY_KEY.get(key)
        if ext is None:
            known = ", ".join(sorted([*EXTENDED_BY_KEY, *EXTENDED_BY_NEGATION]))
            raise OptionError(f"{where}: unknown extended option {key!r} (known: {known})")
        if ext.field is None:
            raise OptionError(f"{where}: extended option {key!r} is not supported: "
                              f"{ext.unsupported}")
        if raw is True and not ext.bare:
            raise OptionError(f"{where}: {key} needs a value ({key}=N)")
        try:
            out[key] = ext.parse(raw)
        except ValueError as exc:
            raise OptionError(f"{where}: {key}: {exc}") from None
    return out


def check_value(option: Option, raw: object, where: str) -> Any:
    """Parse one option's raw value; OptionError names ``where`` on failure."""
    if option.form == LIST:
        return parse_extended(raw, where)
    try:
        return option.parse(raw)
    except ValueError as exc:
        raise OptionError(f"{where}: {exc}") from None


# ---------------------------------------------------------------------------
# Settings: what the engine gets.
# ---------------------------------------------------------------------------


@dataclass
class Settings:
    """``struct sm_settings`` (engine.h), field for field.  None: engine default."""

    port: int
    listen: str
    maxbytes: int
    maxconns: int
    num_threads: int
    item_size_max: int
    factor: float
    chunk_size: int
    slab_page_size: int
    use_cas: bool
    verbose: int
    shutdown_enabled: bool
    backlog: int
    reqs_per_event: int
    backend: int
    hashpower_init: int | None = None
    lru_segmented: bool | None = None
    uring_entries: int | None = None
    uring_bufs: int | None = None
    uring_buf_size: int | None = None
    uring_zc_threshold: int | None = None
    uring_sqpoll: bool | None = None
    uring_batch_usec: int | None = None
    tcp_nodelay: bool | None = None
    idle_timeout: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def defaults() -> dict[str, Any]:
    """Every option at its default (the extended table empty)."""
    values = {o.key: o.default for o in OPTIONS}
    values["extended"] = {}
    return values


def check_combination(values: Mapping[str, Any]) -> None:
    """Rules that involve more than one option (memcached's, where it has them)."""
    item = values["max_item_size"]
    maxbytes = values["memory_limit"] * MIB
    if item > maxbytes // 2:
        raise OptionError(
            f"-I/--max-item-size ({item} bytes) cannot be larger than half of "
            f"-m/--memory-limit ({values['memory_limit']} MB)"
        )


def build_settings(values: Mapping[str, Any]) -> Settings:
    """Checked option values (see config.resolve) -> the engine's Settings."""
    from stackmap_core import BACKENDS

    check_combination(values)
    ext = values.get("extended") or {}
    fields = {x.key: x.field for x in EXTENDED if x.field}
    extended = {fields[k]: v for k, v in ext.items()}
    return Settings(
        port=values["port"],
        listen=values["listen"],
        maxbytes=values["memory_limit"] * MIB,
        maxconns=values["conn_limit"],
        num_threads=values["threads"],
        item_size_max=values["max_item_size"],
        factor=values["slab_growth_factor"],
        chunk_size=values["slab_min_size"],
        slab_page_size=max(MIB, values["max_item_size"]),
        use_cas=not values["disable_cas"],
        verbose=values["verbose"],
        shutdown_enabled=values["enable_shutdown"],
        backlog=values["listen_backlog"],
        reqs_per_event=values["max_reqs_per_event"],
        backend=BACKENDS[values["backend"]],
        **extended,
    )
