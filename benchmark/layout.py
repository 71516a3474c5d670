"""The one owner of the results schema: where a run keeps each file, the inverse (what a folder is), its format,
its status, the paper's order of runs and the timed phases. Everything that writes or reads a results directory
spells paths and names through this module.

    OUT/summary.csv, summary.md                 one row per run folder and per baseline, in the paper's order
    OUT/<run>/config.json                       what made the run (results_format, profile, data, weights, ...)
             folds.csv, cv_history.csv, selection.json, test_predictions.csv, test_metrics.json, timing.json
             oof_predictions.csv, oof_metrics.json   out-of-fold over the training pool (slice ranges)
             model/model.keras, model/model.json   the final model and what `predict` needs to use it
             jobs/<job>/job.json, DONE            one folder per job of the run's job graph
             DONE                                 written last: the run is complete
             error.txt                            the last attempt failed (why)

<run> is <backbone>_d<depth> for a pretrained backbone, the backbone key for a CBR net trained from scratch, and
<run>+stack for a stack-context model on top of a depth-0 run, <run>+seg for the segmentation head of that backbone and
depth (its CV and final fits in jobs/ as a per-slice run's). Imports nothing that imports TensorFlow.
"""
from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any

from data_prep import atomic

from .errors import BenchmarkInputError
from .registry import BACKBONES, CBR, PRETRAINED

RESULTS_FORMAT = 1

# ---- file names ----------------------------------------------------------------------------------------------------
DONE = "DONE"
ERROR = "error.txt"
LOCK = ".lock"                # OUT/.lock: the process writing OUT (data_prep.lock), removed when it ends
CONFIG = "config.json"
FOLDS = "folds.csv"
CV_HISTORY = "cv_history.csv"
SELECTION = "selection.json"
TEST_PREDICTIONS = "test_predictions.csv"
TEST_METRICS = "test_metrics.json"
# the training pool, each slice predicted by the CV model of the fold that held it out (slice-range runs)
OOF_PREDICTIONS = "oof_predictions.csv"  # the columns of test_predictions.csv
OOF_METRICS = "oof_metrics.json"          # what test_metrics.json holds, for those predictions
TIMING = "timing.json"
MODEL_DIR = "model"
MODEL_FILE = "model.keras"
MODEL_JSON = "model.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
LABEL_EFFICIENCY = "label_efficiency.csv"
JOBS = "jobs"
JOB_JSON = "job.json"
HISTORY = "history.csv"       # a job's own training history
HEAD = "head.npz"             # a depth-0 fold or final model's head, which depth-1 fits start from
VAL_OUTPUT = "val_output.npy"  # a CV job's validation outputs per epoch, from which the run's decoding is tuned
STACK_SUFFIX = "+stack"
SEGMENT_SUFFIX = "+seg"       # a segmentation-head run (segment.py) beside the per-slice run of its backbone and depth
BASELINE_PREFIX = "baseline_"
# test_predictions.csv column of the predicted target (a multi-task run's `prediction` is its class)
TARGET_PREDICTION = {"regression": "prediction", "multi": "target_prediction"}

# ---- run status ---------------------------------------------------------------------------------------------------
STATUS_DONE = "done"
STATUS_FAILED = "failed"
STATUS_INCOMPLETE = "incomplete"
STATUS_BASELINE = "baseline"
FINISHED = (STATUS_DONE, STATUS_BASELINE)  # summary rows with results (a baseline row is not a run that failed)


def run_status(run_dir: Path) -> str:
    """done, failed (its last attempt left error.txt) or incomplete."""
    if (run_dir / DONE).is_file():
        return STATUS_DONE
    return STATUS_FAILED if (run_dir / ERROR).is_file() else STATUS_INCOMPLETE


def run_dirs(out: Path) -> list[Path]:
    """Every run folder under a results directory (those holding a config.json), sorted by name."""
    return sorted(p for p in out.iterdir() if (p / CONFIG).is_file())


def check_writable(out: Path) -> None:
    """Create --out if needed and refuse, with one message, a folder this process cannot write into."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise BenchmarkInputError(f"--out {out} is not writable ({exc.strerror})") from exc


# ---- run and job names --------------------------------------------------------------------------------------------
def run_name(backbone: str, depth: int) -> str:
    return f"{backbone}_d{depth}" if BACKBONES[backbone].pretrained else backbone


def stack_run_name(base_run: str) -> str:
    return base_run + STACK_SUFFIX


def segment_run_name(base_run: str) -> str:
    return base_run + SEGMENT_SUFFIX


def model_dir(run_dir: Path) -> Path:
    return run_dir / MODEL_DIR


def job_dir(run_dir: Path, job: str) -> Path:
    return run_dir / JOBS / job


def job_dir_name(step: str, lr: float | None = None, fold: int | None = None) -> str:
    """The folder of a job under <run>/jobs/ (`job_step` reads the step back)."""
    if step == "cv":
        return f"cv_lr{lr:g}_f{fold}"
    return f"foldinit_f{fold}" if step == "foldinit" else step


def job_step(job_dir_name: str) -> str:
    return job_dir_name.split("_")[0]


# ---- timed phases: job.json seconds summed per step into timing.json, Table 1's columns ------------------------------
TIMED_STEPS = {"features": "feature_pass_s", "cv": "cv_s", "foldinit": "foldinit_s", "final": "final_s",
               "test": "test_s"}
TIMED_PHASES = tuple(TIMED_STEPS.values())


class JobClock:
    """A job's clocks, started when the job starts: seconds of work (monotonic) and its wall-clock span, so that
    jobs that ran side by side (threaded CV fits, worker processes) can be summed as machine time and merged as
    wall time."""

    def __init__(self) -> None:
        self.t0, self.started = time.perf_counter(), time.time()

    def record(self, **extra: Any) -> dict[str, Any]:
        """job.json: seconds, started and finished (Unix time), and the job's own fields."""
        return {"seconds": time.perf_counter() - self.t0, "started": self.started, "finished": time.time(), **extra}


def job_seconds(run_dir: Path) -> dict[str, float]:
    """Seconds per step of a run, summed over its jobs' job.json (whichever process or machine ran them), their
    total (machine time), and `wall_s`: the length of the union of the jobs' spans, where jobs that ran at once
    count once.

    A job finished by an earlier, interrupted process counts with the time it took then."""
    total = {key: 0.0 for key in TIMED_PHASES}
    spans = []
    for p in (run_dir / JOBS).glob(f"*/{JOB_JSON}"):
        info = atomic.read_json(p)
        total[TIMED_STEPS[job_step(p.parent.name)]] += info["seconds"]
        spans.append((info.get("started"), info.get("finished"), info["seconds"]))
        if "cache_bytes_per_view" in info:
            total["cache_bytes_per_view"] = info["cache_bytes_per_view"]
    total["total_s"] = sum(total[k] for k in TIMED_PHASES)
    total["wall_s"] = wall_seconds(spans)
    timed = [(a, b) for a, b, _ in spans if a is not None and b is not None]
    if timed:  # the run's span, from which a report merges the wall time of runs that ran side by side
        total["started"], total["finished"] = min(a for a, _ in timed), max(b for _, b in timed)
    return total


def wall_seconds(spans: list[tuple[float | None, float | None, float]]) -> float:
    """Length of the union of (started, finished) intervals; a record without a span counts its seconds alone."""
    timed = sorted((a, b) for a, b, _ in spans if a is not None and b is not None)
    wall = sum(s for a, b, s in spans if a is None or b is None)
    end = -math.inf
    for a, b in timed:
        wall += max(0.0, b - max(a, end))
        end = max(end, b)
    return wall


# ---- the paper's order ----------------------------------------------------------------------------------------------
def grid_pairs(backbones: list[str], depths: list[int]) -> list[tuple[str, int]]:
    """(backbone, depth) pairs in the paper's order; a CBR net (trained from scratch) has depth 0 only."""
    out = []
    for k in backbones:
        out.extend([(k, 0)] if not BACKBONES[k].pretrained else [(k, d) for d in depths])
    return out


@functools.cache
def _paper_order() -> dict[str, int]:
    return {run_name(k, d): i for i, (k, d) in enumerate(grid_pairs(list(PRETRAINED + CBR), [0, 1]))}


def run_order(name: str) -> float:
    """Where a run sits in tables: the paper's model order, each stack model right after its per-slice run, then
    unknown names, then the baselines."""
    order = _paper_order()
    if name.startswith(BASELINE_PREFIX):
        return len(order) + 1
    for suffix, after in ((STACK_SUFFIX, 0.5), (SEGMENT_SUFFIX, 0.7)):
        if name.endswith(suffix):
            return order.get(name[:-len(suffix)], len(order)) + after
    return order.get(name, len(order))


# ---- the format check -----------------------------------------------------------------------------------------------
def check_format(path: Path, record: Any, *, fix: str) -> None:
    """Refuse a config.json or model.json written in another results format; `fix` says what the user can do."""
    found = record.get("results_format") if isinstance(record, dict) else None
    if found != RESULTS_FORMAT:
        raise BenchmarkInputError(f"{path}: written in results format {found} (results_format {found} in the file); "
                                  f"this code writes {RESULTS_FORMAT} and reads only that; {fix}")
