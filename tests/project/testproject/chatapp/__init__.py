"""Publishable models of the test project (tests/test_models.py)."""
