"""Policy tests: they use the suite's hypothesis profile (see ``tests/conftest.py``)."""
