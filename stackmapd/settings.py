"""Every stackmapd option, from the engine's one option table.

The options are the rows of ``stackmap_core/src/options.h`` (read through
``stackmap_core.option_table()``): key, struct field, type, default, limits,
memcached's one-letter flag, scope and help.  The C engine fills its
defaults and checks its limits from those rows; here the same rows become
``OPTIONS``, the table the command line (cli.py), the config file and the
environment (config.py) and the README's flag tables (docs.py) are made
from: a long flag ``--memory-limit`` is the config key ``memory_limit`` and
the variable ``STACKMAP_MEMORY_LIMIT``, with the same parser, range and
default.  ``EXTENDED`` does the same for memcached's ``-o key=value``
options.  Values are parsed and checked here, with messages that name where
a bad value came from (a flag, a variable or a file's key), so that every
input fails the same way.

``Settings`` has one field per ``struct sm_settings`` field an option sets
(engine.h); ``build_settings`` turns checked option values into it and has
the engine check the rules that involve several options
(``sm_settings_check``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import stackmap_core

KIB = 1024
MIB = 1024 * 1024


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


def split_listen_entry(entry: str) -> tuple[str, int | None]:
    """A ``-l`` entry (without ``notls:``) as memcached reads it: ``HOST:PORT``
    (one colon) or ``[V6]:PORT`` name their own port, ``::1`` and ``[::1]``
    none.  ValueError, with memcached's words, for a port that is not 0..65535."""
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f'Invalid IPV6 address: "{entry}"')
        port = rest[1:] if rest else None
    else:
        host, colon, port = entry.partition(":")
        if not colon or ":" in port:
            return entry, None  # no port, or a bare IPv6 address
    if port is None:
        return host, None
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f'Invalid port number: "{port}"')
    return host, int(port)


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
        split_listen_entry(part.strip().removeprefix("notls:"))
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


def parse_octal(raw: object) -> int:
    """A file mode as memcached's -a takes it: octal digits ("700", "0700"), at most 0777.

    A TOML integer is taken as the mode's value (write it 0o700).
    """
    if isinstance(raw, bool):
        raise ValueError(f"expected an octal mode like 0700, got {raw!r}")
    if isinstance(raw, int):
        if not 0 <= raw <= 0o777:
            raise ValueError(f"expected an octal mode: write it \"0700\" or 0o700, got {raw}")
        value = raw
    elif isinstance(raw, str) and re.fullmatch(r"[0-7]+", raw.strip()):
        value = int(raw.strip(), 8)
    else:
        raise ValueError(f"expected an octal mode like 0700, got {raw!r}")
    if not 0 <= value <= 0o777:
        raise ValueError(f"must be an octal mode between 0 and 777, got {value:o}")
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
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return str(int(value))  # the table's limits are doubles: 1073741824, not 1.07374e+09
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


def only(parse: Callable[[object], Any], value: float, why: str) -> Callable[[object], Any]:
    """``parse`` followed by: the one value accepted (``why`` says why)."""

    def check(raw: object) -> Any:
        got = parse(raw)
        if got != value:
            raise ValueError(f"{why}, got {_num(got)}")
        return got

    return check


def switch_only(parse: Callable[[object], Any], value: bool, why: str) -> Callable[[object], Any]:
    """``parse`` followed by: a switch that may only be ``value`` (``why`` says why)."""

    def check(raw: object) -> Any:
        got = parse(raw)
        if got != value:
            raise ValueError(why)
        return got

    return check


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
    return tuple(stackmap_core.BACKENDS)


# ---------------------------------------------------------------------------
# The option table: the engine's rows (options.h), as the control plane uses them.
# ---------------------------------------------------------------------------

TABLE: tuple[stackmap_core.OptionInfo, ...] = stackmap_core.option_table()

# How a command-line option takes its value.
VALUE = "value"  # -p 11211
FLAG = "flag"  # -C (no value; true when given)
COUNT = "count"  # -v, -vv, -vvv
LIST = "list"  # -o may be given several times

# An option type's parser of one raw value (a flag's text, a TOML value, a variable).
PARSERS: Mapping[str, Callable[[object], Any]] = {
    "int": parse_int, "mb": parse_int, "count": parse_int, "size": parse_size, "float": parse_float,
    "bool": parse_bool, "not": parse_bool, "str": parse_nonempty, "listen": parse_listen,
    "backend": choice(backend_names), "hostport": parse_hostport_off, "list": parse_str,
    "octal": parse_octal,
}
NUMERIC = frozenset({"int", "mb", "count", "size"})


def row_parser(row: stackmap_core.OptionInfo) -> Callable[[object], Any]:
    """The parser of a row's values: its type's parser and its limits."""
    base = PARSERS[row.type]
    if row.type == "float":
        above = greater_than(base, row.lo)
        return above if math.isinf(row.hi) else ranged(above, None, row.hi)
    if row.type == "bool" and row.lo == row.hi:
        return switch_only(base, bool(row.lo), row.help)
    if row.type in NUMERIC and row.scope != "refused":
        if row.lo == row.hi:
            return only(base, row.lo, row.help)
        return ranged(base, row.lo, None if math.isinf(row.hi) else row.hi)
    return base


def row_default(row: stackmap_core.OptionInfo) -> Any:
    """A row's default as a typed value; None when it has none."""
    return row_parser(row)(row.default) if row.default else None


@dataclass(frozen=True)
class Option:
    """One user-facing option: flag, config key, environment name, parser, default, doc."""

    key: str  # config-file key; the long flag is --key with '_' -> '-'
    short: str | None  # memcached's one-letter flag, e.g. "-p"
    form: str  # VALUE, FLAG, COUNT or LIST
    parse: Callable[[object], Any]  # raw value -> typed value (ValueError if bad)
    default: Any  # typed default (None: none)
    default_doc: str  # default as shown in --help and the README
    help: str  # one-line meaning
    metavar: str | None = None  # placeholder in --help
    row: stackmap_core.OptionInfo | None = None  # the engine's row it comes from

    @property
    def long(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def flags(self) -> str:
        """``-p/--port`` or ``--backend``: how messages name this option."""
        return f"{self.short}/{self.long}" if self.short else self.long

    @property
    def env(self) -> str:
        """The environment variable that sets it: ``STACKMAP_MEMORY_LIMIT``."""
        return "STACKMAP_" + self.key.upper()


def _form(row: stackmap_core.OptionInfo) -> str:
    if row.type == "count":
        return COUNT
    if row.type == "list":
        return LIST
    return FLAG if row.type in ("bool", "not") else VALUE


def _option(row: stackmap_core.OptionInfo) -> Option:
    return Option(row.key, f"-{row.flag}" if row.flag else None, _form(row), row_parser(row),
                  row_default(row), row.default, row.help, row.metavar or None, row)


OPTIONS: tuple[Option, ...] = tuple(_option(r) for r in TABLE if r.scope in ("engine", "control"))

# Options the control plane keeps for itself: build_settings leaves them out.
CONTROL_KEYS = frozenset(r.key for r in TABLE if r.scope == "control")

# Options that SIGHUP / `stackmapctl reload` apply to a running server; any
# other change needs a restart.
LIVE_KEYS = frozenset(r.key for r in TABLE if r.live)

OPTION_BY_KEY: dict[str, Option] = {o.key: o for o in OPTIONS}


@dataclass(frozen=True)
class Extended:
    """One ``-o key[=value]`` option and the sm_settings field it sets."""

    key: str  # memcached's name, e.g. "hashpower"
    field: str | None  # struct sm_settings field (None: recognised but refused)
    parse: Callable[[object], Any]  # raw value -> typed value; bare key gets True
    help: str  # one-line meaning
    default_doc: str = ""  # default as shown in --help and the README
    metavar: str = ""  # placeholder for the value ("" for a switch)
    negation: str | None = None  # bare word that sets the field false (no_lru_segmented)
    bare: bool = False  # may be given without "=value" (a switch)
    unsupported: str = ""  # why stackmapd refuses it, when field is None
    row: stackmap_core.OptionInfo | None = None  # the engine's row it comes from


def _extended(row: stackmap_core.OptionInfo) -> Extended:
    if row.scope == "refused":
        return Extended(row.key, None, row_parser(row), row.help, unsupported=row.help, row=row)
    switch = row.type == "bool"
    optional = row.metavar.startswith("[")  # "-o slab_automove" alone means slab_automove=1
    return Extended(row.key, row.field, row_parser(row), row.help, row.default, row.metavar,
                    negation=f"no_{row.key}" if switch else None, bare=switch or optional, row=row)


EXTENDED: tuple[Extended, ...] = tuple(_extended(r) for r in TABLE if r.scope in ("extended", "refused"))

# What memcached's ``no_modern`` sets, at its place in the ``-o`` list (so a
# later key wins: ``no_modern,lru_crawler`` runs the crawler,
# ``no_modern,lru_maintainer`` the maintainer).  This expansion is all
# ``modern`` is: its row sets no engine field (NOFIELD), and ``modern``
# itself changes nothing, as memcached's MODERN.  memcached also makes the
# slab page (1 MiB) its largest class there unless slab_chunk_max is given
# anywhere in the list, and -I over 1 MiB takes that back: NO_MODERN_CHUNK
# marks it until build_settings knows -I.
NO_MODERN: dict[str, Any] = {"lru_crawler": False, "lru_maintainer": False, "lru_segmented": False,
                             "slab_reassign": False, "slab_automove": 0}
NO_MODERN_CHUNK = "no_modern"


def _no_modern(out: dict[str, Any]) -> None:
    out.update(NO_MODERN)
    out.setdefault("slab_chunk_max", NO_MODERN_CHUNK)

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
            if ext.key == "modern":
                _no_modern(out)
            elif ext.key == "lru_maintainer":
                out["lru_segmented"] = False  # as memcached's NO_LRU_MAINTAINER
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
        if raw is True and ext.row is not None and ext.row.type != "bool":
            raw = "1"  # a bare optional-value key ("[N]" metavar)
        try:
            out[key] = ext.parse(raw)
        except ValueError as exc:
            raise OptionError(f"{where}: {key}: {exc}") from None
        if key == "modern" and out[key] is False:
            _no_modern(out)
        elif key == "lru_maintainer":
            out["lru_segmented"] = out[key]  # memcached's LRU_MAINTAINER segments the LRU again
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

# The rows that set a struct sm_settings field, by key.
FIELD_ROWS: dict[str, stackmap_core.OptionInfo] = {r.key: r for r in TABLE if r.field}


def _as_dict(self: Any) -> dict[str, Any]:
    return dataclasses.asdict(self)


# ``struct sm_settings`` (engine.h), one field per option that sets one.
# None: the engine's default.  slab_page_size is no option: the engine
# derives it (sm_settings_derive).
Settings: Any = dataclasses.make_dataclass(
    "Settings", [(r.field, Any, dataclasses.field(default=None)) for r in FIELD_ROWS.values()],
    namespace={"as_dict": _as_dict, "__doc__": "struct sm_settings, field for field (None: engine default)."},
)


def defaults() -> dict[str, Any]:
    """Every option at its default (the extended table empty)."""
    values = {o.key: o.default for o in OPTIONS}
    values["extended"] = {}
    return values


def field_value(row: stackmap_core.OptionInfo, value: Any) -> Any:
    """An option's checked value -> its struct sm_settings field's value."""
    if row.type == "mb":
        return value * MIB
    if row.type == "not":
        return not value
    if row.type == "backend":
        return stackmap_core.BACKENDS[value]
    return value


def build_settings(values: Mapping[str, Any]) -> Any:
    """Checked option values (see config.resolve) -> the engine's Settings.

    The engine checks the result (sm_settings_check): the rules that involve
    several options (-I at most half of -m, ...) are its own.
    """
    ext = values.get("extended") or {}
    fields = {}
    for key, row in FIELD_ROWS.items():
        value = ext.get(key) if row.scope == "extended" else values.get(key)
        if value == NO_MODERN_CHUNK:
            value = MIB if (values.get("max_item_size") or MIB) <= MIB else None
        if value is not None:
            fields[row.field] = field_value(row, value)
    settings = Settings(**fields)
    try:
        stackmap_core.check_settings(settings)
    except stackmap_core.SettingsError as exc:
        raise OptionError(str(exc)) from None
    return settings
