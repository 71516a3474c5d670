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
from .layout import (BASELINE_PREFIX, CONFIG, FINISHED, SELECTION, STATUS_BASELINE, STATUS_DONE,
                     SUMMARY_CSV, SUMMARY_MD, TEST_METRICS, TIMING, run_dirs, run_order, run_status)

SUMMARY_COLUMNS = ["run", "backbone", "name", "depth", "weights", "status", "f1_oap", "f1_in", "f1_obs", "macro_f1",
                   "accuracy", "soft_accuracy", "auc_micro", "auc_weighted", "range_exact", "range_within1",
                   "boundary_mae", "beats_constant", "mae", "rmse", "r2", "mae_mean_baseline"]
# the IN-range figures of a run: those of its decoding chosen on validation (test_metrics.json "decoded")
RANGE_COLUMNS = ("range_exact", "range_within1", "boundary_mae", "n_stacks")
CURVE_METRICS = ["macro_f1", "accuracy", "auc_micro", "range_exact"]


def write_summary(out: Path) -> pd.DataFrame:
    """summary.csv / summary.md over every run directory under `out`, in the paper's order."""
    rows: list[dict[str, Any]] = []
    baselines: dict[str, dict[str, Any]] = {}
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
                row["beats_constant"] = bool(m["decoded"]["range_exact"] > m["baselines"][CONSTANT]["range_exact"])
                baselines = baselines or m["baselines"]
                for source, scores in m.get("by_source", {}).items():  # several test sources: each one's range
                    row[f"range_exact[{source}]"] = scores["decoded"]["range_exact"]
                    row[f"constant_range_exact[{source}]"] = scores[f"baseline_{CONSTANT}"]["range_exact"]
            row.update(selected_lr=sel["lr"], selected_epochs=sel["epochs"], cv_metric=sel["cv_mean"],
                       cv_sd=sel["cv_sd"], diverged_lrs=" ".join(f"{x:g}" for x in sel["diverged_lrs"]),
                       cv_seconds=timing.get("cv_s"), total_seconds=timing.get("total_s"))
        rows.append(row)
    rows += [{"run": f"{BASELINE_PREFIX}{name}", "name": BASELINES[name], "status": STATUS_BASELINE,
              **{k: v for k, v in b.items() if not isinstance(v, (dict, list))}} for name, b in baselines.items()]
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["_order"] = df["run"].map(run_order)
    df = df.sort_values(["_order", "run"]).drop(columns="_order").reset_index(drop=True)
    cols = [c for c in SUMMARY_COLUMNS if c in df] + [c for c in df if c not in SUMMARY_COLUMNS]
    df = df[cols]
    atomic.write_csv(out / SUMMARY_CSV, df)
    atomic.write_text(out / SUMMARY_MD, to_markdown(df[[c for c in SUMMARY_COLUMNS if c in df] +
                                                         [c for c in df if c.startswith("support_")] +
                                                         [c for c in df if "range_exact[" in c]]))
    return df


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
