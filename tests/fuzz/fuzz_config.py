"""Coverage-guided fuzzer (atheris) for the config file and environment loaders.

Why: a config file or a ``STACKMAP_*`` variable is operator input that the
server trusts to start; every malformed value must come back as an
``OptionError`` that names the file (or variable) and the key, never as a
traceback, and whatever passes the Python checks must either create an
engine or be refused by the engine's own check with a clear error.

The input's first byte picks the mode: even -> the rest is a TOML file given
to ``stackmapd.config.load_file``; odd -> the rest is ``KEY=value`` lines
given to ``stackmapd.config.load_env`` as ``STACKMAP_<KEY>`` variables.  Both
then go through ``resolve`` and ``build_settings`` and, when the hash table
is small enough to allocate here, into ``stackmap_core.Engine`` (created,
never started).  Any other exception is a finding.

Run: ``python tests/fuzz/fuzz_config.py [libFuzzer flags] CORPUS_DIR...``
(see tests/fuzz/README.md; ``make fuzz`` does it).
"""

from __future__ import annotations

from typing import Any

import atheris
from atheris_main import fuzz_main, scratch_file

with atheris.instrument_imports():
    from stackmapd import config, settings
    from stackmapd.settings import OptionError

from stackmap_core import Engine, EngineError, SettingsError  # noqa: E402  (C: not instrumented)

# Engines with a larger initial hash table than this are not created (memory).
HASHPOWER_MAX = 24
# Memory limit (MB) above which no engine is created (the cache reserves address space).
MEMORY_MAX_MB = 1 << 16

_PATH = scratch_file("fuzz-config-", "stackmapd.toml")


def _env_from(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        env[config.ENV_PREFIX + key.strip().upper()] = value
    return env


def _engine(values: dict[str, Any]) -> None:
    try:
        built = settings.build_settings(values)
    except OptionError:
        return
    if (built.hashpower_init or 0) > HASHPOWER_MAX or values["memory_limit"] > MEMORY_MAX_MB:
        return
    try:
        with Engine(built):
            pass
    except (SettingsError, EngineError) as exc:
        if not str(exc):
            raise AssertionError("the engine refused the settings without a reason") from None


def test_one(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    if mode % 2 == 0:
        _PATH.write_bytes(body)
        try:
            file_values = config.load_file(_PATH)
        except OptionError as exc:
            if not str(exc).startswith(str(_PATH)):
                raise AssertionError(f"error does not name the file: {exc}") from None
            return
        env_values: dict[str, Any] = {}
    else:
        environ = _env_from(body.decode("utf-8", "surrogateescape"))
        file_values = {}
        try:
            env_values = config.load_env(environ)
        except OptionError as exc:
            if "environment variable STACKMAP_" not in str(exc):
                raise AssertionError(f"error does not name the variable: {exc}") from None
            return
    values = config.resolve(file_values, {}, env_values)
    _engine(values)


def main() -> None:
    fuzz_main(test_one)


if __name__ == "__main__":
    main()
