"""VM tests (a package so that its conftest does not shadow tests/conftest.py as a module named conftest)."""
