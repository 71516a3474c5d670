"""Regression and multi-task heads through the benchmark engine on the tiny phantom (target lv_cavity_px): CLI end to
end, the exported model in the target's units, cached == per-epoch path, selection by MAE, bad target input, and
the report of a regression results directory."""
from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd
import pytest

from benchmark import predict, report
from benchmark.__main__ import main
from benchmark.data import Dataset
from benchmark.errors import BenchmarkInputError
from benchmark.grid import make_experiment
from benchmark.jobs import Job, run_in_process
from benchmark.protocol import ModelRun, select
from benchmark.registry import get_spec
from benchmark.task import Task
from data_prep.manifest import Stack, write_dataset
from test_engine import RUN_FILES, tiny_profile

TARGET = "lv_cavity_px"
FAST = ["--profile", "quick", "--epochs", "1", "--folds", "2", "--weights", "none", "--test-fraction", "0.25",
        "--target", TARGET]
REGRESSION_KEYS = ("mae", "rmse", "r2", "mae_mean_baseline")


def exported_outputs(run_dir, ds: Dataset, preds: pd.DataFrame) -> np.ndarray:
    """What the saved model/model.keras alone predicts for the test rows, through the run's preprocessing."""
    model = keras.models.load_model(run_dir / "model" / "model.keras", compile=False)
    prep = report.run_preprocessing(report.Run(run_dir, json.loads((run_dir / "config.json").read_text())))
    rows = report.dataset_rows(ds, preds)
    return model.predict(np.stack([ds.make_input(int(r), prep) for r in rows]), verbose=0)


@pytest.fixture(scope="module")
def regression_results(tiny_synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("regression") / "out"
    code = main(["--task", "regression", "--backbone", "mobilenet", "--depth", "both", "--data", str(tiny_synthetic),
                 "--out", str(out), *FAST])
    assert code == 0
    return out


@pytest.mark.slow
def test_regression_cli_end_to_end(regression_results, tiny_synthetic):
    out = regression_results
    ds = Dataset.load(tiny_synthetic, TARGET)
    pool = ~ds.rows.patient.isin(pd.read_csv(out / "folds.csv").query("role == 'test'").patient)
    for run in ("mobilenet_d0", "mobilenet_d1"):
        d = out / run
        for f in RUN_FILES:
            assert (d / f).is_file(), (run, f)
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["task"] == "regression" and cfg["target"] == TARGET
        mean, sd = cfg["target_standardisation"]["mean"], cfg["target_standardisation"]["sd"]
        assert mean == pytest.approx(ds.rows.target[pool].mean()) and sd == pytest.approx(ds.rows.target[pool].std(ddof=0))
        preds = pd.read_csv(d / "test_predictions.csv")
        assert {"target", "prediction"} <= set(preds.columns) and not any(c.startswith("p_") for c in preds.columns)
        m = json.loads((d / "test_metrics.json").read_text())
        assert "macro_f1" not in m
        err = preds.prediction - preds.target
        assert m["mae"] == pytest.approx(err.abs().mean(), rel=1e-5)
        assert m["rmse"] == pytest.approx(np.sqrt((err ** 2).mean()), rel=1e-5)
        assert m["mae_mean_baseline"] == pytest.approx((preds.target - mean).abs().mean(), rel=1e-5)
        # the saved model alone predicts in pixels, not in standardised units
        np.testing.assert_allclose(exported_outputs(d, ds, preds)[:, 0], preds.prediction, atol=1e-3 * sd)
        hist = pd.read_csv(d / "cv_history.csv")
        assert {"val_loss", "val_mae", "val_rmse", "val_r2", "val_mae_mean_baseline"} <= set(hist.columns)
        sel = json.loads((d / "selection.json").read_text())
        fold_mean = hist.groupby(["lr", "epoch"]).val_mae.mean()
        assert sel["metric"] == "val_mae" and sel["lower_is_better"] is True
        assert sel["cv_mean"] == pytest.approx(fold_mean.min())
    summary = pd.read_csv(out / "summary.csv")
    assert (summary.status == "done").all() and (summary.task == "regression").all()
    assert set(REGRESSION_KEYS) <= set(summary.columns) and "macro_f1" not in summary.columns
    md = (out / "summary.md").read_text()
    assert "| mae | rmse | r2 | mae_mean_baseline |" in md and "f1_in" not in md


@pytest.mark.slow
def test_report_of_a_regression_results_dir(regression_results, tmp_path):
    written = {p.name for p in report.write_report(report.load_results(regression_results), tmp_path,
                                                   report.ReportOptions(n_boot=20), log=lambda s: None)}
    assert {"table2_test.csv", "table2_test.md", "fig3_curves.png", "fig4_scatter.png"} <= written
    # class figures do not apply: omitted, not drawn empty
    assert not {"fig4_confusion.png", "fig4_selection.png", "fig5_tsne.png", "fig6_gradcam.png"} & written
    t2 = pd.read_csv(tmp_path / "table2_test.csv")
    for key in REGRESSION_KEYS:
        assert t2[key].notna().all() and (t2[f"{key}_lo"] <= t2[key] + 1e-9).all()
    assert not [c for c in t2.columns if c.startswith(("f1_", "macro_f1", "auc_"))]
    md = (tmp_path / "table2_test.md").read_text()
    assert "| network | depth | weights | MAE | RMSE | R² | baseline MAE |" in md


@pytest.mark.slow
def test_multi_task_cli(tiny_synthetic, tmp_path):
    out = tmp_path / "out"
    assert main(["--task", "multi", "--backbone", "mobilenet", "--depth", "0", "--data", str(tiny_synthetic),
                 "--out", str(out), *FAST]) == 0
    d = out / "mobilenet_d0"
    m = json.loads((d / "test_metrics.json").read_text())
    for key in ("macro_f1", "accuracy", "f1_in", "auc_micro", *REGRESSION_KEYS):
        assert key in m
    assert json.loads((d / "selection.json").read_text())["metric"] == "val_macro_f1"
    preds = pd.read_csv(d / "test_predictions.csv")
    assert {"label", "prediction", "p_OAP", "p_IN", "p_OBS", "target", "target_prediction"} <= set(preds.columns)
    cfg = json.loads((d / "model" / "model.json").read_text())
    assert cfg["outputs"] == ["p_OAP", "p_IN", "p_OBS", TARGET] and cfg["task"] == "multi"
    ds = Dataset.load(tiny_synthetic, TARGET)
    outputs = exported_outputs(d, ds, preds)
    np.testing.assert_allclose(outputs[:, :3], preds[["p_OAP", "p_IN", "p_OBS"]], atol=1e-4)
    np.testing.assert_allclose(outputs[:, 3], preds.target_prediction, atol=1e-2)
    hist = pd.read_csv(d / "cv_history.csv")
    assert {"val_macro_f1", "val_accuracy", "val_mae", "val_r2"} <= set(hist.columns)


@pytest.mark.slow
def test_regression_cached_equals_per_epoch_path_without_augmentation(tiny_synthetic, tmp_path):
    """Depth 0 only: what differs from a classifier is the head, and the depth-1 paths are task-blind (the classifier
    test in test_engine.py covers both depths)."""
    depth = 0
    profile = tiny_profile(rotation_deg=0.0, cache_dtype="float32")
    results = []
    for use_cache in (True, False):
        exp = make_experiment(tiny_synthetic, profile, 0, tmp_path / str(use_cache), "none", use_cache=use_cache,
                              test_fraction=0.25, task="regression", target=TARGET)
        run = ModelRun(exp, get_spec("mobilenet"), depth)
        hist = run.cv_job(profile.lr_depth0[0], 0)
        results.append((hist, run))
    (h_cached, r_cached), (h_plain, r_plain) = results
    assert (r_cached.spec.exp.factors == 1).all()  # no oversampling of outer classes for a regression
    for col in ("loss", "val_loss", "val_mae"):
        np.testing.assert_allclose(h_cached[col], h_plain[col], rtol=1e-4)
    x = np.stack([r_plain.spec.exp.ds.make_input(r, r_plain.spec.prep) for r in r_plain.spec.exp.test])
    np.testing.assert_allclose(r_cached.network().model.predict(x, verbose=0),
                               r_plain.network().model.predict(x, verbose=0),
                               atol=1e-4 * r_cached.spec.task.sd)


@pytest.mark.slow
def test_cbr_regression_from_scratch(tiny_synthetic, tmp_path):
    """A CBR baseline trains every layer: its fresh per-job model must carry the regression head and rescale too.
    LR 1e-3: at the quick profile's 1e-2 the from-scratch MSE blows up on this tiny phantom."""
    profile = tiny_profile(epochs=1, per_backbone={"cbr": {"epochs": 1, "lr_cbr": (1e-3,)}})
    exp = make_experiment(tiny_synthetic, profile, 0, tmp_path, "none", use_cache=True, test_fraction=0.25,
                          task="regression", target=TARGET)
    run_in_process(exp, Job("cbr_tiny", 0, "test"))
    m = json.loads((tmp_path / "cbr_tiny" / "test_metrics.json").read_text())
    assert all(np.isfinite(m[k]) for k in REGRESSION_KEYS)
    preds = pd.read_csv(tmp_path / "cbr_tiny" / "test_predictions.csv")
    np.testing.assert_allclose(exported_outputs(tmp_path / "cbr_tiny", exp.ds, preds)[:, 0], preds.prediction,
                               atol=1e-3 * exp.task.sd)


def test_select_by_lowest_mae():
    hist = pd.DataFrame({"lr": [0.1] * 4 + [0.01] * 4, "fold": [0, 0, 1, 1] * 2, "epoch": [1, 2] * 4,
                         "val_mae": [5.0, 3.0, 7.0, 3.0, 4.0, 4.0, 4.0, 2.0], "diverged": False})
    # fold means: lr 0.1 -> epoch 1: 6, epoch 2: 3; lr 0.01 -> epoch 1: 4, epoch 2: 3 (tie: grid order)
    sel = select(hist, "mae", [0.1, 0.01], 2, lower_is_better=True)
    assert (sel["lr"], sel["epochs"], sel["cv_mean"]) == (0.1, 2, 3.0)
    assert select(hist, "mae", [0.1, 0.01], 2)["cv_mean"] == 6.0  # highest, for a score


def test_task_loss_on_hand_values():
    reg = Task("regression", ("OAP", "IN", "OBS"), TARGET, mean=100.0, sd=2.0)
    y, out = np.array([[10.0], [20.0]], np.float32), np.array([[13.0], [19.0]], np.float32)
    assert float(reg.loss(y, out)) == pytest.approx(((3 / 2) ** 2 + (1 / 2) ** 2) / 2)
    multi = Task("multi", ("A", "B"), TARGET, mean=0.0, sd=1.0)
    y = np.array([[1, 0, 4.0]], np.float32)
    out = np.array([[0.25, 0.75, 6.0]], np.float32)
    assert float(multi.loss(y, out)) == pytest.approx(-np.log(0.25) + 4.0, rel=1e-6)
    scores = multi.scores(y, out, train_mean=5.0)
    assert scores["val_loss"] == pytest.approx(-np.log(0.25) + 4.0, rel=1e-6)
    assert scores["val_mae"] == 2.0 and scores["val_mae_mean_baseline"] == 1.0 and scores["val_accuracy"] == 0.0


@pytest.fixture(scope="module")
def odd_targets(tmp_path_factory):
    """8 patients with a usable target, a text column and a constant one."""
    rng = np.random.default_rng(0)
    stacks = [Stack(f"p{i}", "ED", [rng.integers(0, 999, (16, 16)).astype(np.uint16) for _ in range(3)],
                    ["OAP", "IN", "OBS"], ["a", "b", "c"],
                    extra={"area": [0, 10 + i, 0], "note": ["x", "5", "y"], "const": [7, 7, 7]})
              for i in range(8)]
    return write_dataset(tmp_path_factory.mktemp("odd") / "odd", "odd", stacks, source="test")


@pytest.mark.parametrize("case", ["missing", "text", "constant", "no_target", "target_for_classes"])
def test_bad_target_one_clear_message(case, odd_targets, tmp_path, capsys):
    out = tmp_path / "out"
    args, expected = {
        "missing": (["--task", "regression", "--target", "volume"], "no column 'volume' for --target"),
        "text": (["--task", "multi", "--target", "note"], "column 'note' is not numeric: 16 of 24"),
        "constant": (["--task", "regression", "--target", "const"], "target column 'const' is constant (7)"),
        "no_target": (["--task", "regression"], "--task regression needs --target COLUMN"),
        "target_for_classes": (["--target", "area"], "--target area is for --task regression or multi"),
    }[case]
    code = main(["--data", str(odd_targets), "--out", str(out), "--epochs", "1", "--folds", "2", *args])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and err.count("error:") == 1, err
    assert not list(out.glob("**/*.*")) and not list(out.glob("**/DONE"))  # not even folds.csv


@pytest.mark.slow
def test_predict_refuses_a_regression_model(regression_results):
    with pytest.raises(BenchmarkInputError, match="a regression model of 'lv_cavity_px'; predict needs a slice"):
        predict.read_model_json(regression_results / "mobilenet_d0" / "model")
