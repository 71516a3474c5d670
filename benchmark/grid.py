"""The run grid: which (backbone, depth) runs an invocation makes, the shared Experiment, and the summary table."""
from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_prep import atomic
from .data import BenchmarkInputError, Dataset, make_folds, train_test_split
from .profiles import Profile
from .protocol import DONE, Experiment, ModelRun, run_name
from .registry import BACKBONES, CBR, PRETRAINED, get_spec
from .task import make_task

SUMMARY_COLUMNS = ["run", "backbone", "name", "depth", "weights", "status", "f1_oap", "f1_in", "f1_obs", "macro_f1",
                   "accuracy", "soft_accuracy", "auc_micro", "auc_weighted", "mae", "rmse", "r2", "mae_mean_baseline"]


def default_cache_root() -> Path:
    return Path(os.environ.get("CARDIAC_BENCH_CACHE", Path.home() / ".cache" / "cardiac-bench"))


def synthetic_default(patients: int, seed: int = 0) -> Path:
    """The embedded phantom dataset, generated on first use and reused afterwards."""
    from data_prep import synthetic
    path = default_cache_root() / f"synthetic-p{patients}-s{seed}"
    if not (path / "manifest.csv").is_file():
        print(f"generating the synthetic default ({patients} patients) in {path}", flush=True)
        synthetic.generate(path, patients=patients, seed=seed, overwrite=True)
    return path


def plan(backbones: list[str], depth: str) -> list[tuple[str, int]]:
    """(backbone, depth) pairs in the paper's order; `all` = 9 backbones at the requested depths + 3 CBR."""
    keys = list(PRETRAINED + CBR) if backbones == ["all"] else backbones
    for k in keys:
        get_spec(k)
    depths = {"0": [0], "1": [1], "both": [0, 1]}[depth]
    out = []
    for k in keys:
        out.extend([(k, 0)] if not BACKBONES[k].pretrained else [(k, d) for d in depths])
    return out


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise BenchmarkInputError(f"--out {out} is not writable ({exc.strerror})") from exc


def make_experiment(data: Path, profile: Profile, seed: int, out: Path, weights: str, *, use_cache: bool,
                    test_data: Path | None = None, test_fraction: float | None = None,
                    cache_dir: Path | None = None, input_kind: str = "2d", task: str = "classification",
                    target: str | None = None) -> Experiment:
    ds = Dataset.load(data, target)
    test_ds = Dataset.load(test_data, target) if test_data else None
    if test_ds is not None and test_ds.classes != ds.classes:
        raise BenchmarkInputError(f"--test-data classes {test_ds.classes} differ from --data classes {ds.classes}")
    pool, test = train_test_split(ds, test_fraction, seed, test_ds)
    folds = make_folds(ds, pool, profile.n_folds, seed)
    head_task = make_task(task, ds.classes, target, ds.rows["target"].to_numpy()[pool] if target else None)
    desc = {"path": str(Path(data).resolve()), "manifest_sha256": ds.manifest_sha256, "n_labelled": len(ds.rows),
            "n_pool": int(len(pool)), "n_test": int(len(test) if test_ds is None else len(test_ds.rows)),
            "test_data": None if test_ds is None else {"path": str(Path(test_data).resolve()),
                                                       "manifest_sha256": test_ds.manifest_sha256},
            "test_fraction": test_fraction}
    exp = Experiment(ds=ds, pool=pool, test=test, folds=folds, profile=profile, seed=seed, out=out,
                     cache_dir=cache_dir or out / "cache", weights=weights, use_cache=use_cache, test_ds=test_ds,
                     data_desc=desc, input_kind=input_kind, task=head_task)
    exp.write_folds()
    return exp


def run_grid(exp: Experiment, pairs: list[tuple[str, int]], force: bool = False) -> pd.DataFrame:
    """Run each model in turn; a failing model is recorded (error.txt) and the grid goes on.

    Weights are resolved for every run first, so a missing weights file stops the grid before any work.
    """
    runs = [ModelRun(exp, get_spec(key), depth) for key, depth in pairs]
    for i, run in enumerate(runs, 1):
        name = run.name
        print(f"[{i}/{len(pairs)}] {name}", flush=True)
        t0 = time.perf_counter()
        try:
            m = run.run(force=force)
            print(f"[{i}/{len(pairs)}] {name}: {headline(m)} ({time.perf_counter() - t0:.0f} s)", flush=True)
        except (BenchmarkInputError, KeyboardInterrupt):
            raise
        except Exception as exc:  # one model's failure must not stop the grid; the error is kept on disk
            (exp.out / name).mkdir(parents=True, exist_ok=True)
            atomic.write_text(exp.out / name / "error.txt", traceback.format_exc())
            print(f"[{i}/{len(pairs)}] {name}: FAILED: {exc} (see {exp.out / name / 'error.txt'})",
                  file=sys.stderr, flush=True)
    return write_summary(exp.out)


def headline(m: dict[str, Any]) -> str:
    """The test figures a progress line shows: the class ones and/or the regression ones beside the baseline."""
    parts = []
    if "macro_f1" in m:
        parts.append(f"macro-F1 {m['macro_f1']:.3f}, accuracy {m['accuracy']:.3f}")
    if "mae" in m:
        parts.append(f"MAE {m['mae']:.4g} (predicting the training mean: {m['mae_mean_baseline']:.4g}), "
                     f"RMSE {m['rmse']:.4g}, R² {m['r2']:.3f}")
    return "; ".join(parts)


def write_summary(out: Path) -> pd.DataFrame:
    """summary.csv / summary.md over every run directory under `out`, in the paper's order."""
    rows: list[dict[str, Any]] = []
    order = {run_name(get_spec(k), d): i for i, (k, d) in enumerate(plan(["all"], "both"))}
    for d in sorted(p for p in out.iterdir() if (p / "config.json").is_file()):
        cfg = atomic.read_json(d / "config.json")
        row: dict[str, Any] = {"run": d.name, "backbone": cfg["backbone"], "name": cfg["backbone_name"],
                               "depth": cfg["depth"], "weights": cfg["weights"]}
        if cfg.get("target"):
            row.update(task=cfg["task"], target=cfg["target"])
        if (d / DONE).is_file():
            m = atomic.read_json(d / "test_metrics.json")
            sel = atomic.read_json(d / "selection.json")
            timing = atomic.read_json(d / "timing.json")
            row.update(status="done", **{k: v for k, v in m.items() if not isinstance(v, (dict, list))})
            row.update(selected_lr=sel["lr"], selected_epochs=sel["epochs"], cv_metric=sel["cv_mean"],
                       cv_sd=sel["cv_sd"], diverged_lrs=" ".join(f"{x:g}" for x in sel["diverged_lrs"]),
                       cv_seconds=timing.get("cv_s"), total_seconds=sum(timing.get(k, 0) for k in
                                                                         ("cv_s", "final_s", "test_s")))
        else:
            row["status"] = "failed" if (d / "error.txt").is_file() else "incomplete"
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["_order"] = df["run"].map(order).fillna(len(order))
    df = df.sort_values(["_order", "run"]).drop(columns="_order").reset_index(drop=True)
    cols = [c for c in SUMMARY_COLUMNS if c in df] + [c for c in df if c not in SUMMARY_COLUMNS]
    df = df[cols]
    atomic.write_csv(out / "summary.csv", df)
    atomic.write_text(out / "summary.md", to_markdown(df[[c for c in SUMMARY_COLUMNS if c in df] +
                                                         [c for c in df if c.startswith("support_")]]))
    return df


def to_markdown(df: pd.DataFrame) -> str:
    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else f"{v:.3f}"
        return str(v)
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"
