"""benchmark.report on the committed results fixture: tables equal the metrics files, CIs, figures (CLI errors: test_bad_inputs.py)."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from benchmark import report
from benchmark.layout import TIMED_PHASES
from benchmark.metrics import range_metrics
from benchmark.metrics import nan_mean

ORDER = ["mobilenet_d0", "mobilenet_d1", "mobilenetv2_d0", "mobilenetv2_d1", "cbr_tiny"]
N_BOOT = 200


@pytest.fixture(scope="module")
def results(results_small):
    return report.load_results(results_small)


@pytest.fixture(scope="module")
def table2(results):
    return report.table2_test(results, n_boot=N_BOOT, seed=0, progress=False)


def read(path):
    return json.loads(path.read_text())


def test_the_report_imports_no_tensorflow():
    """Tables and figures from result files need no TensorFlow; model_figures imports Keras only to load a model."""
    modules = ["benchmark.report", *(f"benchmark.report.{m}" for m in ("results", "columns", "table1", "table2",
                                                                        "figures", "label_efficiency",
                                                                        "model_figures", "write", "cli"))]
    code = (f"import sys\nimport {', '.join(modules)}\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith(('tensorflow', 'keras')))[:5]")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_runs_in_the_papers_order(results):
    assert [r.name for r in results.runs] == ORDER
    assert [r.label for r in results.runs][-1] == "CBR-Tiny"
    assert results.get("mobilenet_d1").label == "MobileNet α0.25 d1"


def test_table2_values_are_the_metrics_files(results_small, table2):
    assert list(table2["run"]) == ORDER
    for _, row in table2.iterrows():
        m = read(results_small / row.run / "test_metrics.json")
        sel = read(results_small / row.run / "selection.json")
        for key in ("f1_oap", "f1_in", "f1_obs", "macro_f1", "auc_micro", "auc_weighted", "accuracy",
                    "soft_accuracy", "range_exact", "range_within1", "boundary_mae"):
            assert row[key] == pytest.approx(m[key], abs=1e-12), (row.run, key)
        for key in ("f1_oap", "macro_f1", "accuracy", "soft_accuracy", "range_exact", "boundary_mae"):
            assert row[f"mono_{key}"] == pytest.approx(m["monotone"][key], abs=1e-12), (row.run, key)
        assert (row.support_oap, row.support_in, row.support_obs, row.n) == \
            (m["support_oap"], m["support_in"], m["support_obs"], m["n"])
        # fold mean and SD recomputed from cv_history equal what the engine selected on
        assert (row.selected_lr, row.selected_epochs) == (sel["lr"], sel["epochs"])
        assert row.cv_mean == pytest.approx(sel["cv_mean"], abs=1e-5)
        assert row.cv_sd == pytest.approx(sel["cv_sd"], abs=1e-5)


def test_cis_contain_the_point_estimate(table2):
    keys = [c[:-3] for c in table2 if c.endswith("_lo")]
    assert {"macro_f1", "auc_micro", "soft_accuracy", "range_exact", "mono_macro_f1", "mono_boundary_mae"} <= set(keys)
    checked = 0
    for _, row in table2.iterrows():
        for key in keys:
            lo, hi, value = row[f"{key}_lo"], row[f"{key}_hi"], row[key]
            if math.isnan(value):
                continue
            assert lo - 1e-9 <= value <= hi + 1e-9, (row.run, key, lo, value, hi)
            checked += 1
    assert checked == len(table2) * len(keys) == 100


def test_cis_are_seeded(results):
    run = results.get("cbr_tiny")
    a = report.bootstrap_intervals(run, n_boot=50, seed=1)
    assert a == report.bootstrap_intervals(run, n_boot=50, seed=1)
    assert a != report.bootstrap_intervals(run, n_boot=50, seed=2)
    lo, hi = a["macro_f1"]
    assert 0 <= lo < hi <= 1


def test_per_stack_range_averages_to_range_metrics():
    # two stacks of patient a (one with no predicted IN), one stack of b without true IN
    stacks = pd.DataFrame({"patient": ["a"] * 8 + ["b"] * 3, "frame": ["ED"] * 4 + ["ES"] * 4 + ["ED"] * 3,
                           "slice": [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2]})
    y = np.array([0, 1, 1, 2, 0, 1, 1, 2, 0, 0, 2])
    pred = np.array([0, 0, 1, 2, 0, 0, 0, 2, 0, 1, 2])
    per = report.per_stack_range(y, pred, stacks)
    assert len(per) == 3
    full = range_metrics(y, pred, stacks)
    for key in ("range_exact", "range_within1", "boundary_mae"):
        assert nan_mean(per[key].to_numpy(float)) == pytest.approx(full[key])
    # by hand: stack a/ED predicts IN at slice 2 only (apical error 1, basal 0); a/ES predicts no IN
    assert per["range_within1"].tolist()[:2] == [1.0, 0.0]
    assert per["boundary_mae"].iloc[0] == 0.5 and math.isnan(per["boundary_mae"].iloc[1])


def test_table1_is_timing_json(results_small, results):
    t1 = report.table1_time(results)
    assert list(t1["run"]) == ORDER
    for _, row in t1.iterrows():
        t = read(results_small / row.run / "timing.json")
        assert row.cv_s == t["cv_s"] and row.final_s == t["final_s"] and row.test_s == t["test_s"]
        assert row.total_s == pytest.approx(t["total_s"])
        assert t["total_s"] == pytest.approx(sum(t[k] for k in TIMED_PHASES))
        assert row.total_min == pytest.approx(row.total_s / 60)
    assert t1.set_index("run").loc["cbr_tiny", "input_px"] == 32
    assert "| MobileNet α0.25 | 0 | 96 |" in report.table1_markdown(t1)


def test_best_mask_marks_ties_and_lower_is_better():
    df = pd.DataFrame({"macro_f1": [0.9001, 0.8, 0.9004, np.nan], "boundary_mae": [0.5, 0.2, 0.2, 1.0],
                       "mono_boundary_mae": [3.0, 1.0, 2.0, np.nan]})
    assert report.best_mask(df, "macro_f1").tolist() == [True, False, True, False]
    assert report.best_mask(df, "boundary_mae").tolist() == [False, True, True, False]
    assert report.best_mask(df, "mono_boundary_mae").tolist() == [False, True, False, False]
    assert not report.best_mask(df.iloc[:1], "macro_f1").any()


def test_markdown_and_latex_mark_the_best(table2):
    md = report.table2_markdown(table2)
    # mobilenetv2 scores 1.000 at both depths: both rows bold; CBR-Tiny row has no bold macro F1
    v2 = [line for line in md.splitlines() if line.startswith("| MobileNetV2")]
    assert len(v2) == 4 and all("**1.000**" in line for line in v2)
    head = next(line for line in md.splitlines() if line.startswith("| network"))
    cbr = next(line for line in md.splitlines() if line.startswith("| CBR-Tiny"))
    column = head.split("|").index(" macro F1 ")
    assert cbr.split("|")[column].startswith(" 0.304 [") and "**" not in cbr.split("|")[column]
    assert cbr.split("|")[3] == " scratch " and v2[0].split("|")[3] == " ImageNet "
    tex = report.table2_latex(table2)
    assert r"MobileNet $\alpha$0.25" in tex and r"\textbf{1.000}" in tex and r"\toprule" in tex
    assert tex.count(r"\begin{tabular}") == 2


def test_weights_short():
    assert [report.weights_short(w) for w in ("imagenet", "none", "none (trained from scratch)", "/w/x_notop.h5")] \
        == ["ImageNet", "random init", "scratch", "x_notop.h5"]


def test_check_predictions_agrees_and_detects_edits(results_small, results, tmp_path):
    assert all(report.check_predictions(r) == [] for r in results.done)
    shutil.copytree(results_small, tmp_path / "r")
    path = tmp_path / "r" / "cbr_tiny" / "test_metrics.json"
    m = read(path)
    m["accuracy"] = 0.99
    path.write_text(json.dumps(m))
    problems = report.check_predictions(report.load_results(tmp_path / "r").get("cbr_tiny"))
    assert len(problems) == 1 and problems[0].startswith("accuracy 0.99")


def test_selection_picks_best_and_worst_per_depth(results):
    rows = report.selection_picks(results)
    assert [title for title, _ in rows] == ["depth 0", "depth 1"]
    picked = [[(caption, r.name) for caption, r in picks] for _, picks in rows]
    assert picked == [[("best at depth 0", "mobilenetv2_d0"), ("worst at depth 0", "mobilenet_d0")],
                      [("best at depth 1", "mobilenetv2_d1"), ("worst at depth 1", "mobilenet_d1")]]


def test_confusion_from_predictions_is_the_metrics_confusion(results):
    for r in results.done:
        assert report.confusion(r).tolist() == r.metrics["confusion"]


def test_missing_model_and_dataset_say_so(results, tmp_path):
    run = results.get("mobilenet_d0")
    with pytest.raises(report.FigureUnavailable, match="no trained model"):
        report.fig5_tsne(results, runs=["mobilenet_d0"])
    with pytest.raises(report.FigureUnavailable, match="not found.*--data"):
        report.run_dataset(run, tmp_path / "nowhere")


@pytest.mark.slow
def test_model_figures_on_a_regenerated_model(results_with_model, results_small_data):
    results = report.load_results(results_with_model)
    run = report.default_cam_run(results)  # no VGG16 in the fixture: the best run
    assert run.name == "mobilenetv2_d0"
    grid = report.cam_grid(run, data=results_small_data, samples=2)
    assert grid.counts.tolist() == run.metrics["confusion"]
    assert set(grid.picks) == {(t, p) for t in range(3) for p in range(3) if grid.counts[t, p]}
    preds = run.predictions
    for (t, p), row in grid.picks.items():
        assert (preds.loc[row, "label"], preds.loc[row, "prediction"]) == (run.classes[t], run.classes[p])
        assert grid.gradcam[(t, p)].shape == grid.saliency[(t, p)].shape == (run.input_px, run.input_px)
    # the regenerated model is untrained: the figure must say that its outputs are not the run's
    assert grid.max_output_diff > 0.05
    fig = report.fig6_gradcam(grid)
    assert "WARNING" in fig._suptitle.get_text()
    feats, rows = report.pooled_features(run, data=results_small_data)
    assert feats.shape == (len(rows), 1280) and len(rows) == run.metrics["n"]
    fig = report.fig5_tsne(results, data=results_small_data)
    assert fig.axes[0].get_xlabel() == "t-SNE 1" and [t.get_text() for t in fig.axes[0].get_legend().get_texts()] \
        == ["OAP (n=2)", "IN (n=52)", "OBS (n=2)", "misclassified (0)"]


@pytest.mark.slow
def test_cli_writes_every_table_and_the_figures(results_small, tmp_path, capsys):
    out = tmp_path / "report"
    assert report.main([str(results_small), "--out", str(out), "--n-boot", "20", "--jobs", "1", "--data",
                        str(tmp_path / "no-data")]) == 0
    printed = capsys.readouterr().out
    for name in ("table1_time.csv", "table1_time.md", "table2_test.csv", "table2_test.md", "table2_test.tex",
                 "fig3_curves.png", "fig3_curves.pdf", "fig4_confusion.png", "fig4_selection.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "fig3_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "fig5_tsne skipped: " in printed and "no trained model" in printed
    assert "fig6_gradcam skipped: " in printed
    assert not list(out.glob(".*partial*"))
    t2 = pd.read_csv(out / "table2_test.csv")
    assert list(t2["run"]) == ORDER


def test_fig3_at_another_learning_rate(results):
    fig = report.fig3_curves(results, lr=0.001)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert "MobileNet α0.25 d0\nLR 0.001" in titles
    assert "MobileNet α0.25 d1\nLR 0.001 (selected)" in titles
    fig = report.fig3_curves(results, lr=0.5)
    assert all("LR 0.5 not in its grid" in t for t in (ax.get_title() for ax in fig.axes) if t)


def test_table1_shows_wall_time_beside_machine_time():
    """Two runs whose jobs overlapped for 2 of their 10 and 6 wall minutes; a third written without spans."""
    nan = float("nan")
    df = pd.DataFrame([
        {"network": "A", "depth": 0, "input_px": 64, "feature_pass_s": 60.0, "cv_s": 900.0, "foldinit_s": 0.0,
         "final_s": 0.0, "test_s": 0.0, "total_s": 960.0, "total_min": 16.0, "wall_min": 10.0, "started": 0.0,
         "finished": 600.0},
        {"network": "B", "depth": 1, "input_px": 64, "feature_pass_s": 0.0, "cv_s": 360.0, "foldinit_s": 0.0,
         "final_s": 0.0, "test_s": 0.0, "total_s": 360.0, "total_min": 6.0, "wall_min": 6.0, "started": 480.0,
         "finished": 840.0},
        {"network": "C", "depth": 0, "input_px": 64, "feature_pass_s": 1.0, "cv_s": 1.0, "foldinit_s": 0.0,
         "final_s": 0.0, "test_s": 0.0, "total_s": 2.0, "total_min": 2 / 60, "wall_min": nan, "started": nan,
         "finished": nan}])
    md = report.table1_markdown(df)
    assert "| A | 0 | 64 | 60.0 | 900.0 | 0.0 | 0.0 | 0.0 | 16.00 | 10.00 |" in md
    assert "| C | 0 | 64 | 1.0 | 1.0 | 0.0 | 0.0 | 0.0 | 0.03 | — |" in md
    assert "Total = 22.0 min over 3 runs" in md and "Wall time of the 2 runs" in md and ": 14.0 min." in md


# ---- the paired comparison with every slice IN ------------------------------------------------------------------
def paired_block(difference: float, lo: float, hi: float, n_stacks: int = 4, outer: int = 3) -> dict:
    """A vs_constant entry as metrics.paired_range_difference writes it, the same figures for every metric."""
    return {**{k: {"difference": difference, "lo": lo, "hi": hi} for k in ("range_exact", "range_within1",
                                                                          "boundary_mae")},
            "n_stacks": n_stacks, "n_stacks_outer": outer, "n_patients": 2, "n_boot": 1000, "seed": 0, "alpha": 0.05}


@pytest.fixture(scope="module")
def paired_results(results_small, tmp_path_factory):
    """results_small with slice-range results added by hand to the two MobileNet runs: the test's decoded ranges
    and every slice IN's (0.75 against 0.5 exact), and out-of-fold figures, 0.6 against 0.5 exact, whose paired
    interval lies above 0 for depth 0 and not for depth 1. The MobileNetV2 runs and CBR-Tiny keep the files of an
    older version (no decoded ranges, no out-of-fold results)."""
    out = tmp_path_factory.mktemp("paired") / "results"
    shutil.copytree(results_small, out)
    constant = {"macro_f1": 0.3, "accuracy": 0.9, "range_exact": 0.5, "range_within1": 0.75, "boundary_mae": 0.5,
                "n_stacks": 4, "decoding": {"kind": "constant"}}
    for run, lo in (("mobilenet_d0", 0.05), ("mobilenet_d1", -0.05)):
        m = read(out / run / "test_metrics.json")
        m.update(decoded={"macro_f1": m["macro_f1"], "range_exact": 0.75, "range_within1": 1.0, "boundary_mae": 0.125,
                          "n_stacks": 4},
                 baselines={"every_in": constant}, vs_constant=paired_block(0.25, 0.0, 0.5))
        (out / run / "test_metrics.json").write_text(json.dumps(m))
        oof = {"decoded": {"range_exact": 0.6, "range_within1": 0.9, "boundary_mae": 0.25, "n_stacks": 10},
               "baselines": {"every_in": {**constant, "range_within1": 0.8, "n_stacks": 10}},
               "vs_constant": paired_block(0.1, lo, 0.2, 10, 6)}
        (out / run / "oof_metrics.json").write_text(json.dumps(oof))
    return out


def test_summary_shows_the_out_of_fold_figures_and_beats_constant_by_the_paired_interval(paired_results):
    from benchmark.summary import write_summary
    df = write_summary(paired_results).set_index("run")
    assert df.loc["mobilenet_d0", "beats_constant"] is True
    assert df.loc["mobilenet_d1", "beats_constant"] is False  # 0.75 against 0.5 on the test is no longer enough
    assert pd.isna(df.loc["mobilenetv2_d0", "beats_constant"]) and pd.isna(df.loc["cbr_tiny", "oof_range_exact"])
    d0 = df.loc["mobilenet_d0"]
    assert (d0.oof_range_exact, d0.oof_constant_range_exact, d0.oof_vs_constant_range_exact,
            d0.oof_vs_constant_range_exact_lo, d0.oof_n_stacks, d0.oof_n_stacks_outer) == (0.6, 0.5, 0.1, 0.05, 10, 6)
    assert (d0.vs_constant_range_exact, d0.n_stacks_outer) == (0.25, 3)
    assert df.loc["baseline_every_in", "oof_range_exact"] == 0.5  # the constant's own row, out of fold too
    lines = (paired_results / "summary.md").read_text().splitlines()
    head = [c.strip() for c in lines[0].split("|")]
    row = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")] for r in lines[2:]}
    assert row["mobilenet_d0"][head.index("oof_vs_constant_range_exact")] == "0.100 [0.050, 0.200]"
    assert row["mobilenet_d1"][head.index("oof_vs_constant_range_exact")] == "0.100 [-0.050, 0.200]"
    assert row["mobilenet_d0"][head.index("oof_n_stacks_outer")] == "6"
    assert row["mobilenetv2_d0"][head.index("oof_vs_constant_range_exact")] == ""  # older files: empty cells
    # every column of before is kept, with its values where the files did not change
    before = pd.read_csv(REPO / "tests/fixtures/results_small/summary.csv").set_index("run")
    now = pd.read_csv(paired_results / "summary.csv").set_index("run")
    assert set(before.columns) <= set(now.columns)
    unchanged = ["mobilenetv2_d0", "mobilenetv2_d1", "cbr_tiny"]
    kept = [c for c in before.columns if not c.endswith("_seconds")]  # the fixture's timing.json was re-recorded
    pd.testing.assert_frame_equal(now.loc[unchanged, kept], before.loc[unchanged, kept], check_dtype=False)


def test_table2_puts_the_out_of_fold_figures_beside_the_constant(paired_results):
    t2 = report.table2_test(report.load_results(paired_results), n_boot=0, progress=False).set_index("run")
    assert t2.loc["mobilenet_d0", "beats_constant"] is True and t2.loc["mobilenet_d1", "beats_constant"] is False
    assert pd.isna(t2.loc["mobilenetv2_d0", "beats_constant"])
    assert t2.loc["baseline_every_in", "oof_range_exact"] == 0.5
    md = report.table2_markdown(t2.reset_index())
    oof = md.split("### Out of fold")[1].split("###")[0].splitlines()
    head = [c.strip() for c in oof[2].split("|")]
    cells = {line.split("|")[1].strip() + " " + line.split("|")[2].strip(): [c.strip() for c in line.split("|")]
             for line in oof[4:] if line.startswith("|")}
    d0, d1, v2 = cells["MobileNet α0.25 0"], cells["MobileNet α0.25 † 1"], cells["MobileNetV2 α0.35 0"]
    assert d0[head.index("OOF range exact")] == "**0.600**" and d0[head.index("OOF range exact, every IN")] == "0.500"
    assert d0[head.index("OOF Δ range exact vs every IN")] == "0.100 [0.050, 0.200]"
    assert d1[head.index("OOF Δ range exact vs every IN")] == "0.100 [-0.050, 0.200]"
    assert d0[head.index("OOF n stacks")] == "10" and d0[head.index("OOF n with outer slices")] == "6"
    assert v2[head.index("OOF range exact")] == "—"  # a run of an older version: no out-of-fold results
    assert "† marks a run that does not beat every slice IN beyond noise" in md
    test_head = next(line for line in md.splitlines() if "Δ range exact vs every IN" in line and "OOF" not in line)
    assert "n with outer slices" in test_head
    assert report.table2_latex(t2.reset_index()).count(r"\begin{tabular}") == 4


def test_results_without_the_paired_blocks_render_as_before(table2):
    assert "beats_constant" not in table2 and not any(c.startswith("oof_") for c in table2)
    assert "Out of fold" not in report.table2_markdown(table2)
