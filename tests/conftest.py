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


RESULTS_SMALL = Path(__file__).resolve().parent / "fixtures" / "results_small"


@pytest.fixture(scope="session")
def results_small() -> Path:
    """A tiny results directory written by `python -m benchmark` (no model weights; see its README.md)."""
    return RESULTS_SMALL


@pytest.fixture(scope="session")
def results_with_model(tmp_path_factory, tiny_synthetic) -> Path:
    """results_small copied, with an untrained model.keras for the runs the report picks by default (best run,
    Grad-CAM run): model-dependent figures can then be drawn. The weights are random, so the maps and features
    are not those of the run; the dataset is tiny_synthetic, the one the fixture was made from."""
    import shutil

    from benchmark import report
    from benchmark.registry import build_model, get_spec
    out = tmp_path_factory.mktemp("results") / "results_small"
    shutil.copytree(RESULTS_SMALL, out)
    results = report.load_results(out)
    for run in {results.best().name: results.best(), report.default_cam_run(results).name:
                report.default_cam_run(results)}.values():
        spec = get_spec(run.config["backbone"])
        model = build_model(spec, run.input_px, len(run.classes), weights=None, seed=0)
        (run.dir / "model").mkdir(exist_ok=True)
        model.save(run.dir / "model" / "model.keras")
    return out
