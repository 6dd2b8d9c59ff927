"""The ``stackmapd`` command: memcached's flags, a config file, then serve.

The flags, their defaults and their checks come from ``settings.OPTIONS``;
this module only turns that table into an argparse parser, merges the
command line with ``--config`` (config.py) and hands the result to the
lifecycle (lifecycle.py).

Exit status: 0 after a clean stop, 64 (EX_USAGE, as memcached) for any bad
flag, value or config file, 71 (EX_OSERR) when the engine cannot start
(e.g. the port is taken).  ``-h`` prints help and exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NoReturn

import stackmap_core
from stackmapd.config import ENV_CONFIG, Loaded, resolve_all
from stackmapd.lifecycle import EX_USAGE, serve
from stackmapd.settings import (
    COUNT,
    EXTENDED,
    FLAG,
    LIST,
    LIVE_KEYS,
    OPTION_BY_KEY,
    OPTIONS,
    OptionError,
    Settings,
    check_value,
)

PROG = "stackmapd"


class UsageParser(argparse.ArgumentParser):
    """argparse, but bad usage exits 64 (EX_USAGE) like memcached, not 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


class VersionAction(argparse.Action):
    """``-V/--version``: the package's and the engine's version, then exit 0."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs["default"] = argparse.SUPPRESS
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(version_text())
        parser.exit(0)


def version_text() -> str:
    try:
        pkg = version("stackmapd")
    except PackageNotFoundError:
        pkg = "unknown"
    backends = ", ".join(b for b in stackmap_core.built_backends() if b != "auto")
    return f"{PROG} {pkg} (engine {stackmap_core.version()}; backends built in: {backends})"


def _extended_epilog() -> str:
    lines = ["extended options (-o key[=value],...; several -o may be given):"]
    for ext in EXTENDED:
        if ext.field is None:
            continue
        name = f"{ext.key}[=0|1]" if ext.bare else f"{ext.key}={ext.metavar}"
        if ext.negation:
            name += f", {ext.negation}"
        shown = f" (default: {ext.default_doc})" if ext.default_doc else ""
        lines.append(f"  {name:38} {ext.help}{shown}")
    live = sorted(LIVE_KEYS)
    lines += [
        "",
        "config file (--config FILE, TOML): every long flag is a key with '_' for '-',",
        '  e.g. port = 11211, memory_limit = 64, max_item_size = "2m",',
        '  extended = "hashpower=20"; every key is also an environment variable',
        "  STACKMAP_<KEY> (STACKMAP_MEMORY_LIMIT=1024; STACKMAP_CONFIG=FILE);",
        "  precedence: flag > environment > file > default.",
        "",
        *textwrap.wrap(f"SIGHUP (or `stackmapctl reload`) re-reads the config and applies "
                       f"{', '.join(live[:-1])} and {live[-1]} live.", width=79),
    ]
    return "\n".join(lines)


class JoinListen(argparse.Action):
    """-l given again adds its addresses to the list, as memcached joins them."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        before = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, f"{before},{values}" if before else values)


def build_parser() -> UsageParser:
    parser = UsageParser(
        prog=PROG,
        description="A drop-in memcached 1.6 server with a ring-based data path.",
        epilog=_extended_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    for opt in OPTIONS:
        names = [n for n in (opt.short, opt.long) if n]
        shown = f" (default: {opt.default_doc})" if opt.default_doc else ""
        if opt.form == FLAG:
            parser.add_argument(*names, dest=opt.key, action="store_true", help=opt.help)
        elif opt.form == COUNT:
            parser.add_argument(*names, dest=opt.key, action="count", help=opt.help)
        elif opt.form == LIST:
            parser.add_argument(*names, dest=opt.key, action="append",
                                metavar=opt.metavar, help=opt.help)
        elif opt.row is not None and opt.row.type == "listen":
            parser.add_argument(*names, dest=opt.key, metavar=opt.metavar, action=JoinListen,
                                help=opt.help + shown + "; given again, the lists join (as memcached's -l)")
        else:
            parser.add_argument(*names, dest=opt.key, metavar=opt.metavar,
                                help=opt.help + shown)
    parser.add_argument("--config", metavar="FILE",
                        help="read options from a TOML file (command-line flags win)")
    parser.add_argument("-V", "--version", action=VersionAction,
                        help="print the version and exit")
    return parser


def command_line_values(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line, parsed and checked."""
    out: dict[str, Any] = {}
    for key, raw in vars(args).items():
        if key == "config":
            continue
        opt = OPTION_BY_KEY[key]
        if opt.form == FLAG:
            out[key] = True
        elif opt.form == COUNT:
            out[key] = min(raw, 3)  # memcached treats -vvvv like -vvv
        else:
            out[key] = check_value(opt, raw, opt.flags)
    return out


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Loaded:
    """Command line, ``STACKMAP_*`` environment and config file -> resolved options.

    Raises OptionError for bad values; argparse itself exits 64 for unknown
    flags or missing values, and 0 for -h / -V.
    """
    args = build_parser().parse_args(argv)
    cli_values = command_line_values(args)
    env = os.environ if environ is None else environ
    config = getattr(args, "config", None) or env.get(ENV_CONFIG) or None
    return resolve_all(cli_values, config, env)


def parse(argv: Sequence[str] | None = None) -> Settings:
    """Command line (with environment and --config file) -> engine Settings."""
    return load(argv).settings


def main(argv: Sequence[str] | None = None) -> int:
    try:
        loaded = load(argv)
    except OptionError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EX_USAGE
    return serve(loaded.settings, loaded)


if __name__ == "__main__":
    sys.exit(main())
