"""The run grid: which (backbone, depth) runs an invocation makes and the shared Experiment; summary.py writes the
table across its runs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from data_prep import atomic
from .data import Dataset, make_folds, nested_subsets, split_description, train_test_split
from .errors import BenchmarkInputError
from .profiles import Profile
from .jobs import Executor, InProcess, run_jobs
from .layout import LABEL_EFFICIENCY, grid_pairs
from .protocol import HEADS, Experiment
from .registry import CBR, PRETRAINED, get_spec
from .summary import label_efficiency_summary, to_markdown, write_summary
from .task import make_task


def plan(backbones: list[str], depth: str) -> list[tuple[str, int]]:
    """(backbone, depth) pairs in the paper's order; `all` = 9 backbones at the requested depths + 3 CBR."""
    keys = list(PRETRAINED + CBR) if backbones == ["all"] else backbones
    for k in keys:
        get_spec(k)
    return grid_pairs(keys, {"0": [0], "1": [1], "both": [0, 1]}[depth])


def make_experiment(data: Path, profile: Profile, seed: int, out: Path, weights: str, *, use_cache: bool,
                    test_data: Path | None = None, test_fraction: float | None = None,
                    cache_dir: Path | None = None, input_kind: str = "2d", task: str = "classification",
                    target: str | None = None, head: str | None = None) -> Experiment:
    ds, test_ds, pool, test, desc = _load_split(data, seed, test_data, test_fraction, target, profile.n_folds)
    try:
        folds = make_folds(ds, pool, profile.n_folds, seed)
    except BenchmarkInputError as exc:
        if test_fraction is None:
            raise
        raise BenchmarkInputError(f"--test-fraction {test_fraction:g} ({ds.rows.patient.iloc[pool].nunique()} "
                                  f"training patients left): {exc}; a smaller --test-fraction leaves more") from None
    exp = Experiment(ds=ds, pool=pool, test=test, folds=folds, profile=profile,
                     seed=seed, out=out, cache_dir=cache_dir or out / "cache", weights=weights, use_cache=use_cache,
                     test_ds=test_ds, data_desc=desc, input_kind=input_kind,
                     task=_task(task, ds, target, pool))
    exp.heads = heads(head, exp)
    return exp


def heads(head: str | None, exp: Experiment) -> tuple[str, ...]:
    """`--head classify|segment|both|auto` (None: the profile's) as the heads an experiment trains; auto: both where
    the training data has masks and slice ranges, else the classifiers."""
    can_segment = exp.ds.has_masks and exp.slice_ranges
    head = head or exp.profile.head
    if head not in ("auto", "classify", "segment", "both"):
        raise BenchmarkInputError(f"profile {exp.profile.name}: head {head!r}; valid: auto, classify, segment, both")
    if head == "auto":
        head = "both" if can_segment else "classify"
    if head != "classify" and not can_segment:
        raise BenchmarkInputError(f"--head {head}: the segmentation head needs OAP/IN/OBS stacks with masks, and "
                                  f"{exp.ds.root} has " + ("no masks (data_prep keeps them where the source has "
                                                           "them)" if not exp.ds.has_masks else "no slice ranges"))
    return {"classify": ("classify",), "segment": ("segment",), "both": HEADS}[head]


def _task(task: str, ds: Dataset, target: str | None, pool: np.ndarray):
    """The head's task; a regression target is standardised with the training rows' statistics."""
    return make_task(task, ds.classes, target, ds.rows["target"].to_numpy()[pool] if target else None)


def _paths(data: Path | Sequence[Path] | None) -> list[Path]:
    """--data / --test-data as a list of dataset directories (one, or several combined: Dataset.load_many)."""
    if data is None:
        return []
    return [Path(p) for p in data] if isinstance(data, (list, tuple)) else [Path(data)]


def _described(paths: list[Path]) -> str | list[str]:
    resolved = [str(p.resolve()) for p in paths]
    return resolved[0] if len(resolved) == 1 else resolved


def _load_split(data: Path | Sequence[Path], seed: int, test_data: Path | Sequence[Path] | None,
                test_fraction: float | None, target: str | None, n_folds: int):
    """(dataset, test dataset or None, training pool rows, test rows, the data part of config.json)."""
    data_paths, test_paths = _paths(data), _paths(test_data)
    both = {p.resolve() for p in data_paths} & {p.resolve() for p in test_paths}
    if both and len(data_paths) + len(test_paths) > 2:  # combined sources prefix their patients: compare folders
        raise BenchmarkInputError(f"--test-data {sorted(both)[0]} is also in --data; test patients must be unseen")
    ds = Dataset.load_many(data_paths, target)
    test_ds = Dataset.load_many(test_paths, target) if test_paths else None
    if test_ds is not None and test_ds.classes != ds.classes:
        raise BenchmarkInputError(f"--test-data classes {test_ds.classes} differ from --data classes {ds.classes}")
    pool, test = train_test_split(ds, test_fraction, seed, test_ds, n_folds)
    for d in (ds, test_ds) if test_ds is not None else (ds,):
        d.check_images()
    desc = {"path": _described(data_paths), "manifest_sha256": ds.manifest_sha256,
            "content_sha256": ds.content_sha256, "n_labelled": len(ds.rows),
            "n_pool": len(pool), "n_test": int(len(test) if test_ds is None else len(test_ds.rows)),
            "test_data": None if test_ds is None else {"path": _described(test_paths),
                                                       "manifest_sha256": test_ds.manifest_sha256,
                                                       "content_sha256": test_ds.content_sha256},
            "test_fraction": test_fraction, **split_description(ds, pool, test_ds, test)}
    return ds, test_ds, pool, test, desc


@dataclass(frozen=True)
class SubsetExperiment:
    """One point of a label-efficiency curve: the Experiment on the training subset of `fraction` in `repeat`."""

    fraction: float
    repeat: int
    exp: Experiment


def subset_dir(out: Path, fraction: float, repeat: int) -> Path:
    return out / f"frac{fraction:g}" / f"rep{repeat}"


def make_label_experiments(data: Path, profile: Profile, seed: int, out: Path, weights: str, *, use_cache: bool,
                           fractions: list[float], repeats: int, test_data: Path | None = None,
                           test_fraction: float | None = None, cache_dir: Path | None = None,
                           input_kind: str = "2d", task: str = "classification",
                           target: str | None = None) -> list[SubsetExperiment]:
    """One Experiment per fraction x repeat, all checked before any is run.

    Every experiment has the same test set and the same --seed (folds, initialisation, augmentation); only the
    training patients differ: data.nested_subsets of the pool, seeded by (seed, repeat). CV folds are made on the
    subset. All share one cache directory and the whole pool's bank (Experiment.cache_views), so the cached path
    runs the frozen part once for the whole curve.
    """
    ds, test_ds, pool, test, desc = _load_split(data, seed, test_data, test_fraction, target, profile.n_folds)
    patients = ds.rows.patient.to_numpy()
    out_list = []
    for r in range(repeats):
        subsets = nested_subsets(patients[pool], ds.rows.y.to_numpy()[pool], ds.classes, fractions, seed, r,
                                 profile.n_folds)
        for f, chosen in zip(fractions, subsets):
            rows = pool[np.isin(patients[pool], chosen)]
            try:
                folds = make_folds(ds, rows, profile.n_folds, seed)
            except BenchmarkInputError as exc:
                raise BenchmarkInputError(f"--train-fraction {f:g} (repeat {r}: {len(chosen)} training patients): "
                                          f"{exc}") from None
            sub_desc = {**desc, "n_pool": len(rows), "train_fraction": f, "repeat": r,
                        "subset_seed": [seed, r], "n_pool_patients": len(np.unique(patients[pool])),
                        "subset_patients": [str(p) for p in chosen]}
            exp = Experiment(ds=ds, pool=rows, test=test, folds=folds, profile=profile, seed=seed,
                             out=subset_dir(out, f, r), cache_dir=cache_dir or out / "cache", weights=weights,
                             use_cache=use_cache, test_ds=test_ds, data_desc=sub_desc, input_kind=input_kind,
                             bank_rows=pool, task=_task(task, ds, target, rows))
            out_list.append(SubsetExperiment(f, r, exp))
    return out_list


def run_grid(exp: Experiment, pairs: list[tuple[str, int]], force: bool = False,
             executor: Executor | None = None) -> pd.DataFrame:
    """Run the grid's job graph (jobs.py) on an executor (default: this process), then write the summary.

    A model whose job fails twice is recorded (<run>/error.txt) and the grid goes on; bad input stops it.
    """
    if executor is None:
        with InProcess() as executor:
            return run_grid(exp, pairs, force, executor)
    run_jobs(exp, pairs, executor, force=force)
    return write_summary(exp.out)


def write_label_efficiency(out: Path, subsets: list[SubsetExperiment]) -> pd.DataFrame:
    """OUT/label_efficiency.csv (one row per run x fraction x repeat, from each subset's summary) and
    OUT/label_efficiency_summary.csv/.md (mean ± SD over repeats)."""
    parts = []
    for s in subsets:
        summary = write_summary(s.exp.out)
        if summary.empty:
            continue
        summary.insert(0, "n_patients", len(s.exp.data_desc["subset_patients"]))
        summary.insert(0, "repeat", s.repeat)
        summary.insert(0, "fraction", s.fraction)
        parts.append(summary)
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    atomic.write_csv(out / LABEL_EFFICIENCY, df)
    table = label_efficiency_summary(df)
    atomic.write_csv(out / "label_efficiency_summary.csv", table)
    atomic.write_text(out / "label_efficiency_summary.md", to_markdown(table))
    return df
