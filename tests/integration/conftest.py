"""Integration tests use the real model cache (~/.cache/tuneforge or $TUNEFORGE_HOME), so the
built-in model is converted once per machine, not once per test run."""

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
