"""Side-by-side load tests of stackmapd against memcached, driven by memaslap.

The package exists so that every performance figure the project quotes comes from one
repeatable procedure (see ../shared/BENCHMARKING.md): pinned processes, a fresh server on a
fresh port per run, targets alternated A B A B, server CPU per operation taken from /proc,
foreign load measured and flagged, and results reported as medians, spreads and paired
ratios against memcached.  ``--hit-ratio`` measures the other side of a cache: hit ratio,
memory per item and CPU per request under seeded look-aside workloads.  Run it as
``python -m loadtest --help``.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
