"""Tests of shufflenet.deploy (a package, so its conftest does not shadow tests/conftest.py)."""
