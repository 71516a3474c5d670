"""Table 2: test metrics of every finished run and of the baselines, in the paper's order, with patient-bootstrap
95 % CIs, the fold mean ± SD of the selection metric, and its Markdown and LaTeX forms."""
from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from data_prep import atomic
from ..baselines import BASELINES, CONSTANT
from ..layout import BASELINE_PREFIX, OOF_METRICS
from ..metrics import (BOOT_SEED, N_BOOT, VS_CONSTANT, bootstrap_ci, classification_metrics, nan_mean,
                       per_stack_range, regression_metrics, soft_correct)
from ..summary import beats_constant, oof_columns, paired_columns
from .columns import (BASELINE_DEPTH, COUNTS, DECODED_METRICS, DECODED_PREFIX, NO_AUC_PREFIX, OOF_PAIRED,
                      RANGE_METRICS, REGRESSION_METRICS, SECTIONS, TEST_PAIRED, best_mask, heading, is_paired,
                      markdown_table, metric_keys, num, paired_parts, split_key)
from .results import Results, Run, confusion, done_runs

DECODED_TITLE = "IN range, decoding chosen on validation, beside the baselines"
OOF_TITLE = "Out of fold over the training pool: IN range beside every slice IN on the same stacks"


def _class_arrays(run: Run) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], pd.DataFrame]:
    """Truth, probabilities, predictions per decoding ("" argmax, "mono_" monotone) and stacks of the test rows."""
    df = run.predictions
    index = {c: i for i, c in enumerate(run.classes)}
    y = df["label"].map(index).to_numpy(dtype=np.int64)
    proba = df[[f"p_{c}" for c in run.classes]].to_numpy(dtype=np.float64)
    decodings = {"": df["prediction"].map(index).to_numpy(dtype=np.int64)}
    for prefix, section in SECTIONS.items():
        if prefix and section in df and section in run.metrics:
            decodings[prefix] = df[section].map(index).to_numpy(dtype=np.int64)
    stacks = df[["patient", "frame", "slice"]].astype({"slice": np.int64})
    return y, proba, decodings, stacks


def bootstrap_intervals(run: Run, n_boot: int = 1000, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Patient-bootstrap 95 % CI (metrics.bootstrap_ci, seeded) of every test metric in table 2, from the predictions.

    Every metric is resampled with the same seed, hence the same patients in replicate b for all metrics;
    classification_metrics (regression_metrics) runs once per replicate and decoding (memoised on the drawn rows).
    Soft accuracy and the range metrics look at neighbouring slices, so their per-row / per-stack values are computed
    once on the whole test set and averaged over the drawn rows / stacks, as bootstrap_ci's docstring prescribes.
    """
    out = _class_intervals(run, n_boot, seed) if run.has_classes else {}
    if run.has_target:
        truth, pred, train_mean = run.target_arrays()
        scores = _memo(lambda idx: regression_metrics(truth[idx], pred[idx], train_mean))
        groups = run.predictions["patient"].to_numpy()
        for key, _ in REGRESSION_METRICS:
            out[key] = bootstrap_ci(lambda idx, key=key: scores(idx)[key], groups, n_boot, seed)
    return out


def _memo(fn: Callable[[np.ndarray], dict[str, Any]]) -> Callable[[np.ndarray], dict[str, Any]]:
    """fn of a row-index array, computed once per distinct array (every metric of a replicate shares one call)."""
    memo: dict[bytes, dict[str, Any]] = {}

    def call(idx: np.ndarray) -> dict[str, Any]:
        key = hashlib.blake2b(idx.tobytes(), digest_size=16).digest()
        if key not in memo:
            memo[key] = fn(idx)
        return memo[key]
    return call


def _class_intervals(run: Run, n_boot: int, seed: int) -> dict[str, tuple[float, float]]:
    y, proba, decodings, stacks = _class_arrays(run)
    groups = stacks["patient"].to_numpy()
    out: dict[str, tuple[float, float]] = {}
    for prefix, pred in decodings.items():
        keys = [f"f1_{c.lower()}" for c in run.classes] + ["macro_f1", "accuracy"]
        if not prefix:
            keys += ["auc_micro", "auc_weighted"]
        out.update({prefix + k: ci for k, ci in _label_intervals(y, proba, pred, run.classes, groups, keys, n_boot,
                                                                  seed).items()})
        if "soft_accuracy" in run.metrics:
            correct = soft_correct(y, pred, stacks).astype(np.float64)
            out[prefix + "soft_accuracy"] = bootstrap_ci(lambda idx: float(correct[idx].mean()), groups, n_boot,
                                                         seed)
        if not math.isnan(run.metric("range_exact")):
            out.update({prefix + k: ci for k, ci in _range_intervals(y, pred, stacks, n_boot, seed).items()})
    return out


def _label_intervals(y: np.ndarray, proba: np.ndarray, pred: np.ndarray, classes: Sequence[str], groups: np.ndarray,
                     keys: Sequence[str], n_boot: int, seed: int) -> dict[str, tuple[float, float]]:
    """Patient-bootstrap CIs of classification_metrics `keys` of labels `pred`, one metrics call per replicate."""
    scores = _memo(lambda idx: classification_metrics(y[idx], proba[idx], classes, y_pred=pred[idx]))
    return {key: bootstrap_ci(lambda idx, key=key: scores(idx)[key], groups, n_boot, seed) for key in keys}


def _range_intervals(y: np.ndarray, pred: np.ndarray, stacks: pd.DataFrame, n_boot: int,
                     seed: int) -> dict[str, tuple[float, float]]:
    """Patient-bootstrap CIs of the IN-range metrics of labels `pred`, per-stack values computed once."""
    per_stack = per_stack_range(y, pred, stacks)
    groups = per_stack["patient"].to_numpy()
    return {key: bootstrap_ci(lambda idx, v=per_stack[key].to_numpy(dtype=np.float64): nan_mean(v[idx]), groups,
                              n_boot, seed) for key, _ in RANGE_METRICS}


def check_predictions(run: Run) -> list[str]:
    """Differences between test_metrics.json and the metrics recomputed from test_predictions.csv (none expected;
    predicted targets are stored to 6 significant digits, so their metrics agree to about 1e-6 relative)."""
    problems = []

    def compare(name: str, recorded: float, recomputed: float, tolerance: float) -> None:
        if not (math.isnan(recorded) and math.isnan(recomputed)) and not abs(recorded - recomputed) <= tolerance:
            problems.append(f"{name} {recorded:.6g} in test_metrics.json vs {recomputed:.6g} recomputed")

    if run.has_classes:
        y, proba, decodings, _ = _class_arrays(run)
        for prefix, pred in decodings.items():
            m = classification_metrics(y, proba, run.classes, y_pred=pred)
            for key in [f"f1_{c.lower()}" for c in run.classes] + ["macro_f1", "accuracy"]:
                compare(prefix + key, run.metric(key, section=SECTIONS[prefix]), m[key], 1e-6)
        if confusion(run).tolist() != run.metrics.get("confusion"):
            problems.append("the confusion matrix of test_predictions.csv differs from test_metrics.json")
    if run.has_target:
        m = regression_metrics(*run.target_arrays())
        for key in ("mae", "rmse", "mae_mean_baseline"):
            compare(key, run.metric(key), m[key], 1e-4 * max(1.0, abs(m[key])))
        compare("r2", run.metric("r2"), m["r2"], 1e-4)
    return problems


def cv_summary(run: Run) -> dict[str, Any]:
    """Fold mean and SD (n-1) of the selection metric and of validation accuracy (a classifier's) at the selected LR
    and epoch."""
    sel, h = run.selection, run.history
    at = h[np.isclose(h["lr"], sel["lr"], rtol=1e-9, atol=0) & (h["epoch"] == sel["epochs"])]
    out = {"cv_metric": sel["metric"], "cv_folds": int(at["fold"].nunique())}
    for name, col in (("cv", sel["metric"]), ("cv_accuracy", "val_accuracy")):
        if col not in at:
            continue
        values = at[col].astype(float)
        out[f"{name}_mean"] = float(values.mean()) if len(values) else float("nan")
        out[f"{name}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    return out


def _intervals_job(run_dir: str, config: dict[str, Any], n_boot: int, seed: int):
    return bootstrap_intervals(Run(Path(run_dir), config), n_boot, seed)


def all_intervals(runs: Sequence[Run], n_boot: int, seed: int, jobs: int = 1,
                  progress: bool = True) -> dict[str, dict[str, tuple[float, float]]]:
    """bootstrap_intervals of each run, in `jobs` worker processes when > 1 (the bootstrap is CPU-bound Python).

    Workers are spawned, not forked: the parent may hold TensorFlow threads, which do not survive a fork.
    """
    from tqdm import tqdm
    if n_boot == 0:
        return {r.name: {} for r in runs}
    bar = tqdm(total=len(runs), desc="bootstrap CIs", unit="run", disable=not progress)
    out: dict[str, dict[str, tuple[float, float]]] = {}
    if jobs <= 1 or len(runs) == 1:
        for r in runs:
            out[r.name] = bootstrap_intervals(r, n_boot, seed)
            bar.update()
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed
        with ProcessPoolExecutor(min(jobs, len(runs)), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_intervals_job, str(r.dir), r.config, n_boot, seed): r.name for r in runs}
            for f in as_completed(futures):
                out[futures[f]] = f.result()
                bar.update()
    bar.close()
    return out


def table2_test(results: Results, n_boot: int = 1000, seed: int = 0, progress: bool = True,
                jobs: int = 1) -> pd.DataFrame:
    """One row per finished run in the paper's order: point estimates (test_metrics.json), CIs as <key>_lo/_hi."""
    runs = done_runs(results)
    classes = results.classes
    task = results.task
    keys = metric_keys(classes, task)
    intervals = all_intervals(runs, n_boot, seed, jobs, progress)
    rows = []
    for r in runs:
        for problem in check_predictions(r):
            print(f"warning: {r.name}: {problem}", file=sys.stderr)
        sel = r.selection
        row: dict[str, Any] = {"run": r.name, "network": r.network, "depth": r.depth,
                               "weights": r.config.get("weights"), "selected_lr": sel["lr"],
                               "selected_epochs": sel["epochs"], **cv_summary(r)}
        for key in keys:
            prefix, base = split_key(key)
            row[key] = r.metric(base, section=SECTIONS[prefix])
            row[f"{key}_lo"], row[f"{key}_hi"] = intervals[r.name].get(key, (float("nan"), float("nan")))
        for c in classes if r.has_classes else ():
            row[f"support_{c.lower()}"] = r.metrics.get(f"support_{c.lower()}")
        if r.has_target:
            row["target"] = r.config["target"]
        row["n"] = r.metrics.get("n")
        if "decoded" in r.metrics:
            oof = out_of_fold_metrics(r)
            row.update(paired_columns(r.metrics.get(VS_CONSTANT)))
            if oof is not None:
                row.update(oof_columns(oof["decoded"], oof["baselines"][CONSTANT], oof.get(VS_CONSTANT)))
            row["beats_constant"] = beats_constant(oof)
        rows.append(row)
    rows += baseline_rows(runs, n_boot, seed)
    df = pd.DataFrame(rows)
    empty = [k for k in keys if df[k].isna().all()]
    return df.drop(columns=[c for k in empty for c in (k, f"{k}_lo", f"{k}_hi")])


def out_of_fold_metrics(run: Run) -> dict[str, Any] | None:
    """A run's oof_metrics.json; None where the run has none (older results, runs without slice ranges)."""
    path = run.dir / OOF_METRICS
    return atomic.read_json(path) if path.is_file() else None


def baseline_rows(runs: Sequence[Run], n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Table-2 rows of the baselines (benchmark.baselines) recorded with the first run that has them, scored on
    the same test stacks as every run: their decoded columns and patient-bootstrap CIs from that run's
    test_predictions.csv (column baseline_<name>), their paired differences from every slice IN, and their
    out-of-fold figures from its oof_metrics.json."""
    run = next((r for r in runs if r.has_classes and "baselines" in r.metrics), None)
    if run is None:
        return []
    oof = out_of_fold_metrics(run)
    df = run.predictions
    y, proba, _, stacks = _class_arrays(run)
    index = {c: i for i, c in enumerate(run.classes)}
    groups = stacks["patient"].to_numpy()
    out = []
    for name, m in run.metrics["baselines"].items():
        row: dict[str, Any] = {"run": f"{BASELINE_PREFIX}{name}", "network": f"{BASELINES.get(name, name)} (baseline)",
                               "depth": BASELINE_DEPTH, "weights": None}
        row.update({DECODED_PREFIX + k: m.get(k, float("nan")) for k in DECODED_METRICS})
        row.update(paired_columns(m.get(VS_CONSTANT)))
        if oof is not None and name in oof["baselines"]:
            b = oof["baselines"][name]
            row.update(oof_columns(b, oof["baselines"][CONSTANT], b.get(VS_CONSTANT)))
        column = f"{BASELINE_PREFIX}{name}"
        if column in df and n_boot:
            pred = df[column].map(index).to_numpy(dtype=np.int64)
            intervals = {**_label_intervals(y, proba, pred, run.classes, groups, ["macro_f1"], n_boot, seed),
                         **_range_intervals(y, pred, stacks, n_boot, seed)}
            for key, (lo, hi) in intervals.items():
                row[f"{DECODED_PREFIX}{key}_lo"], row[f"{DECODED_PREFIX}{key}_hi"] = lo, hi
        out.append(row)
    return out


def _table2_groups(df: pd.DataFrame) -> list[tuple[str, list[str]]]:
    keys = [k for k in metric_keys([c[len("support_"):] for c in df if c.startswith("support_")], "multi") if k in df]
    target = [k for k in keys if k in dict(REGRESSION_METRICS)]
    decoded = [k for k in keys if k.startswith(DECODED_PREFIX)]
    keys = [k for k in keys if k not in decoded]
    plain = [k for k in keys if not k.startswith(NO_AUC_PREFIX) and k not in dict(RANGE_METRICS) and k not in target]
    rng = [k for k in keys if k.removeprefix(NO_AUC_PREFIX) in dict(RANGE_METRICS)]
    mono = [k for k in keys if k.startswith(NO_AUC_PREFIX) and k not in rng]
    groups = [(DECODED_TITLE, decoded + [k for k in TEST_PAIRED if k in df])] if decoded else []
    groups += [(OOF_TITLE, [k for k in OOF_PAIRED if k in df])] if any(k in df for k in OOF_PAIRED) else []
    groups += [("Test set, argmax decoding", plain)] if plain else []
    if target:
        groups.append((f"Test set, regression of {df['target'].iat[0]}", target))
    if mono or rng:
        groups.append(("Monotone stack decoding and IN range", mono + rng))
    return groups


def table2_markdown(df: pd.DataFrame) -> str:
    supports = [c for c in df if c.startswith("support_")]
    parts = []
    groups = _table2_groups(df)
    first_plain = next((g for g, (title, _) in enumerate(groups) if title not in WITH_BASELINES), 0)
    # runs select by different metrics (the segmentation head by Dice): then each cell names its own
    cv_metrics = sorted(set(df["cv_metric"].dropna()))
    cv_name = heading(cv_metrics[0].removeprefix("val_")) if len(cv_metrics) == 1 else "selection metric"
    for g, (title, keys) in enumerate(groups):
        rows = df if title in WITH_BASELINES else df[df["depth"] != BASELINE_DEPTH]
        extra = [f"CV {cv_name} (mean ± SD)"] if g == first_plain else []
        head = ["network", "depth", "weights"] + [heading(k) for k in keys] + extra + \
            ([f"n {c[len('support_'):].upper()}" for c in supports] if extra else [])
        marks = {k: best_mask(rows, k) for k in keys}
        table = []
        for i, r in rows.iterrows():
            loses = title in WITH_BASELINES and r.get("beats_constant") is False
            cells = [r.network + (" †" if loses else ""), str(r.depth), weights_short(r.weights)]
            for k in keys:
                value = _value(r, k)
                cells.append((f"**{value}**" if marks[k][i] else value) + _ci_text(*_interval(r, k)))
            if extra:
                own = f" ({heading(r.cv_metric.removeprefix('val_'))})" if len(cv_metrics) > 1 and isinstance(
                    r.cv_metric, str) else ""
                cells.append(f"{num(r.cv_mean, 3)} ± {num(r.cv_sd, 3)}{own}")
                cells += [num(r[c], 0) for c in supports]
            table.append(cells)
        parts.append(f"### {title}\n\n" + markdown_table(head, table))
    note = ("Point estimates from test_metrics.json; [95 % CI] from a patient-level bootstrap of "
            "test_predictions.csv; best value per column in bold (lowest for boundary MAE, in slices). CV: fold mean "
            "± SD of the selection metric at the selected learning rate and epoch count.")
    if DECODED_PREFIX + "range_exact" in df:
        note += (f" {DECODED_TITLE}: each run's probabilities decoded as chosen on its validation folds "
                 "(selection.json `decoding`); the baselines are scored on the same stacks: every slice IN, and a "
                 "model of the slice's position in its stack alone.")
    if any(k in df for k in TEST_PAIRED + OOF_PAIRED):
        note += (" Δ … vs every IN: the figure minus every slice IN's on the same stacks, with a paired 95 % "
                 f"interval from a patient bootstrap ({N_BOOT} replicates, seed {BOOT_SEED}; a patient's stacks drawn "
                 "together, both predictors scored on each resample; as the engine wrote it, `vs_constant` of "
                 "test_metrics.json and oof_metrics.json); n stacks: the stacks with a true IN slice, n with outer "
                 "slices: those of them with an OAP or OBS slice, the only ones where a predictor can do better "
                 "than the constant.")
    if any(k in df for k in OOF_PAIRED):
        note += (f" {OOF_TITLE}: every training-pool slice predicted by the CV model of the fold that held it out "
                 "(selected LR and epoch count; oof_predictions.csv), each fold's stacks decoded as tuned on the "
                 "other folds, the position model likewise.")
    if "beats_constant" in df:
        note += (" † marks a run that does not beat every slice IN beyond noise: the paired 95 % interval of its "
                 "out-of-fold exact-IN-range difference does not lie above 0 (summary.csv `beats_constant` false); "
                 "no mark where a run has no out-of-fold results.")
    if "mae" in df:
        note += (" MAE and RMSE are in the target's units (lowest in bold); baseline MAE is the MAE of predicting "
                 "the training pool's mean target for every test slice, the figure a model has to beat.")
    return "".join(f"{part}\n" for part in parts) + note + "\n"


def table2_latex(df: pd.DataFrame) -> str:
    """booktabs tables (\\usepackage{booktabs}); CIs in brackets below each value."""
    out = ["% generated by python -m benchmark.report; needs \\usepackage{booktabs}"]
    for title, keys in _table2_groups(df):
        rows = df if title in WITH_BASELINES else df[df["depth"] != BASELINE_DEPTH]
        marks = {k: best_mask(rows, k) for k in keys}
        out += [r"\begin{table}[ht]", r"\centering", r"\scriptsize", f"\\caption{{{_tex(title)}}}",
                r"\begin{tabular}{lll" + "c" * len(keys) + "}", r"\toprule",
                " & ".join(["Network", "Depth", "Weights"] + [_tex(heading(k)) for k in keys]) + r" \\",
                r"\midrule"]
        for i, r in rows.iterrows():
            loses = title in WITH_BASELINES and r.get("beats_constant") is False
            values, cis = [_tex(r.network + (" †" if loses else "")), _tex(str(r.depth)),
                           _tex(weights_short(r.weights))], ["", "", ""]
            for k in keys:
                v = _value(r, k)
                values.append(f"\\textbf{{{v}}}" if marks[k][i] else v)
                lo, hi = _interval(r, k)
                cis.append("" if math.isnan(lo) else f"[{lo:.3f}, {hi:.3f}]")
            out.append(" & ".join(values) + r" \\")
            if any(cis):
                out.append(" & ".join(cis) + r" \\[2pt]")
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(out)


def weights_short(weights: str | None) -> str:
    """config.json `weights` for a table cell: ImageNet, random init (a pretrained network run without its ImageNet
    file), scratch (CBR), or the file name given with --weights PATH."""
    if not isinstance(weights, str) or weights == "imagenet":  # a baseline row has none (NaN in a table)
        return "ImageNet" if isinstance(weights, str) else "—"
    if weights == "none":
        return "random init"
    if weights.startswith("none (trained from scratch)"):
        return "scratch"
    return Path(weights).name


def _ci_text(lo: float, hi: float) -> str:
    return "" if math.isnan(lo) else f" [{lo:.3f}, {hi:.3f}]"


WITH_BASELINES = (DECODED_TITLE, OOF_TITLE)  # the groups whose rows include the baselines'


def _value(r: pd.Series, key: str) -> str:
    """A cell's figure: counts as integers, "—" where a row has none."""
    count = is_paired(key) and paired_parts(key)[2] in COUNTS
    return num(r.get(key), 0 if count else 3)


def _interval(r: pd.Series, key: str) -> tuple[float, float]:
    """(lo, hi) of a cell, NaN for a column without one (the paired ones have one for the differences alone)."""
    lo, hi = r.get(f"{key}_lo"), r.get(f"{key}_hi")
    return (float("nan"), float("nan")) if lo is None or pd.isna(lo) else (float(lo), float(hi))


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "α": r"$\alpha$",
                "±": r"$\pm$", "²": r"$^2$"}


def _tex(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)
