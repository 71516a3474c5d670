"""The benchmark engine end to end on a tiny phantom dataset: CLI, results layout, cached == per-epoch path,
augmentation only in training, resume after kill -9, determinism (bad input: test_bad_inputs.py)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from benchmark.grid import make_experiment
from benchmark.profiles import get_profile
from benchmark.fits import parallel_fits
from benchmark.jobs import Job, run_in_process, start_head, start_of
from benchmark.protocol import ModelRun
from benchmark.registry import get_spec
from benchmark.run_spec import RunSpec

RUN_FILES = ["config.json", "folds.csv", "cv_history.csv", "selection.json", "test_predictions.csv",
             "test_metrics.json", "timing.json", "model/model.keras", "model/model.json", "DONE"]


def tiny_profile(**kw):
    base = dict(epochs=3, n_folds=2, input_sizes={"mobilenet": 32, "cbr_tiny": 16})
    return get_profile("quick").with_overrides(**{**base, **kw})


@pytest.mark.slow
def test_cli_end_to_end(tiny_grid):
    """The uninterrupted tiny grid (conftest): results layout, summary, metrics, provenance, no-leak fold models."""
    args, a, _ = tiny_grid
    for run in ("mobilenet_d0", "mobilenet_d1", "cbr_tiny"):
        for f in RUN_FILES:
            assert (a / run / f).is_file(), (run, f)
    summary = pd.read_csv(a / "summary.csv")
    assert list(summary.run) == ["mobilenet_d0", "mobilenet_d0+stack", "mobilenet_d1", "cbr_tiny", "baseline_every_in",
                                 "baseline_position"]
    assert list(summary.status) == ["done"] * 4 + ["baseline"] * 2
    # beats_constant: the paired interval of the out-of-fold exact-range difference from every slice IN is above 0
    runs = summary[summary.status == "done"]
    assert (runs.beats_constant == (runs.oof_vs_constant_range_exact_lo > 0)).all()
    for run in ("mobilenet_d0", "mobilenet_d0+stack"):
        sel = json.loads((a / run / "selection.json").read_text())
        assert sel["decoding"]["tuned_on"] == "out-of-fold validation predictions"
    stack_model = a / "mobilenet_d0+stack" / "model"
    assert {p.name for p in stack_model.iterdir()} >= {"model.keras", "stack.keras", "model.json"}
    metrics = json.loads((a / "mobilenet_d1" / "test_metrics.json").read_text())
    for key in ("f1_oap", "f1_in", "f1_obs", "macro_f1", "accuracy", "soft_accuracy", "auc_micro", "auc_weighted",
                "support_oap", "support_in", "support_obs"):
        assert key in metrics
    cfg = json.loads((a / "mobilenet_d1" / "config.json").read_text())
    assert cfg["data"]["manifest_sha256"] and cfg["code_version"] and cfg["versions"]["keras"]
    # depth-1 folds started from depth-0 fold models, rebuilt at the depth-0 selection
    assert sorted(p.name for p in (a / "mobilenet_d0" / "jobs").glob("foldinit_f*")) == ["foldinit_f0",
                                                                                          "foldinit_f1"]
    timing = json.loads((a / "mobilenet_d0" / "timing.json").read_text())
    assert timing["feature_pass_s"] > 0 and timing["cv_s"] > 0 and timing["foldinit_s"] > 0
    assert timing["total_s"] == pytest.approx(sum(timing[k] for k in ("feature_pass_s", "cv_s", "foldinit_s",
                                                                       "final_s", "test_s")))


@pytest.mark.slow
@pytest.mark.parametrize("depth", [0, 1])
def test_cached_equals_per_epoch_path_without_augmentation(tiny_synthetic, tmp_path, depth):
    profile = tiny_profile(rotation_deg=0.0, cache_dtype="float32")
    results = []
    for use_cache in (True, False):
        exp = make_experiment(tiny_synthetic, profile, 0, tmp_path / str(use_cache), "none", use_cache=use_cache,
                              test_fraction=0.25)
        lr = profile.lr_depth1[0] if depth else profile.lr_depth0[0]
        cv = Job("mobilenet", depth, "cv", lr, 0)
        if depth:  # the depth-0 fold model it starts from, made on the same path
            run_in_process(exp, start_of(cv))
        run = ModelRun(exp, get_spec("mobilenet"), depth)
        hist = run.cv_job(lr, 0, start=start_head(exp, cv))
        results.append((hist, run))
    (h_cached, r_cached), (h_plain, r_plain) = results
    np.testing.assert_allclose(h_cached.loss, h_plain.loss, rtol=1e-4)
    np.testing.assert_allclose(h_cached.val_loss, h_plain.val_loss, rtol=1e-4)
    x = np.stack([r_plain.spec.exp.ds.make_input(r, r_plain.spec.prep) for r in r_plain.spec.exp.test])
    np.testing.assert_allclose(r_cached.network().model.predict(x, verbose=0),
                               r_plain.network().model.predict(x, verbose=0), atol=1e-4)


@pytest.mark.slow
def test_augmentation_never_touches_validation_or_test(tiny_synthetic, tmp_path, monkeypatch):
    """Per-epoch path: training slots come from the fold's training rows only; validation inputs are unrotated."""
    import benchmark.fits as fits
    seen = []
    real_fit = fits.fit

    def spy(model, inputs, slots, y, s, task, *, val_rows=None, desc="", **kw):
        seen.append((desc, slots.rows.copy(), None if val_rows is None else inputs.plain(val_rows)[0]))
        return real_fit(model, inputs, slots, y, s, task, val_rows=val_rows, desc=desc, **kw)

    monkeypatch.setattr(fits, "fit", spy)
    exp = make_experiment(tiny_synthetic, tiny_profile(epochs=1), 0, tmp_path, "none", use_cache=False,
                          test_fraction=0.25)
    run = RunSpec.of(exp, get_spec("mobilenet"), 0)
    run_in_process(exp, Job("mobilenet", 0, "test"))
    (_, rows, val_x), = [s for s in seen if s[0].endswith("cv_lr0.001_f1")]
    tr, va = exp.folds[1]
    assert set(rows) <= set(tr) and not set(rows) & (set(va) | set(exp.test))
    np.testing.assert_array_equal(val_x, np.stack([exp.ds.make_input(r, run.prep, 0.0) for r in va]))
    preds = pd.read_csv(run.dir / "test_predictions.csv")
    assert len(preds) == len(exp.test) and set(preds.patient) == set(exp.ds.rows.patient[exp.test])


@pytest.mark.slow
def test_resume_after_the_final_fit_uses_the_saved_model(tiny_synthetic, tmp_path):
    """Killed after the final model was saved but before the test: the resumed test uses the saved model."""
    exp = make_experiment(tiny_synthetic, tiny_profile(epochs=2), 0, tmp_path, "none", use_cache=True,
                          test_fraction=0.25)
    run_dir = tmp_path / "mobilenet_d0"
    run_in_process(exp, Job("mobilenet", 0, "test"))
    first = json.loads((run_dir / "test_metrics.json").read_text())
    for name in ("DONE", "test_metrics.json", "test_predictions.csv"):
        (run_dir / name).unlink()
    run_in_process(exp, Job("mobilenet", 0, "test"))
    again = json.loads((run_dir / "test_metrics.json").read_text())
    assert json.dumps(again, sort_keys=True) == json.dumps(first, sort_keys=True)


def test_results_from_other_settings_are_refused(tiny_synthetic, tmp_path):
    """A run directory is reused only for the same settings; the data may have moved, its content may not change."""
    from data_prep import atomic
    from benchmark.errors import BenchmarkInputError

    def run_for(seed, data=tiny_synthetic):
        exp = make_experiment(data, tiny_profile(), seed, tmp_path / "out", "none", use_cache=True,
                              test_fraction=0.25)
        return RunSpec.of(exp, get_spec("mobilenet"), 0)

    first = run_for(0)
    atomic.write_json(first.dir / "config.json", first.config())
    moved = tmp_path / "moved"
    shutil.copytree(tiny_synthetic, moved)
    assert run_for(0, moved).check_dir(force=False) is False  # same content elsewhere: resumable, not done
    with pytest.raises(BenchmarkInputError, match=r"other settings \(.*seed"):
        run_for(2).check_dir(force=False)  # (seed 1's folds leave one fold without an OAP training slice)
    cfg = json.loads((first.dir / "config.json").read_text())
    cfg["results_format"] = 0
    (first.dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BenchmarkInputError, match="results format 0"):
        run_for(0).check_dir(force=False)


@pytest.mark.slow
def test_cv_fits_in_threads_equal_fits_one_at_a_time(tiny_synthetic, tmp_path):
    """Cached depth-0 CV fits run two at a time in threads (each with its own copy of the head and its own
    Trainer) give exactly the histories and the selection of fits run one after another."""
    results = {}
    for threads in (1, 2):
        profile = tiny_profile(lr_depth0=(1e-2, 1e-3), cv_threads=threads, input_sizes={"resnet50v2": 32})
        exp = make_experiment(tiny_synthetic, profile, 0,
                              tmp_path / str(threads), "none", use_cache=True, test_fraction=0.25,
                              cache_dir=tmp_path / "cache")
        run = ModelRun(exp, get_spec("resnet50v2"), 0)  # random-init features that are not ~0, unlike MobileNet's
        assert parallel_fits(exp, get_spec("resnet50v2"), 0, fit_threads=True) == threads
        run.cv_sweep(threads)
        sel = run.selection()
        jobs = [json.loads(p.read_text()) for p in sorted(run.spec.dir.glob("jobs/cv_*/job.json"))]
        assert len(jobs) == 4 and {j["concurrent_fits"] for j in jobs} == {threads}
        results[threads] = pd.read_csv(run.spec.dir / "cv_history.csv"), sel
    pd.testing.assert_frame_equal(results[1][0], results[2][0])
    assert results[1][1] == results[2][1]
    assert results[1][0].val_loss.notna().all() and results[1][0].val_loss.nunique() > 4  # real, varied fits
