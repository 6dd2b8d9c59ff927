"""stackmapd's control plane: command line, config file, lifecycle.

Nothing here is on the data path; it configures and supervises the C engine
through the ``stackmap_core`` facade.  The modules, each importing only
those listed before it (tests/test_imports.py forbids cycles):

- settings.py: every option once (flags, TOML keys, checks, defaults);
- config.py: config file, environment, their merge, and reloads;
- log.py: the logger and its set-up;
- snapshot.py, health.py, metrics.py, admin.py: warm restart, readiness,
  Prometheus collector, the admin operations;
- http.py: the HTTP server for /metrics, health and the admin API;
- lifecycle.py: one engine from start to a clean exit, with the above;
- cli.py (and ``python -m stackmapd``): the ``stackmapd`` command;
- ctl.py: ``stackmapctl``, a client of the admin API (imports none of them).
"""
