"""Shared test fixtures: the real models and data, found through environment variables.

``EDGE_AGENT_SHARED_DIR`` points at the shared data folder (faces, video, LFW) and
``EDGE_AGENT_MODELS`` at a model directory filled by ``make setup``; tests that need either
skip with the reason when it is unset.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _dir_from_env(name: str) -> Path:
    value = os.environ.get(name)
    if not value or not Path(value).is_dir():
        pytest.skip(f"{name} is not set to a directory")
    return Path(value)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _dir_from_env("EDGE_AGENT_SHARED_DIR")


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return _dir_from_env("EDGE_AGENT_MODELS")
