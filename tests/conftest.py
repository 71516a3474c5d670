"""Fixtures shared by the test modules."""
from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the repository (real data, read-only); tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} not found")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> Path:
    """A small phantom dataset (8 patients, 16 stacks) for end-to-end tests of the benchmark."""
    from data_prep import synthetic
    return synthetic.generate(tmp_path_factory.mktemp("data") / "tiny", patients=8, seed=3)
