"""stackmapd's control plane: command line, config file, lifecycle.

Nothing here is on the data path; it configures and supervises the C engine
through the ``stackmap_core`` facade.
"""
