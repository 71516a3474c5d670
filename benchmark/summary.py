"""The summary across a results directory's runs: summary.csv / summary.md (one row per run folder and per
baseline, in the paper's order) and the label-efficiency tables over repeats. Reads files alone: no TensorFlow.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_prep import atomic
from .baselines import BASELINES, CONSTANT
from .layout import (BASELINE_PREFIX, CONFIG, FINISHED, OOF_METRICS, SELECTION, STATUS_BASELINE, STATUS_DONE,
                     SUMMARY_CSV, SUMMARY_MD, TEST_METRICS, TIMING, run_dirs, run_order, run_status)
from .metrics import STACK_RANGE_KEYS, VS_CONSTANT

SUMMARY_COLUMNS = ["run", "backbone", "name", "depth", "weights", "status", "f1_oap", "f1_in", "f1_obs", "macro_f1",
                   "accuracy", "soft_accuracy", "auc_micro", "auc_weighted", "range_exact", "range_within1",
                   "boundary_mae", "beats_constant", "mae", "rmse", "r2", "mae_mean_baseline"]
# the IN-range figures of a run: those of its decoding chosen on validation (test_metrics.json "decoded")
RANGE_COLUMNS = ("range_exact", "range_within1", "boundary_mae", "n_stacks")
OOF = "oof_"                # out-of-fold over the training pool (oof_metrics.json)
VS = "vs_constant_"         # minus every slice IN on the same stacks, paired; _lo/_hi: its 95 % interval
OF_CONSTANT = "constant_"   # every slice IN's own figure on those stacks
STACK_COUNTS = ("n_stacks", "n_stacks_outer")  # stacks with a true IN slice, those of them with an outer slice
# after the test columns: the paired differences and supports on the test, then the out-of-fold figures beside the
# constant's (summary.md prints each difference with its interval in one cell)
TEST_PAIRED = [VS + k for k in STACK_RANGE_KEYS] + list(STACK_COUNTS)
OOF_PAIRED = [OOF + c + k for k in STACK_RANGE_KEYS for c in ("", OF_CONSTANT, VS)] + [OOF + k for k in STACK_COUNTS]
CURVE_METRICS = ["macro_f1", "accuracy", "auc_micro", "range_exact"]


def write_summary(out: Path) -> pd.DataFrame:
    """summary.csv / summary.md over every run directory under `out`, in the paper's order."""
    rows: list[dict[str, Any]] = []
    baselines: dict[str, dict[str, Any]] = {}
    oof_baselines: dict[str, dict[str, Any]] = {}
    for d in run_dirs(out):
        cfg = atomic.read_json(d / CONFIG)
        row: dict[str, Any] = {"run": d.name, "backbone": cfg["backbone"], "name": cfg["backbone_name"],
                               "depth": cfg["depth"], "weights": cfg["weights"]}
        if cfg.get("target"):
            row.update(task=cfg["task"], target=cfg["target"])
        row["status"] = run_status(d)
        if row["status"] == STATUS_DONE:
            m = atomic.read_json(d / TEST_METRICS)
            sel = atomic.read_json(d / SELECTION)
            timing = atomic.read_json(d / TIMING)
            row.update( **{k: v for k, v in m.items() if not isinstance(v, (dict, list))})
            if "decoded" in m:
                row.update({k: m["decoded"][k] for k in RANGE_COLUMNS})
                row.update(paired_columns(m.get(VS_CONSTANT)))
                if not baselines:
                    baselines = {name: {**b, **paired_columns(b.get(VS_CONSTANT))}
                                 for name, b in m["baselines"].items()}
                row.update(source_columns(m))
                oof = atomic.read_json(d / OOF_METRICS) if (d / OOF_METRICS).is_file() else None
                if oof is not None:
                    row.update(oof_columns(oof["decoded"], oof["baselines"][CONSTANT], oof.get(VS_CONSTANT)))
                    row.update(source_columns(oof, OOF))
                    if not oof_baselines:
                        oof_baselines = {name: oof_columns(b, oof["baselines"][CONSTANT], b.get(VS_CONSTANT))
                                         for name, b in oof["baselines"].items()}
                row["beats_constant"] = beats_constant(oof)
            row.update(selected_lr=sel["lr"], selected_epochs=sel["epochs"], cv_metric=sel["cv_mean"],
                       cv_sd=sel["cv_sd"], diverged_lrs=" ".join(f"{x:g}" for x in sel["diverged_lrs"]),
                       cv_seconds=timing.get("cv_s"), total_seconds=timing.get("total_s"))
        rows.append(row)
    rows += [{"run": f"{BASELINE_PREFIX}{name}", "name": BASELINES[name], "status": STATUS_BASELINE,
              **{k: v for k, v in b.items() if not isinstance(v, (dict, list))}, **oof_baselines.get(name, {})}
             for name, b in baselines.items()]
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["_order"] = df["run"].map(run_order)
    df = df.sort_values(["_order", "run"]).drop(columns="_order").reset_index(drop=True)
    cols = [c for c in SUMMARY_COLUMNS if c in df] + [c for c in df if c not in SUMMARY_COLUMNS]
    df = df[cols]
    atomic.write_csv(out / SUMMARY_CSV, df)
    shown = [c for c in SUMMARY_COLUMNS + TEST_PAIRED + OOF_PAIRED if c in df] + \
        [c for c in df if c.startswith("support_")] + [c for c in df if "range_exact[" in c]
    atomic.write_text(out / SUMMARY_MD, to_markdown(markdown_cells(df)[shown]))
    return df


def paired_columns(paired: dict[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """Summary columns of a vs_constant block (metrics.paired_range_difference): each difference with _lo/_hi, and
    the supports; none for results written before it."""
    if not paired:
        return {}
    out: dict[str, Any] = {}
    for k in STACK_RANGE_KEYS:
        d = paired[k]
        out.update({f"{prefix}{VS}{k}": d["difference"], f"{prefix}{VS}{k}_lo": d["lo"],
                    f"{prefix}{VS}{k}_hi": d["hi"]})
    out.update({f"{prefix}{k}": paired[k] for k in STACK_COUNTS})
    return out


def oof_columns(scores: dict[str, Any], constant: dict[str, Any], paired: dict[str, Any] | None) -> dict[str, Any]:
    """The out-of-fold columns of one predictor (`scores`: its oof_metrics.json entry) beside the constant's."""
    out = {f"{OOF}{k}": scores[k] for k in STACK_RANGE_KEYS} | {f"{OOF}n_stacks": scores["n_stacks"]}
    out.update({f"{OOF}{OF_CONSTANT}{k}": constant[k] for k in STACK_RANGE_KEYS})
    out.update(paired_columns(paired, OOF))
    return out


def source_columns(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Each source's exact IN range beside the constant's, where the stacks came from several sources."""
    out = {}
    for source, scores in metrics.get("by_source", {}).items():
        out[f"{prefix}range_exact[{source}]"] = scores["decoded"]["range_exact"]
        out[f"{prefix}constant_range_exact[{source}]"] = scores[f"baseline_{CONSTANT}"]["range_exact"]
    return out


def beats_constant(oof: dict[str, Any] | None) -> bool | None:
    """Whether a run's exact IN range beats every slice IN's beyond noise: the paired 95 % interval of the
    difference on the out-of-fold training stacks lies above 0. None without out-of-fold results."""
    paired = (oof or {}).get(VS_CONSTANT)
    if paired is None:
        return None
    return bool(paired["range_exact"]["lo"] > 0)


def markdown_cells(df: pd.DataFrame) -> pd.DataFrame:
    """summary.md's cells of the paired columns: each difference from the constant with its interval,
    "0.100 [0.025, 0.175]", and the stack counts as integers."""
    out = df.copy()
    for c in df:
        if VS in c and f"{c}_lo" in df:
            out[c] = [interval_text(v, lo, hi) for v, lo, hi in zip(df[c], df[f"{c}_lo"], df[f"{c}_hi"])]
        elif c.removeprefix(OOF) in STACK_COUNTS:
            out[c] = ["" if pd.isna(v) else str(int(v)) for v in df[c]]
    return out


def interval_text(value, lo, hi) -> str:
    if value is None or pd.isna(value):
        return ""
    return f"{value:.3f}" + ("" if pd.isna(lo) else f" [{lo:.3f}, {hi:.3f}]")


def label_efficiency_summary(df: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """Per run and fraction: finished repeats, patients (the same in every repeat), and mean and SD over repeats of
    each test metric."""
    metrics = [m for m in (metrics or CURVE_METRICS) if m in df]
    if df.empty:
        return pd.DataFrame()
    done = df[df["status"].isin(FINISHED)]
    g = done.groupby(["run", "fraction"], sort=False)
    table = g.agg(name=("name", "first"), depth=("depth", "first"), repeats=("repeat", "count"),
                  n_patients=("n_patients", "first"))
    for m in metrics:
        table[f"{m}_mean"] = g[m].mean()
        table[f"{m}_sd"] = g[m].std(ddof=1)
    order = {run: i for i, run in enumerate(pd.unique(df["run"]))}  # the paper's order, as the summaries give it
    return table.reset_index().sort_values(["run", "fraction"], key=lambda c: c.map(order) if c.name == "run" else c,
                                           kind="stable").reset_index(drop=True)


def to_markdown(df: pd.DataFrame) -> str:
    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else f"{v:.3f}"
        return str(v)
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"
