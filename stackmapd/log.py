"""stackmapd's log: one logger, on stderr, as quiet as memcached by default.

Every module logs through :data:`log`; :func:`setup_logging` is called at
start and again whenever the verbosity changes (``-v``, a reload, the admin
API), so it replaces the handler instead of adding one.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("stackmapd")


def setup_logging(verbose: int) -> None:
    """stderr, one line per event, ``stackmapd: `` prefix; -v shows info, -vv and up debug."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("stackmapd: %(message)s"))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1
                 else logging.DEBUG)
