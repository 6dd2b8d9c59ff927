"""setuptools hook for the cffi extension.

Everything declarative lives in pyproject.toml.  ``cffi_modules`` is a
setup() keyword that cffi adds to setuptools and has no pyproject.toml
spelling, so it is passed here: it runs stackmap_core/_build.py, which
compiles the C core into ``stackmap_core._stackmap_core``.
"""

from setuptools import setup

setup(cffi_modules=["stackmap_core/_build.py:ffibuilder"])
