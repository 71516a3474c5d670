"""The protocol's parts on hand-made inputs: selection, the job graph's dependencies, fit plans, the test scores,
the config identity of a run folder, and the head a depth-0 fit hands to depth 1."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.data import Dataset
from benchmark.decode import Decoding
from benchmark.errors import BenchmarkInputError
from benchmark.evaluate import evaluate
from benchmark.fits import cv_plan, final_plan, foldinit_plan, load_head, parallel_fits, save_head
from benchmark.grid import make_experiment
from benchmark.jobs import Job, build_graph, markers, start_head, start_of
from benchmark.profiles import get_profile
from benchmark.protocol import select
from benchmark.registry import get_spec
from benchmark.run_spec import RunSpec, check_run_dir
from benchmark.task import Task

CLASSES = ("OAP", "IN", "OBS")


# ---- select ---------------------------------------------------------------------------------------------------------
def history(values: dict[float, list[list[float]]], diverged: dict[float, int] = {}) -> pd.DataFrame:
    """A CV history: values[lr][fold][epoch - 1] as val_macro_f1; diverged[lr]: the fold that diverged."""
    rows = [{"lr": lr, "fold": k, "epoch": e + 1, "val_macro_f1": v, "diverged": diverged.get(lr) == k}
            for lr, folds in values.items() for k, per_epoch in enumerate(folds) for e, v in enumerate(per_epoch)]
    return pd.DataFrame(rows)


def test_select_takes_the_best_fold_mean_and_breaks_ties_by_fewer_epochs_then_the_grid_order():
    hist = history({0.01: [[0.5, 0.7, 0.7], [0.5, 0.9, 0.9]],    # epochs 2 and 3 tie at 0.8
                    0.001: [[0.6, 0.8, 0.6], [0.6, 0.8, 0.6]]})  # epoch 2 ties with 0.01's
    sel = select(hist, "macro_f1", [0.01, 0.001], 2)
    assert (sel["lr"], sel["epochs"], sel["cv_mean"]) == (0.01, 2, pytest.approx(0.8))
    assert sel["cv_sd"] == pytest.approx(np.std([0.7, 0.9], ddof=1))
    # the grid's order, not the LR's value, breaks the remaining tie
    assert select(hist, "macro_f1", [0.001, 0.01], 2)["lr"] == 0.001
    assert sel["metric"] == "val_macro_f1" and sel["diverged_lrs"] == [] and sel["lower_is_better"] is False


def test_select_excludes_an_lr_with_a_diverged_fold_and_epochs_not_scored_on_every_fold():
    hist = history({0.1: [[0.99], [0.98]], 0.01: [[0.5, 0.6], [0.5, 0.6]]}, diverged={0.1: 1})
    sel = select(hist, "macro_f1", [0.1, 0.01], 2)
    assert (sel["lr"], sel["epochs"], sel["diverged_lrs"]) == (0.01, 2, [0.1])
    hist.loc[(hist.lr == 0.01) & (hist.fold == 0) & (hist.epoch == 2), "val_macro_f1"] = np.nan
    assert select(hist, "macro_f1", [0.1, 0.01], 2)["epochs"] == 1
    every = history({0.1: [[0.5], [0.5]]}, diverged={0.1: 0})
    with pytest.raises(RuntimeError, match="every learning rate diverged"):
        select(every, "macro_f1", [0.1], 2)


def test_select_lowest_when_lower_is_better():
    hist = history({0.01: [[3.0, 1.0], [3.0, 2.0]], 0.001: [[2.0, 2.5], [2.0, 2.5]]}).rename(
        columns={"val_macro_f1": "val_mae"})
    sel = select(hist, "mae", [0.01, 0.001], 2, lower_is_better=True)
    assert (sel["lr"], sel["epochs"], sel["cv_mean"], sel["lower_is_better"]) == (0.01, 2, 1.5, True)


# ---- the job graph --------------------------------------------------------------------------------------------------
@pytest.fixture()
def exp(tiny_synthetic, tmp_path):
    profile = get_profile("quick").with_overrides(epochs=1, n_folds=2, input_sizes={"mobilenet": 32})
    return make_experiment(tiny_synthetic, profile, 0, tmp_path / "out", "none", use_cache=True, test_fraction=0.25)


def ordered(graph) -> bool:
    order = list(graph)
    return all(order.index(d) < order.index(j) for j, deps in graph.items() for d in deps)


def test_depth0_graph(exp):
    graph = build_graph(exp, [("mobilenet", 0)])
    feats, select_, final = (Job("mobilenet", 0, s) for s in ("features", "select", "final"))
    cv = [Job("mobilenet", 0, "cv", lr, k) for lr in (1e-2, 1e-3) for k in (0, 1)]
    assert all(graph[j] == (feats,) for j in cv) and set(graph[select_]) == set(cv)
    assert graph[final] == (select_,) and graph[Job("mobilenet", 0, "test")] == (final,)
    assert graph[Job("mobilenet", 0, "stack")] == (feats, final)
    assert not any(j.step in ("foldinit", "cv_sweep") for j in graph) and ordered(graph)


def test_depth1_gets_its_start_models_from_the_graph(exp):
    graph = build_graph(exp, [("mobilenet", 1)])
    d0_select = Job("mobilenet", 0, "select")
    for k in (0, 1):
        foldinit = Job("mobilenet", 0, "foldinit", fold=k)
        assert graph[foldinit] == (d0_select,)
        cv = Job("mobilenet", 1, "cv", 1e-3, k)
        assert start_of(cv) == foldinit and graph[cv] == (Job("mobilenet", 1, "features"), foldinit)
    final = Job("mobilenet", 1, "final")
    assert start_of(final) == Job("mobilenet", 0, "final")
    assert graph[final] == (Job("mobilenet", 1, "select"), Job("mobilenet", 0, "final"))
    assert start_of(Job("mobilenet", 0, "cv", 1e-3, 0)) is None and start_of(Job("mobilenet", 1, "test")) is None
    assert ordered(graph)


def test_cbr_and_per_epoch_graphs(tiny_synthetic, tmp_path, exp):
    cbr = build_graph(exp, [("cbr_tiny", 0)])
    assert {j.lr for j in cbr if j.step == "cv"} == set(exp.profile.for_backbone(get_spec("cbr_tiny")).lr_cbr)
    assert {j.step for j in cbr} == {"features", "cv", "select", "final", "test"}  # no stack, no fold models
    plain = make_experiment(tiny_synthetic, exp.profile, 0, tmp_path / "plain", "none", use_cache=False,
                            test_fraction=0.25)
    graph = build_graph(plain, [("mobilenet", 1)])
    assert not any(j.step in ("features", "stack") for j in graph)
    assert graph[Job("mobilenet", 0, "cv", 1e-2, 0)] == ()
    assert graph[Job("mobilenet", 1, "cv", 1e-3, 0)] == (Job("mobilenet", 0, "foldinit", fold=0),)


def test_a_threaded_sweep_is_one_node_where_the_executor_allows_threads(tiny_synthetic, tmp_path):
    profile = get_profile("quick").with_overrides(epochs=1, n_folds=2, cv_threads=2, input_sizes={"mobilenet": 32})
    exp = make_experiment(tiny_synthetic, profile, 0, tmp_path / "out", "none", use_cache=True, test_fraction=0.25)
    graph = build_graph(exp, [("mobilenet", 1)], fit_threads=True)
    sweep = Job("mobilenet", 0, "cv_sweep")
    assert graph[sweep] == (Job("mobilenet", 0, "features"),)
    assert graph[Job("mobilenet", 0, "select")] == (sweep,)
    assert not any(j.step == "cv" and j.depth == 0 for j in graph)
    assert sum(j.step == "cv" and j.depth == 1 for j in graph) == 2  # depth-1 fits train blocks: one per job
    assert markers(exp, sweep) == [markers(exp, Job("mobilenet", 0, "cv", lr, k))[0]
                                   for lr in (1e-2, 1e-3) for k in (0, 1)]
    assert not any(j.step == "cv_sweep" for j in build_graph(exp, [("mobilenet", 1)]))  # worker processes


def test_parallel_fits(tiny_synthetic, tmp_path, exp):
    mobilenet = get_spec("mobilenet")
    assert parallel_fits(exp, mobilenet, 0, fit_threads=True) == 1  # fits too short to gain from threads
    threaded = make_experiment(tiny_synthetic, exp.profile.with_overrides(cv_threads=3), 0, tmp_path / "t", "none",
                               use_cache=True, test_fraction=0.25)
    assert parallel_fits(threaded, mobilenet, 0, fit_threads=True) == 3
    assert parallel_fits(threaded, mobilenet, 0, fit_threads=False) == 1
    assert parallel_fits(threaded, mobilenet, 1, fit_threads=True) == 1
    assert parallel_fits(threaded, get_spec("cbr_tiny"), 0, fit_threads=True) == 1


# ---- fit plans and the head handed on -------------------------------------------------------------------------------
def test_fit_plans(exp):
    d0, d1 = RunSpec.of(exp, get_spec("mobilenet"), 0), RunSpec.of(exp, get_spec("mobilenet"), 1)
    sel = {"lr": 1e-3, "epochs": 1}
    a, b = cv_plan(d0, 1e-2, 1), cv_plan(d0, 1e-3, 1)
    fold_model = foldinit_plan(d0, 1, sel)
    # every LR of a fold and the fold's model see the same batches; the heads they start from differ
    assert a.data_seed == b.data_seed == fold_model.data_seed != cv_plan(d0, 1e-2, 0).data_seed
    assert (a.job, fold_model.job) == ("cv_lr0.01_f1", "foldinit_f1")
    np.testing.assert_array_equal(a.rows, exp.folds[1][0])
    np.testing.assert_array_equal(a.val_rows, exp.folds[1][1])
    final = final_plan(d0, sel)
    np.testing.assert_array_equal(final.rows, exp.pool)
    assert final.val_rows is None and (final.lr, final.epochs) == (1e-3, 1)
    head = {"head_dense": [np.zeros(1)]}
    with pytest.raises(ValueError, match="starts from a depth-0 head"):
        cv_plan(d1, 1e-3, 0)  # a depth-1 fit never trains its start model on demand
    with pytest.raises(ValueError, match="starts from a depth-0 head"):
        cv_plan(d0, 1e-3, 0, start=head)
    assert cv_plan(d1, 1e-3, 0, start=head).start is head and final_plan(d1, sel, head).start is head


def test_start_head_reads_what_the_depth0_job_saved(exp):
    import keras

    from benchmark.models import head as make_head, head_layers
    pooled = keras.Input((5,))
    model = keras.Model(pooled, make_head(pooled, 3, dropout=0.1, seed=4))
    foldinit = Job("mobilenet", 0, "foldinit", fold=1)
    save_head(foldinit.folder(exp.out), model)
    loaded = start_head(exp, Job("mobilenet", 1, "cv", 1e-3, 1))
    assert loaded.keys() == set(head_layers(model)) and len(loaded) == 2
    for name, weights in loaded.items():
        for saved, original in zip(weights, model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(saved, original)
    assert load_head(foldinit.folder(exp.out)).keys() == loaded.keys()
    assert start_head(exp, Job("mobilenet", 0, "cv", 1e-3, 1)) is None


# ---- evaluate -------------------------------------------------------------------------------------------------------
def dataset(labels: list[list[str]], source: str = "src") -> Dataset:
    """Stacks of the given labels (apex -> base), one patient each."""
    rows = pd.DataFrame([{"patient": f"p{i}", "frame": 0, "slice": s, "label": c, "y": CLASSES.index(c),
                          "n_slices": len(stack)} for i, stack in enumerate(labels) for s, c in enumerate(stack)])
    return Dataset(Path(source), rows, CLASSES, "sha")


def test_evaluate_scores_the_argmax_of_hand_made_probabilities():
    ds = dataset([["OAP"], ["IN"], ["IN"], ["OBS"]])  # single slices: no stacks
    proba = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    preds, metrics = evaluate(ds, np.arange(4), proba, Task("classification", CLASSES), None, None)
    assert list(preds.columns) == ["patient", "frame", "slice", "label", "prediction", "p_OAP", "p_IN", "p_OBS"]
    assert list(preds.prediction) == ["OAP", "IN", "OAP", "OBS"]
    np.testing.assert_array_equal(preds[["p_OAP", "p_IN", "p_OBS"]].to_numpy(), proba)
    assert metrics["accuracy"] == 0.75 and metrics["f1_oap"] == pytest.approx(2 / 3)
    assert metrics["f1_in"] == pytest.approx(2 / 3) and metrics["f1_obs"] == 1.0
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert metrics["confusion"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert "range_exact" not in metrics and "baselines" not in metrics


def test_evaluate_decodes_ranges_and_scores_the_baselines_on_the_same_stacks():
    ds = dataset([["OAP", "IN", "OBS"], ["OAP", "IN", "IN", "OBS"]])
    proba = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.05, 0.05, 0.9],
                      [0.9, 0.05, 0.05], [0.1, 0.4, 0.5], [0.1, 0.8, 0.1], [0.05, 0.05, 0.9]])
    every_in = np.tile([0.0, 1.0, 0.0], (7, 1))
    baselines = {"every_in": (every_in, every_in.argmax(1), {"kind": "constant"})}
    preds, metrics = evaluate(ds, np.arange(7), proba, Task("classification", CLASSES), Decoding(), baselines)
    # the argmax breaks the second stack's range (an OBS inside it); the monotone decoding restores it
    assert list(preds.prediction[3:]) == ["OAP", "OBS", "IN", "OBS"]
    assert list(preds.monotone) == list(preds.decoded) == list(ds.rows.label)
    assert list(preds.baseline_every_in) == ["IN"] * 7
    assert metrics["range_exact"] == 0.5 and metrics["decoded"]["range_exact"] == 1.0
    assert metrics["decoded"]["decoding"] == Decoding().to_dict() and "confusion" not in metrics["monotone"]
    assert metrics["baselines"]["every_in"]["range_exact"] == 0.0
    assert metrics["baselines"]["every_in"]["decoding"] == {"kind": "constant"}
    assert "by_source" not in metrics  # one source


def test_evaluate_regression_and_multi_task_outputs():
    ds = dataset([["OAP"], ["IN"], ["OBS"]])
    ds.rows["target"] = [1.0, 2.0, 6.0]
    out = np.array([[2.0], [2.0], [5.0]])
    preds, metrics = evaluate(ds, np.arange(3), out, Task("regression", CLASSES, "area", mean=3.0, sd=2.0),
                              None, None)
    assert list(preds.columns) == ["patient", "frame", "slice", "label", "target", "prediction"]
    assert list(preds.prediction) == [2.0, 2.0, 5.0]
    assert metrics["mae"] == pytest.approx(2 / 3) and metrics["mae_mean_baseline"] == 2.0
    assert "accuracy" not in metrics
    both = np.array([[0.8, 0.1, 0.1, 2.0], [0.1, 0.8, 0.1, 2.0], [0.1, 0.1, 0.8, 5.0]])
    preds, metrics = evaluate(ds, np.arange(3), both, Task("multi", CLASSES, "area", mean=3.0, sd=2.0), None, None)
    assert list(preds.prediction) == ["OAP", "IN", "OBS"] and list(preds.target_prediction) == [2.0, 2.0, 5.0]
    assert metrics["accuracy"] == 1.0 and metrics["mae"] == pytest.approx(2 / 3)


# ---- config identity ------------------------------------------------------------------------------------------------
def test_a_run_folder_is_reused_only_for_the_same_settings(exp, tmp_path):
    config = RunSpec.of(exp, get_spec("mobilenet"), 0).config()
    run = tmp_path / "run"
    run.mkdir()

    def written(**changes) -> dict:
        cfg = json.loads(json.dumps({**config, **changes}, default=str))
        (run / "config.json").write_text(json.dumps(cfg))
        return cfg

    written()
    assert check_run_dir(run, config, force=False) is False  # started, not finished
    data = {**config["data"], "path": "/elsewhere"}
    written(code_version="other", versions={}, data=data)  # provenance and where the data lives do not count
    assert check_run_dir(run, config, force=False) is False
    for key, value in (("seed", 1), ("profile", {**config["profile"], "epochs": 9}), ("weights", "imagenet"),
                       ("data", {**config["data"], "content_sha256": "other"})):
        written(**{key: value})
        with pytest.raises(BenchmarkInputError, match=rf"other settings \({key}\)"):
            check_run_dir(run, config, force=False)
    written(results_format=0)
    with pytest.raises(BenchmarkInputError, match="results_format 0"):
        check_run_dir(run, config, force=False)
    written()
    (run / "DONE").write_text("")
    assert check_run_dir(run, config, force=False) is True
    written(seed=1)
    assert check_run_dir(run, config, force=True) is False and not run.exists()  # forced: removed, redone


@pytest.mark.slow
def test_depth_1_added_to_a_finished_depth_0_run_makes_the_fold_models_it_starts_from(tiny_synthetic, tmp_path):
    from benchmark.grid import run_grid

    profile = get_profile("quick").with_overrides(epochs=2, n_folds=2, input_sizes={"mobilenet": 32},
                                                  stack_model=False)
    exp = make_experiment(tiny_synthetic, profile, 0, tmp_path / "out", "none", use_cache=True, test_fraction=0.25)
    run_grid(exp, [("mobilenet", 0)])
    assert not (tmp_path / "out" / "mobilenet_d0" / "jobs" / "foldinit_f0").exists()
    summary = run_grid(exp, [("mobilenet", 1)])
    assert summary.set_index("run").loc["mobilenet_d1", "status"] == "done"
    assert (tmp_path / "out" / "mobilenet_d0" / "jobs" / "foldinit_f1" / "head.npz").is_file()
