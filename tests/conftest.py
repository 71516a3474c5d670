"""Fixtures shared by the test modules."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

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


# the tiny grid the engine and job-graph tests run: 2 models at both depths + a CBR baseline, 2 epochs, 2 folds
TINY_GRID = ["--backbone", "mobilenet,cbr_tiny", "--depth", "both", "--profile", "quick", "--epochs", "2",
             "--folds", "2", "--weights", "none", "--test-fraction", "0.25"]


def cli(args, env_extra=None, **kw) -> subprocess.Popen:
    """`python -m benchmark ARGS` in a child process (output merged into stdout, text)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "benchmark", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.fixture(scope="session")
def tiny_grid(tiny_synthetic, tmp_path_factory) -> tuple[list[str], Path, str]:
    """(arguments, results directory, output) of one uninterrupted run of TINY_GRID on the local executor: the
    reference that interrupted, resumed and parallel runs must reproduce."""
    args = [*TINY_GRID, "--data", str(tiny_synthetic)]
    out = tmp_path_factory.mktemp("grid") / "uninterrupted"
    proc = cli([*args, "--out", str(out)])
    stdout, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, stdout
    return args, out, stdout


RESULTS_SMALL = Path(__file__).resolve().parent / "fixtures" / "results_small"


@pytest.fixture(scope="session")
def results_small() -> Path:
    """A tiny results directory written by `python -m benchmark` (no model weights; see its README.md)."""
    return RESULTS_SMALL


@pytest.fixture(scope="session")
def results_small_data(tiny_synthetic, tmp_path_factory) -> Path:
    """The dataset results_small was made from: tiny_synthetic as data_prep wrote the phantom before it kept its
    masks (the same images; the manifest without its mask column, byte for byte the one the fixture's runs record)."""
    import shutil

    import pandas as pd
    out = tmp_path_factory.mktemp("data") / "tiny"
    shutil.copytree(tiny_synthetic, out, ignore=shutil.ignore_patterns("masks"))
    manifest = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    manifest.drop(columns=["mask"]).to_csv(out / "manifest.csv", index=False, lineterminator="\n")
    return out


@pytest.fixture(scope="session")
def results_with_model(tmp_path_factory, results_small_data) -> Path:
    """results_small copied, with an untrained model.keras for the runs the report picks by default (best run,
    Grad-CAM run): model-dependent figures can then be drawn. The weights are random, so the maps and features
    are not those of the run; the dataset is results_small_data, the one the fixture was made from."""
    import shutil

    from benchmark import report
    from benchmark.registry import get_spec
    from benchmark.models import build_model
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
