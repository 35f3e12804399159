"""Helpers shared by tests of several apps (fixtures stay in the `conftest.py` files)."""
