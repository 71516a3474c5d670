"""A results directory as the report reads it: its runs (config.json and the result files of each), in the paper's
order, every file checked once with a message naming it."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from data_prep import atomic
from ..errors import BenchmarkInputError
from ..layout import (CONFIG, CV_HISTORY, DONE, SELECTION, STATUS_DONE, TARGET_PREDICTION, TEST_METRICS,
                      TEST_PREDICTIONS, TIMING, check_format, run_dirs, run_order, run_status)
from ..preprocess import Preprocessing

CONFIG_KEYS = ("backbone", "depth", "classes", "preprocessing")


@dataclass
class Run:
    """One model run directory OUT/<run>/ as the engine wrote it."""

    dir: Path
    config: dict[str, Any]

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def status(self) -> str:
        return run_status(self.dir)

    @property
    def done(self) -> bool:
        return self.status == STATUS_DONE

    @property
    def depth(self):
        return self.config["depth"]

    @property
    def network(self) -> str:
        return self.config.get("backbone_name", self.config["backbone"])

    @property
    def label(self) -> str:
        return run_label(self.network, self.depth)

    @property
    def title(self) -> str:
        """The label for figures, flagging a pretrained network that ran without its ImageNet weights."""
        random_init = self.depth != "scratch" and self.config.get("weights") == "none"
        return f"{self.label} (random init)" if random_init else self.label

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.config["classes"])

    @property
    def task(self) -> str:
        return self.config.get("task", "classification")

    @property
    def has_classes(self) -> bool:
        return self.task != "regression"

    @property
    def has_target(self) -> bool:
        return self.task != "classification"

    def target_arrays(self) -> tuple[np.ndarray, np.ndarray, float]:
        """True and predicted target of the test rows, and the training pool's mean (the baseline's prediction)."""
        df = self.predictions
        return (df["target"].to_numpy(dtype=np.float64), df[TARGET_PREDICTION[self.task]].to_numpy(dtype=np.float64),
                float(self.config["target_standardisation"]["mean"]))

    @property
    def input_px(self) -> int:
        return Preprocessing.from_key(self.config["preprocessing"]).input_size

    def _json(self, name: str) -> dict[str, Any]:
        path = self.dir / name
        try:
            value = atomic.read_json(path)
        except FileNotFoundError:
            raise BenchmarkInputError(f"{path} is missing although {self.dir / DONE} exists") from None
        except json.JSONDecodeError as exc:
            raise BenchmarkInputError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(value, dict):
            raise BenchmarkInputError(f"{path}: expected a JSON object, got {type(value).__name__}")
        return value

    def _csv(self, name: str, **kwargs) -> pd.DataFrame:
        path = self.dir / name
        try:
            return pd.read_csv(path, **kwargs)
        except FileNotFoundError:
            raise BenchmarkInputError(f"{path} is missing although {self.dir / DONE} exists") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise BenchmarkInputError(f"{path}: not a readable CSV ({exc})") from None

    @cached_property
    def metrics(self) -> dict[str, Any]:
        return self._json(TEST_METRICS)

    @cached_property
    def selection(self) -> dict[str, Any]:
        return self._json(SELECTION)

    @cached_property
    def timing(self) -> dict[str, Any]:
        return self._json(TIMING)

    @cached_property
    def history(self) -> pd.DataFrame:
        return self._csv(CV_HISTORY)

    @cached_property
    def predictions(self) -> pd.DataFrame:
        labels = ("label", "prediction") if self.has_classes else ("label",)  # a regression predicts a number
        text = {c: str for c in ("patient", "frame", "monotone", *labels)}
        df = self._csv(TEST_PREDICTIONS, dtype=text, keep_default_na=False)
        need = ["patient", "frame", "slice", "label"]
        need += ["prediction", *(f"p_{c}" for c in self.classes)] if self.has_classes else []
        need += ["target", TARGET_PREDICTION[self.task]] if self.has_target else []
        missing = [c for c in need if c not in df]
        if missing:
            raise BenchmarkInputError(f"{self.dir / TEST_PREDICTIONS}: missing column(s) {', '.join(missing)}")
        unknown = sorted(set().union(*(set(df[c]) for c in labels)) - set(self.classes))
        if unknown:
            raise BenchmarkInputError(f"{self.dir / TEST_PREDICTIONS}: labels {unknown} are not among the "
                                      f"run's classes {list(self.classes)}")
        return df

    def metric(self, key: str, section: str = "") -> float:
        """A test metric from test_metrics.json (`section`: "monotone", "decoded" or the top level); NaN when
        absent."""
        m = self.metrics.get(section, {}) if section else self.metrics
        value = m.get(key)
        return float("nan") if value is None else float(value)


@dataclass
class Results:
    root: Path
    runs: list[Run]          # every run directory, in the paper's order

    @property
    def done(self) -> list[Run]:
        return [r for r in self.runs if r.done]

    def get(self, name: str) -> Run:
        for r in self.runs:
            if r.name == name:
                return r
        raise BenchmarkInputError(f"no run {name!r} in {self.root}; runs: {', '.join(r.name for r in self.runs)}")

    @property
    def classes(self) -> tuple[str, ...]:
        found = {r.classes for r in self.done}
        if len(found) > 1:
            raise BenchmarkInputError(f"{self.root}: runs use different classes ({sorted(found)}); one report "
                                      f"covers one class set")
        return found.pop()

    @property
    def task(self) -> str:
        found = {(r.task, r.config.get("target")) for r in self.done}
        if len(found) > 1:
            raise BenchmarkInputError(f"{self.root}: runs of different tasks ({sorted(found, key=str)}); one report "
                                      f"covers one task")
        return found.pop()[0]

    def best(self, runs: Sequence[Run] | None = None) -> Run:
        """Highest test macro-F1 (NaN last; ties: the paper's order)."""
        pool = list(self.done if runs is None else runs)
        if not pool:
            raise BenchmarkInputError(f"{self.root}: no finished run")
        return min(pool, key=lambda r: rank_key(r.metric("macro_f1")))


def run_label(network: str, depth) -> str:
    """How tables and figures name a run: the network and its depth (none for a CBR net, trained from scratch)."""
    return network if depth == "scratch" else f"{network} d{depth}"


def rank_key(value: float) -> float:
    """Sort key of a higher-is-better score: best first, NaN last."""
    return math.inf if math.isnan(value) else -value


def load_results(path: str | Path) -> Results:
    """Read a results directory written by `python -m benchmark`; BenchmarkInputError with one message if it is not."""
    root = Path(path)
    if not root.is_dir():
        raise BenchmarkInputError(f"{root} is not a directory (give a results directory written by "
                                  f"`python -m benchmark --out DIR`)")
    runs = []
    for d in run_dirs(root):
        try:
            config = atomic.read_json(d / CONFIG)
        except json.JSONDecodeError as exc:
            raise BenchmarkInputError(f"{d / CONFIG}: not valid JSON ({exc})") from None
        check_format(d / CONFIG, config, fix="report it with the code version that wrote it")
        missing = [k for k in CONFIG_KEYS if k not in config]
        if missing:
            raise BenchmarkInputError(f"{d / CONFIG}: missing {', '.join(missing)}")
        runs.append(Run(d, config))
    if not runs:
        raise BenchmarkInputError(f"{root} is not a results directory: no <run>/{CONFIG} in it (expected "
                                  f"OUT/<backbone>_d<depth>/ folders written by `python -m benchmark --out OUT`)")
    runs.sort(key=lambda r: (run_order(r.name), r.name))
    return Results(root, runs)


def done_runs(results: Results) -> list[Run]:
    """The finished runs; BenchmarkInputError, saying what the run folders are instead, when there is none."""
    runs = results.done
    if not runs:
        statuses = ", ".join(sorted({r.status for r in results.runs}))
        raise BenchmarkInputError(f"{results.root}: no finished run (a run is finished when <run>/{DONE} exists; "
                                  f"{len(results.runs)} run folder(s) are {statuses})")
    return runs


def confusion(run: Run) -> np.ndarray:
    """Counts (true x predicted, classes in the run's order) from test_predictions.csv."""
    df = run.predictions
    index = {c: i for i, c in enumerate(run.classes)}
    counts = np.zeros((len(index), len(index)), dtype=np.int64)
    np.add.at(counts, (df["label"].map(index).to_numpy(), df["prediction"].map(index).to_numpy()), 1)
    return counts
