"""Table 1: the time each finished run took, per phase."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..layout import TIMED_PHASES, wall_seconds
from .columns import markdown_table, num
from .results import Results, done_runs


def table1_time(results: Results) -> pd.DataFrame:
    """Seconds per phase of each finished run (timing.json: the sum of its jobs' times, wherever they ran), their
    total (machine time) and the run's wall time (jobs that ran side by side counted once)."""
    rows = []
    for r in done_runs(results):
        t = r.timing
        row = {"run": r.name, "network": r.network, "depth": r.depth, "input_px": r.input_px,
               "weights": r.config.get("weights")}
        for key in TIMED_PHASES:
            row[key] = float(t[key]) if key in t else float("nan")
        phases = [row[k] for k in TIMED_PHASES]
        row["total_s"] = float(np.nansum(phases)) if not all(math.isnan(v) for v in phases) else float("nan")
        row["total_min"] = row["total_s"] / 60
        row["wall_min"] = float(t.get("wall_s", math.nan)) / 60
        row["started"], row["finished"] = t.get("started", math.nan), t.get("finished", math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def table1_markdown(df: pd.DataFrame) -> str:
    head = ["network", "depth", "input (px)", "feature pass (s)", "CV (s)", "fold models (s)", "final fit (s)",
            "test (s)", "total (min)", "wall (min)"]
    rows = [[r.network, str(r.depth), str(r.input_px), num(r.feature_pass_s, 1), num(r.cv_s, 1),
             num(r.foldinit_s, 1), num(r.final_s, 1), num(r.test_s, 1), num(r.total_min, 2), num(r.wall_min, 2)]
            for _, r in df.iterrows()]
    total = df["total_s"].sum() / 60
    spans = [(a, b, 60 * w) for a, b, w in zip(df["started"], df["finished"], df["wall_min"]) if not math.isnan(w)]
    spans = [(None, None, s) if math.isnan(a) else (a, b, s) for a, b, s in spans]
    wall = (f" Wall time of the {len(spans)} runs with a recorded span, runs that ran side by side counted once: "
            f"{wall_seconds(spans) / 60:.1f} min." if spans else "")
    return (markdown_table(head, rows) + f"\nEach phase is the sum of its jobs' times: the feature pass (the frozen "
            f"part run once over the images on the cached path), the CV fits, the depth-0 fold models that depth-1 "
            f"folds start from, the final fit and the test. Total = {total:.1f} min over {len(df)} runs (machine "
            f"time: jobs that ran in parallel each count in full); wall = the run's wall-clock time, its jobs' spans "
            f"merged.{wall} A phase a run does not have, or a time results written without job spans lack, is "
            f"shown as —.\n")
