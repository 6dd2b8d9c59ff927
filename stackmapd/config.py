"""Configuration: the config file, the environment, how they meet the command line, reloads.

A config file is TOML whose keys are the long flags' names with underscores
(``port = 11211``, ``memory_limit = 64``, ``max_item_size = "2m"``,
``extended = "hashpower=20,idle_timeout=60"`` or ``[extended]`` as a table).
Values are checked by the same parsers as the command line; an unknown key
or a bad value is an error that names the file and the key.

Environment variables (for containers): every option is also
``STACKMAP_<KEY>`` in upper case (``STACKMAP_MEMORY_LIMIT=1024``,
``STACKMAP_METRICS_LISTEN=off``, ``STACKMAP_EXTENDED=hashpower=20``), and
``STACKMAP_CONFIG`` names a config file when ``--config`` is not given.
Other ``STACKMAP_*`` names are left alone (test and deploy tools use some).

Precedence: built-in defaults, then the file, then the environment, then
the command line.  The ``-o`` extended options merge key by key, so
``-o hashpower=20`` on the command line overrides only that key of the
file's ``extended``.

:func:`resolve_all` turns the command line's values (cli.py parses them),
a config file and an environment into a :class:`Loaded`; a reload (SIGHUP,
``stackmapctl reload``) calls :func:`reread` with the same command-line
values and the same file, and :func:`changes` splits what differs into the
keys that apply live (``settings.LIVE_KEYS``) and the ones that need a
restart.  Applying the live ones to the running engine is lifecycle.py's.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stackmapd.settings import (
    LIVE_KEYS,
    OPTION_BY_KEY,
    OptionError,
    Settings,
    build_settings,
    check_value,
    defaults,
)

# Keys a config file may not set: they only make sense on a command line.
_COMMAND_LINE_ONLY = {"config", "version", "help"}


def load_file(path: str | Path) -> dict[str, Any]:
    """Read and check a config file -> {option key: typed value}."""
    name = str(path)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise OptionError(f"{name}: no such config file") from None
    except OSError as exc:
        raise OptionError(f"{name}: cannot read config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise OptionError(f"{name}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # tomllib decodes the bytes first: TOML is UTF-8
        raise OptionError(f"{name}: not valid TOML: not UTF-8 text (byte {exc.start})") from None
    return check_mapping(raw, name)


def check_mapping(raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Check a parsed file's keys and values; ``name`` is used in messages."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        option = OPTION_BY_KEY.get(key)
        if option is None:
            hint = ""
            if key in _COMMAND_LINE_ONLY:
                hint = " (command line only)"
            elif key.replace("-", "_") in OPTION_BY_KEY:
                hint = f" (did you mean {key.replace('-', '_')!r}?)"
            raise OptionError(f"{name}: unknown key {key!r}{hint}")
        out[key] = check_value(option, value, f"{name}: key {key!r}")
    return out


ENV_PREFIX = "STACKMAP_"
ENV_CONFIG = "STACKMAP_CONFIG"


def env_name(key: str) -> str:
    """The environment variable of an option key: ``memory_limit`` -> ``STACKMAP_MEMORY_LIMIT``."""
    return ENV_PREFIX + key.upper()


def load_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The options set in ``environ`` (``STACKMAP_<KEY>``), parsed and checked."""
    out: dict[str, Any] = {}
    for key, option in OPTION_BY_KEY.items():
        name = env_name(key)
        if name not in environ:
            continue
        out[key] = check_value(option, environ[name], f"environment variable {name}")
    return out


def resolve(
    file_values: Mapping[str, Any],
    cli_values: Mapping[str, Any],
    env_values: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Defaults <- file <- environment <- command line; ``extended`` merges key by key."""
    values = defaults()
    for layer in (file_values, env_values or {}, cli_values):
        for key, value in layer.items():
            if key == "extended":
                values["extended"] = {**values["extended"], **value}
            else:
                values[key] = value
    return values


@dataclass
class Loaded:
    """Everything the command line, environment and config file decided."""

    values: dict[str, Any]  # every option, resolved (defaults <- file <- env <- flags)
    settings: Settings  # the engine's part
    cli_values: dict[str, Any]  # what the command line itself gave (kept for reloads)
    config_path: str | None  # the config file, if any (re-read on reload)
    explicit: frozenset[str]  # option keys set by a flag, the environment or the file


def resolve_all(cli_values: Mapping[str, Any], config: str | None, env: Mapping[str, str]) -> Loaded:
    """Command-line values, a config file and an environment -> every option, checked."""
    file_values = load_file(config) if config else {}
    env_values = load_env(env)
    values = resolve(file_values, cli_values, env_values)
    check_control(values)
    explicit = frozenset([*file_values, *env_values, *cli_values])
    return Loaded(values, build_settings(values), dict(cli_values), config, explicit)


def reread(loaded: Loaded, env: Mapping[str, str]) -> Loaded:
    """A reload: the same command line and config file, read again with ``env``."""
    return resolve_all(loaded.cli_values, loaded.config_path, env)


def changes(current: Mapping[str, Any], new: Loaded) -> tuple[list[str], list[str]]:
    """The keys whose value differs from ``current``: (live ones, ones needing a restart), sorted."""
    changed = sorted(k for k, v in new.values.items() if current.get(k) != v)
    return [k for k in changed if k in LIVE_KEYS], [k for k in changed if k not in LIVE_KEYS]


def check_control(values: Mapping[str, Any]) -> None:
    """Rules for the control plane's own options (reads the token file to check it)."""
    if values.get("admin_token") and values.get("admin_token_file"):
        raise OptionError("--admin-token and --admin-token-file: give only one of them")
    admin_token(values)
    directory = values.get("snapshot_dir")
    if directory and not os.path.isdir(directory):
        raise OptionError(f"--snapshot-dir {directory}: not a directory")


def admin_token(values: Mapping[str, Any]) -> str | None:
    """The admin bearer token: --admin-token, or the first line of --admin-token-file."""
    path = values.get("admin_token_file")
    if not path:
        return values.get("admin_token")
    try:
        with open(path, encoding="utf-8") as fh:
            token = fh.readline().strip()
    except OSError as exc:
        raise OptionError(f"--admin-token-file {path}: cannot read: {exc.strerror}") from None
    if not token:
        raise OptionError(f"--admin-token-file {path}: the file is empty")
    return token
