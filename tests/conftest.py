"""Shared fixtures. Real driving data lives in ../shared/data (non-commercial licence):
it is used by path and never copied; tests that need it skip when it is absent."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real driving data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def kitti_object(shared_data: Path) -> Path:
    path = shared_data / "kitti_object"
    if not path.is_dir():
        pytest.skip(f"KITTI object frames not found at {path}")
    return path
