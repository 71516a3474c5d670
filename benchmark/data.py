"""Manifest -> labelled rows, patient-held-out test split, patient-grouped folds, and the training slots.

Everything here is plain numpy/pandas/scikit-learn and seeded; no TensorFlow.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import os
import sys
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold
from tqdm import tqdm

from data_prep.errors import DataPrepError
from data_prep.manifest import (MASK_COLUMN, check_finite, dataset_classes, file_sha256, labelled, load_image,
                                load_mask, mask_structures, read_manifest, MANIFEST)

from .cpus import usable_cpus
from .errors import BenchmarkInputError
from .log import get as get_log
from .preprocess import Preprocessing, make_input

T = TypeVar("T")


def default_cache_root() -> Path:
    return Path(os.environ.get("CARDIAC_BENCH_CACHE", Path.home() / ".cache" / "cardiac-bench"))


def synthetic_default(patients: int, seed: int = 0) -> Path:
    """The embedded phantom dataset, generated on first use and reused afterwards (made again where the copy
    there predates the phantom's masks)."""
    from data_prep import synthetic
    path = default_cache_root() / f"synthetic-p{patients}-s{seed}"
    if not (path / "manifest.csv").is_file() or not mask_structures(path):
        get_log("data").info(f"generating the synthetic default ({patients} patients) in {path}")
        synthetic.generate(path, patients=patients, seed=seed, overwrite=True)
    return path


SOURCE_SET = "source_set"  # the column that names each row's dataset directory in a multi-source Dataset
MASK_MYOCARDIUM = "mask_labels_myocardium"  # whether the row's mask labels the myocardium (DSB's label the cavity only)


@dataclass
class Dataset:
    """The labelled rows of one dataset directory, with integer targets `y` in the dataset's class order."""

    root: Path
    rows: pd.DataFrame
    classes: tuple[str, ...]
    manifest_sha256: str

    @classmethod
    def load(cls, root: str | Path, target: str | None = None) -> "Dataset":
        """The labelled rows; with `target`, that manifest column as float column `target` (checked numeric)."""
        root = Path(root)
        try:
            df = read_manifest(root)
            classes = dataset_classes(root)
        except DataPrepError as exc:
            raise BenchmarkInputError(str(exc)) from exc
        rows = labelled(df).sort_values(["patient", "frame", "slice"], kind="stable").reset_index(drop=True)
        if rows.empty:
            raise BenchmarkInputError(f"{root}: no labelled slices (every label is empty)")
        # read before the engine's own columns (y, target) join the manifest's
        values = target_values(rows, target, root / MANIFEST) if target is not None else None
        rows["y"] = rows["label"].map({c: i for i, c in enumerate(classes)}).astype(int)
        try:
            structures = mask_structures(root)
        except DataPrepError as exc:
            raise BenchmarkInputError(str(exc)) from exc
        if MASK_COLUMN not in rows or not structures:
            rows[MASK_COLUMN] = ""
        rows[MASK_MYOCARDIUM] = "lv_myocardium" in structures
        if values is not None:
            rows["target"] = values
        return cls(root, rows, tuple(classes), file_sha256(root / MANIFEST))

    @classmethod
    def load_many(cls, roots: Sequence[str | Path], target: str | None = None) -> "Dataset":
        """One dataset directory, or several as one Dataset (`--data A,B`): rows of every directory, image paths
        made absolute, patients prefixed with their directory's name (two sources never share a patient), and
        `source_set` naming the directory of each row, the source the splits stratify by and metrics are
        reported per. The classes of all must be the same, in the same order."""
        roots = [Path(r) for r in roots]
        if len(roots) == 1:
            return cls.load(roots[0], target)
        names = [r.resolve().name for r in roots]
        if len(set(names)) < len(names):
            raise BenchmarkInputError(f"--data/--test-data: directories {', '.join(map(str, roots))} share a name; "
                                      f"several sources need distinct directory names (they label the sources)")
        parts = [cls.load(r, target) for r in roots]
        for part in parts[1:]:
            if part.classes != parts[0].classes:
                raise BenchmarkInputError(f"{part.root}: classes {list(part.classes)} differ from {parts[0].root}'s "
                                          f"{list(parts[0].classes)}; sources of one experiment share their classes")
        frames = []
        for name, part in zip(names, parts):
            rows = part.rows.copy()
            rows["image"] = [str(part.root.resolve() / p) for p in rows["image"]]
            rows[MASK_COLUMN] = [str(part.root.resolve() / p) if p else "" for p in rows[MASK_COLUMN]]
            rows["patient"] = [f"{name}/{p}" for p in rows["patient"]]
            rows[SOURCE_SET] = name
            frames.append(rows)
        rows = pd.concat(frames, ignore_index=True).sort_values(["patient", "frame", "slice"], kind="stable")
        digest = hashlib.sha256(" ".join(p.manifest_sha256 for p in parts).encode()).hexdigest()
        common = Path(os.path.commonpath([r.resolve() for r in roots]))
        return cls(common, rows.reset_index(drop=True), parts[0].classes, digest)

    @property
    def sources(self) -> np.ndarray:
        """The source of each row: its directory when several were combined (load_many), else one value."""
        if SOURCE_SET in self.rows:
            return self.rows[SOURCE_SET].to_numpy()
        return np.full(len(self.rows), self.root.name, dtype=object)

    @property
    def has_masks(self) -> bool:
        """Whether any row has a segmentation mask (the segmentation head needs them)."""
        return bool((self.rows[MASK_COLUMN] != "").any())

    def mask(self, i: int) -> np.ndarray | None:
        """Row i's mask (data_prep MASK_CODES, the native image's shape), or None where it has none."""
        name = self.rows[MASK_COLUMN].iat[i]
        if not name:
            return None
        try:
            return load_mask(self.root / name, self.native(i).shape)
        except DataPrepError as exc:
            raise BenchmarkInputError(str(exc)) from exc

    @property
    def has_stacks(self) -> bool:
        """Ordered stacks (several slices per patient and frame) make soft accuracy and stack decoding meaningful."""
        return bool((self.rows["n_slices"] > 1).any())

    @cached_property
    def content_sha256(self) -> str:
        """The manifest and every labelled image file: images rewritten under an unchanged manifest (a re-import
        with --overwrite) make another dataset, which a feature cache must not mistake for this one."""
        h = hashlib.sha256(self.manifest_sha256.encode())
        for name in self.rows["image"]:
            h.update(f"{name}:{file_sha256(self.root / name)}".encode())
        return h.hexdigest()

    def check_images(self) -> None:
        """Read every image once (decode and finiteness), before any training: a bad file stops the run with one
        message naming it, instead of failing a feature pass or a fit, or poisoning it with NaN, minutes later."""
        names = self.rows["image"].tolist()
        for name in tqdm(names, desc=f"checking {self.root.name} images", unit="image", leave=False,
                         disable=None if len(names) >= 500 else True, file=sys.stderr):
            path = self.root / name
            try:
                img = load_image(path)
                check_finite(img, f"image file {path}")
            except DataPrepError as exc:
                raise BenchmarkInputError(str(exc)) from exc
            if img.size == 0:
                raise BenchmarkInputError(f"image file {path} holds an empty image (shape {img.shape})")

    @cached_property
    def _native(self) -> list[np.ndarray]:
        try:
            return [load_image(self.root / p) for p in self.rows["image"]]
        except DataPrepError as exc:  # bad data fails every model alike: stop the grid, not just this model
            raise BenchmarkInputError(str(exc)) from exc

    def native(self, i: int) -> np.ndarray:
        return self._native[i]

    @cached_property
    def _neighbours(self) -> np.ndarray:
        """Row index of the apex-side and base-side neighbour of each row (itself at a stack end or gap)."""
        key = {(p, f, s): i for i, (p, f, s) in enumerate(zip(self.rows.patient, self.rows.frame, self.rows.slice))}
        out = np.empty((len(self.rows), 2), dtype=np.int64)
        for i, (p, f, s) in enumerate(zip(self.rows.patient, self.rows.frame, self.rows.slice)):
            out[i] = key.get((p, f, s - 1), i), key.get((p, f, s + 1), i)
        return out

    def channels(self, i: int, input_kind: str) -> list[np.ndarray]:
        """The native slices that make row i's input: itself (2D), or apex-side, itself, base-side (2.5D)."""
        if input_kind == "2d":
            return [self.native(i)]
        apex, base = self._neighbours[i]
        return [self.native(apex), self.native(i), self.native(base)]

    def make_input(self, i: int, prep: Preprocessing, angle: float = 0.0, gamma: float = 1.0) -> np.ndarray:
        return make_input(self.channels(i, prep.input_kind), prep, angle, gamma)

    def make_inputs(self, rows: Sequence[int], prep: Preprocessing, angles: Sequence[float] | None = None,
                    gammas: Sequence[float] | None = None) -> np.ndarray:
        """The inputs of several rows as one batch, each rotated by its angle and through its contrast curve
        (default: neither)."""
        angles = np.zeros(len(rows)) if angles is None else angles
        gammas = np.ones(len(rows)) if gammas is None else gammas
        return np.stack([self.make_input(int(r), prep, a, g) for r, a, g in zip(rows, angles, gammas)])

    def stacks(self, idx: np.ndarray) -> pd.DataFrame:
        return self.rows.loc[idx, ["patient", "frame", "slice"]].reset_index(drop=True)


def target_values(rows: pd.DataFrame, column: str, where: Path) -> np.ndarray:
    """A regression target column as floats, or BenchmarkInputError naming the column and a bad value."""
    if column not in rows:
        raise BenchmarkInputError(f"{where}: no column {column!r} for --target (columns: {', '.join(rows.columns)})")
    values = pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise BenchmarkInputError(
            f"{where}: --target column {column!r} is not numeric: {int(bad.sum())} of {len(values)} labelled "
            f"slices hold no finite number (e.g. {rows[column].iat[i]!r} at patient {rows.patient.iat[i]} frame "
            f"{rows.frame.iat[i]} slice {rows.slice.iat[i]})")
    return values


def stratified_group_split(y: np.ndarray, groups: np.ndarray, n_splits: int,
                           seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded patient-grouped folds, stratified by class as far as the groups allow."""
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        fewer = f"use --folds {n_groups} or fewer, or more data" if n_groups >= 2 else "more data is needed"
        raise BenchmarkInputError(f"--folds {n_splits}: the training pool's {n_groups} patient(s) cannot make "
                                  f"{n_splits} patient-grouped folds; {fewer}")
    with warnings.catch_warnings():
        # sklearn warns when a class has fewer groups than folds; we report empty classes per fold ourselves
        warnings.simplefilter("ignore", UserWarning)
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return [(tr, va) for tr, va in splitter.split(np.zeros(len(y)), y, groups)]


def train_test_split(ds: Dataset, test_fraction: float | None, seed: int, test_ds: Dataset | None = None,
                     n_folds: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the training pool and the test set, never sharing a patient.

    Priority: a separate test dataset (all of ds is training); else the manifest's `split` column ("test" rows) when
    no fraction is given; else a seeded patient-level split stratified by class holding out `test_fraction` of the
    patients (`holdout_patients`), leaving at least `n_folds` training patients when the fraction was given.
    """
    rows = ds.rows
    if test_ds is not None:
        shared = sorted(set(rows.patient) & set(test_ds.rows.patient))
        if shared:
            raise BenchmarkInputError(f"--test-data shares {len(shared)} patient(s) with --data "
                                      f"(e.g. {shared[0]}); test patients must be unseen")
        return np.arange(len(rows)), np.array([], dtype=np.int64)
    if test_fraction is None and "split" in rows and (rows["split"] == "test").any():
        test = (rows["split"] == "test").to_numpy()
        shared = sorted(set(rows.patient[test]) & set(rows.patient[~test]))
        if shared:
            raise BenchmarkInputError(f"{ds.root}: split column puts patient {shared[0]} in train and test")
        return np.flatnonzero(~test), np.flatnonzero(test)
    fraction = 0.2 if test_fraction is None else test_fraction
    # with the default fraction, too small a pool is the folds' problem, and make_folds says so naming --folds
    held_out = holdout_patients(rows.patient.to_numpy(), rows.y.to_numpy(), fraction, seed,
                                n_folds if test_fraction is not None else 1, ds.sources)
    test = rows.patient.isin(held_out).to_numpy()
    return np.flatnonzero(~test), np.flatnonzero(test)


def holdout_patients(patients: np.ndarray, y: np.ndarray, fraction: float, seed: int, n_folds: int,
                     sources: np.ndarray | None = None) -> np.ndarray:
    """The test patients of --test-fraction: round(fraction * n) of the n patients (halves up), taken in a seeded
    order stratified by class signature (`stratified_order`), so each signature is held out in proportion.

    Refuses (naming --test-fraction) a fraction outside (0, 1), one that holds out no patient, and one that leaves
    fewer than `n_folds` training patients."""
    if not 0 < fraction < 1:
        raise BenchmarkInputError(f"--test-fraction must be between 0 and 1 (exclusive), got {fraction:g}")
    order = stratified_order(patients, y, np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,))),
                             sources)
    n = len(order)
    k = math.floor(round(fraction * n, 9) + 0.5)
    if k < 1 or n - k < n_folds:
        why = ("holds out no patient" if k < 1 else
               f"leaves {n - k} training patient(s), fewer than the {n_folds} patient-grouped CV folds (--folds) "
               f"need")
        # k >= 1 from fraction 0.5 / n on; k <= n - n_folds below (n - n_folds + 0.5) / n
        lo, hi = math.ceil(0.5 / n * 1000) / 1000, (math.ceil((n - n_folds + 0.5) / n * 1000) - 1) / 1000
        usable = (f"usable fractions here: {lo:g} to {hi:g}"
                  if n - n_folds >= 1 else f"{n} patients are too few for a test set and {n_folds} folds")
        raise BenchmarkInputError(f"--test-fraction {fraction:g} of {n} patients {why}; {usable}")
    return np.sort(order[:k])


def split_description(ds: Dataset, pool: np.ndarray, test_ds: Dataset | None, test: np.ndarray) -> dict[str, Any]:
    """The held-out share as realised: test patients and their fraction of all patients (config.json)."""
    n_train = ds.rows.patient.iloc[pool].nunique()
    n_test = (test_ds.rows if test_ds is not None else ds.rows.iloc[test]).patient.nunique()
    return {"n_test_patients": int(n_test), "test_fraction_realised": round(n_test / (n_train + n_test), 6)}


def make_folds(ds: Dataset, pool: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Patient-grouped CV folds over the training pool, as row indices into ds.rows."""
    y = ds.rows.y.to_numpy()[pool]
    for c, name in enumerate(ds.classes):
        if not (y == c).any():
            n_all = int((ds.rows.y == c).sum())
            where = f"all {n_all} of its slices are test rows" if n_all else "no labelled slice has it"
            raise BenchmarkInputError(f"{ds.root}: class {name} has no slice in the training pool ({where}); "
                                      f"every class of dataset.json needs training examples")
    groups = ds.rows.patient.to_numpy()[pool]
    # stratified by class within source: one source gives the class codes themselves (single-source folds unchanged)
    codes = pd.factorize(ds.sources[pool], sort=True)[0]
    strata = y + len(ds.classes) * codes
    folds = [(pool[tr], pool[va]) for tr, va in stratified_group_split(strata, groups, n_folds, seed)]
    for k, (tr, va) in enumerate(folds):
        for c, name in enumerate(ds.classes):
            if not (ds.rows.y.to_numpy()[tr] == c).any():
                raise BenchmarkInputError(f"fold {k}: class {name} has no training slice "
                                          f"(too few patients with {name}; use fewer folds or more data)")
            if not (ds.rows.y.to_numpy()[va] == c).any():
                warnings.warn(f"fold {k}: class {name} is absent from the validation part", stacklevel=2)
    return folds


def patient_order(patients: np.ndarray, y: np.ndarray, seed: int, repeat: int) -> np.ndarray:
    """The distinct patients in the order nested training subsets take them (`stratified_order`, seeded by seed and
    repeat)."""
    return stratified_order(patients, y, np.random.default_rng([seed, repeat]))


def stratified_order(patients: np.ndarray, y: np.ndarray, rng: np.random.Generator,
                     sources: np.ndarray | None = None) -> np.ndarray:
    """The distinct patients in a random order whose every prefix holds each class signature in proportion.

    Patients are stratified by their class signature (which classes their slices contain), within their source
    (`sources`, one per row) when several datasets were combined. Each stratum gets a
    seeded permutation spread evenly over [0, 1) from a random offset, and patients are taken in the order of those
    positions, so every prefix holds each stratum in proportion (the floor or ceiling of its share): a rare
    signature, such as the few patients with an OBS slice, is neither crowded out nor over-represented.
    """
    patients, y = np.asarray(patients), np.asarray(y)
    signature = pd.Series(y).groupby(patients).agg(lambda s: tuple(sorted(set(s))))  # index: sorted patients
    if sources is not None and len(set(sources)) > 1:
        source = pd.Series(np.asarray(sources)).groupby(patients).first()
        signature = pd.Series([(source[p], sig) for p, sig in signature.items()], index=signature.index)
    ids, keys = [], []
    for _, members in sorted(signature.groupby(signature), key=lambda g: g[0]):
        n = len(members)
        ids.append(members.index.to_numpy()[rng.permutation(n)])
        keys.append((np.arange(n) + rng.uniform()) / n)
    ids, keys = np.concatenate(ids), np.concatenate(keys)
    return ids[np.argsort(keys, kind="stable")]


def subset_size(fraction: float, n: int) -> int:
    """Patients a fraction keeps: ceil(fraction * n), immune to float noise such as 0.1 * 70 = 7.000000000000001."""
    return math.ceil(round(fraction * n, 9))


def nested_subsets(patients: np.ndarray, y: np.ndarray, classes: Sequence[str], fractions: Sequence[float],
                   seed: int, repeat: int, min_patients: int) -> list[np.ndarray]:
    """The sorted patient IDs of the training subset at each fraction: the first subset_size(f, n) patients of
    `patient_order`, so subsets of one repeat are nested and another repeat draws others.

    Refuses (BenchmarkInputError naming --train-fraction) a fraction outside (0, 1], and one whose subset misses a
    class or has fewer than `min_patients` patients; the message names the smallest usable fraction.
    """
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise BenchmarkInputError(f"--train-fraction must be in (0, 1], got {bad[0]:g}")
    patients, y = np.asarray(patients), np.asarray(y)
    order = patient_order(patients, y, seed, repeat)
    n = len(order)
    position = {p: i for i, p in enumerate(order)}
    first = {}  # class -> how many patients the order must take before one has a slice of it
    for c, name in enumerate(classes):
        with_c = [position[p] for p in np.unique(patients[y == c])]
        if not with_c:
            raise BenchmarkInputError(f"--train-fraction: no training patient has a {name} slice")
        first[name] = min(with_c) + 1
    need = max(min_patients, *first.values())
    smallest = math.ceil(need / n * 1000) / 1000  # rounded up, so that it really keeps `need` patients
    out = []
    for f in fractions:
        k = subset_size(f, n)
        if k < need:
            lacking = [name for name, m in first.items() if m > k]
            why = (f"no patient with a {lacking[0]} slice" if lacking
                   else f"fewer patients than the {min_patients} CV folds")
            raise BenchmarkInputError(f"--train-fraction {f:g} keeps {k} of {n} training patients (repeat {repeat}): "
                                      f"{why}; the smallest usable fraction is {smallest:g} ({need} patients)")
        out.append(np.sort(order[:k]))
    return out


def folds_frame(ds: Dataset, pool: np.ndarray, test: np.ndarray, folds) -> pd.DataFrame:
    """One row per slice: its patient and its role (test, or the CV fold it validates)."""
    role = pd.Series("", index=ds.rows.index, dtype=object)
    role[test] = "test"
    for k, (_, va) in enumerate(folds):
        role[va] = f"fold{k}"
    out = ds.rows[["image", "patient", "frame", "slice", "label"]].copy()
    out["role"] = role
    return out.loc[np.concatenate([pool, test])].sort_index()


def oversample_factors(y: np.ndarray, n_classes: int, factor: int) -> np.ndarray:
    """Copies per class: `factor` for every class but the most frequent one (OAP and OBS in slice data)."""
    counts = np.bincount(y, minlength=n_classes)
    out = np.full(n_classes, max(1, factor), dtype=np.int64)
    out[int(np.argmax(counts))] = 1
    return out


@dataclass(frozen=True)
class Slots:
    """Training slots of one fit: each row repeated by its oversampling factor (copy index kept)."""

    rows: np.ndarray     # row index per slot
    copies: np.ndarray   # copy index 0..factor-1 per slot

    @classmethod
    def build(cls, ds: Dataset, train_rows: np.ndarray, factors: np.ndarray) -> "Slots":
        reps = factors[ds.rows.y.to_numpy()[train_rows]]
        rows = np.repeat(train_rows, reps)
        copies = np.concatenate([np.arange(r) for r in reps]) if len(reps) else np.array([], np.int64)
        return cls(rows, copies.astype(np.int64))

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class Augmentation:
    """How a training view differs from the plain image: a rotation uniform in ±rotation_deg and, with
    intensity > 0, a contrast curve 255 (x / 255)^g with log g uniform in ±intensity (scanner and sequence
    contrast varies between sites). Each view's values are pure functions of (seed, row, copy, draw)."""

    rotation_deg: float
    intensity: float = 0.0

    @property
    def active(self) -> bool:
        return self.rotation_deg > 0 or self.intensity > 0

    def of(self, seed: int, rows, copies, draws) -> tuple[np.ndarray, np.ndarray]:
        """(angles, gammas) of views; a copy of -1 is the plain view (0 degrees, gamma 1)."""
        angles = np.array([0.0 if c < 0 else view_angle(seed, r, c, d, self.rotation_deg)
                           for r, c, d in zip(rows, copies, draws)], dtype=np.float64)
        gammas = np.array([1.0 if c < 0 else view_gamma(seed, r, c, d, self.intensity)
                           for r, c, d in zip(rows, copies, draws)], dtype=np.float64)
        return angles, gammas


def view_gamma(seed: int, row: int, copy: int, draw: int, intensity: float) -> float:
    """The contrast-curve exponent of one view (Augmentation), from its own random stream."""
    if intensity <= 0:
        return 1.0
    return float(np.exp(np.random.default_rng([seed, row, copy, draw, 1]).uniform(-intensity, intensity)))


def view_angle(seed: int, row: int, copy: int, draw: int, max_deg: float) -> float:
    """The rotation of one view: a pure function of (seed, row, copy, draw), so any path can recreate it."""
    if max_deg <= 0:
        return 0.0
    return float(np.random.default_rng([seed, row, copy, draw]).uniform(-max_deg, max_deg))


def prefetch_workers() -> int:
    """Threads that make batches ahead: the cores this process may use, less the one that runs the network
    (one on a 2-core machine; capped at 8, where a GPU's feature pass stops being limited by image making)."""
    return max(1, min(8, usable_cpus() - 1))


def prefetched(n: int, batch_size: int, make: Callable[[slice], T],
               workers: int | None = None) -> Iterator[tuple[slice, T]]:
    """(sl, make(sl)) for the consecutive batches sl of range(n), in order, the next `workers` batches made in
    background threads (default `prefetch_workers()`) while the caller uses this one.

    Image making (OpenCV, numpy; both release the GIL) then overlaps the network's forward pass, as a prefetching,
    parallel-mapped tf.data pipeline would, but keeps the batches exactly those of the sequential loop.
    """
    workers = workers or prefetch_workers()
    slices = (slice(start, start + batch_size) for start in range(0, n, batch_size))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = deque((sl, pool.submit(make, sl)) for sl in itertools.islice(slices, workers))
        while pending:
            sl, future = pending.popleft()
            for nxt in itertools.islice(slices, 1):
                pending.append((nxt, pool.submit(make, nxt)))
            yield sl, future.result()


class ImageInputs:
    """Training inputs made image by image: a fresh rotation for every (row, copy, epoch) — the per-epoch path."""

    in_memory = False

    def __init__(self, ds: Dataset, prep: Preprocessing, seed: int, augmentation: Augmentation):
        self.ds, self.prep, self.seed, self.augmentation = ds, prep, seed, augmentation

    def batch(self, rows, copies, draws) -> list[np.ndarray]:
        return [self.ds.make_inputs(rows, self.prep, *self.augmentation.of(self.seed, rows, copies, draws))]

    def plain(self, rows) -> list[np.ndarray]:
        return [self.ds.make_inputs(rows, self.prep)]
