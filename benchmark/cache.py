"""The fast path: run the frozen part of a network once per image view and train only what follows it.

At depth 0 the frozen part is the whole backbone and the cache holds the pooled feature vector of each view; at
depth 1 it is everything before the last convolutional block and the cache holds the tensors that block reads.

Views. Validation and test rows get their single un-augmented view. Training rows get an *augmentation bank*: each
training slot (a row, or one oversampled copy of an OAP/OBS row) has K rotated views, and every epoch draws one of
them per slot. The per-epoch path (`--no-cache`) instead draws a fresh rotation every epoch. Both take their angles
from `data.view_angle`, and without augmentation both train on exactly the same inputs (a test).

Cache files live in <cache_dir>/<key>/ as .npy (memory-mapped on load) plus meta.json with shapes and sha256 per
file. The key hashes the backbone, its weights file, the preprocessing, the dataset (manifest and image files), the
view list and the split point, so a cache is never reused for other data or settings; a partial or corrupt cache fails the checksum
and is rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from tqdm.auto import tqdm

from data_prep.atomic import atomic_dir
from data_prep.manifest import file_sha256

from .data import Augmentation, Dataset, prefetched
from .infer import FeaturePass, in_precision, inference
from .log import get as get_log
from .preprocess import Preprocessing
from .registry import POOLED


@dataclass(frozen=True)
class Views:
    """A list of image views: (row, copy, draw) each; copy = -1 marks the un-augmented view."""

    rows: np.ndarray
    copies: np.ndarray
    draws: np.ndarray

    def angles(self, seed: int, max_deg: float) -> np.ndarray:
        return Augmentation(max_deg).of(seed, self.rows, self.copies, self.draws)[0]

    def digest(self) -> str:
        h = hashlib.sha256()
        for a in (self.rows, self.copies, self.draws):
            h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        return h.hexdigest()

    def __len__(self) -> int:
        return len(self.rows)

    def __add__(self, other: "Views") -> "Views":
        return Views(*(np.concatenate([a, b]) for a, b in zip((self.rows, self.copies, self.draws),
                                                               (other.rows, other.copies, other.draws))))


def plain_views(rows: np.ndarray) -> Views:
    rows = np.asarray(rows, dtype=np.int64)
    return Views(rows, np.full(len(rows), -1, np.int64), np.zeros(len(rows), np.int64))


def bank_views(ds: Dataset, pool: np.ndarray, factors: np.ndarray, k: int, augment: bool) -> Views:
    """Every view a cached fit over (a subset of) `pool` can draw: K per training slot, plus each row's plain view.

    Without augmentation every draw of every copy is the plain image, so the bank is just the plain views.
    """
    pool = np.asarray(pool, dtype=np.int64)
    if not augment:
        return plain_views(pool)
    reps = factors[ds.rows.y.to_numpy()[pool]]
    rows, copies, draws = [pool], [np.full(len(pool), -1)], [np.zeros(len(pool))]
    for r, n in zip(pool, reps):
        c, d = np.meshgrid(np.arange(n), np.arange(k), indexing="ij")
        rows.append(np.full(c.size, r))
        copies.append(c.ravel())
        draws.append(d.ravel())
    return Views(*(np.concatenate(a).astype(np.int64) for a in (rows, copies, draws)))


class ViewIndex:
    """Maps (row, copy, draw) to a position in a Views list (for gathering cached tensors), vectorised: a fit looks
    up every slot's view each epoch, and a dict lookup per slot cost ~6 % of a depth-0 fit."""

    def __init__(self, views: Views):
        keys = self._keys(views.rows, views.copies, views.draws)
        self._order = np.argsort(keys, kind="stable")
        self._sorted = keys[self._order]

    @staticmethod
    def _keys(rows, copies, draws) -> np.ndarray:
        rows, copies, draws = (np.asarray(a, dtype=np.int64) for a in (rows, copies, draws))
        if len(rows) and (copies.min() < -1 or max(copies.max() + 1, draws.max()) >= 1 << 16 or draws.min() < 0):
            raise ValueError("view copies and draws must lie in [-1, 65534] and [0, 65535]")
        return (rows << 32) | ((copies + 1) << 16) | draws

    def __call__(self, rows, copies, draws) -> np.ndarray:
        keys = self._keys(rows, copies, draws)
        at = np.minimum(np.searchsorted(self._sorted, keys), len(self._sorted) - 1)
        missing = self._sorted[at] != keys if len(self._sorted) else np.ones(len(keys), bool)
        if missing.any():
            i = int(np.flatnonzero(missing)[0])
            raise KeyError(f"view (row {rows[i]}, copy {copies[i]}, draw {draws[i]}) is not in the cache")
        return self._order[at]


def boundary(model: keras.Model, start: int) -> list:
    """Tensors that layers model.layers[start:] read from earlier layers: the outputs the cache must hold."""
    earlier = {id(layer.output): layer.output for layer in model.layers[:start]}
    out: list = []
    for layer in model.layers[start:]:
        inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        for t in inputs:
            if id(t) in earlier and all(t is not b for b in out):
                out.append(t)
    return out


def split_model(model: keras.Model, start: int) -> tuple[keras.Model, keras.Model]:
    """(prefix: image -> boundary tensors, suffix: boundary tensors -> output), sharing the model's layers."""
    tensors = boundary(model, start)
    prefix = keras.Model(model.input, tensors if len(tensors) > 1 else tensors[0], name="frozen_prefix")
    suffix = keras.Model(tensors if len(tensors) > 1 else tensors[0], model.output, name="trainable_suffix")
    return prefix, suffix


def depth0_start(model: keras.Model) -> int:
    """Depth 0 caches the pooled vector: everything after the pooling layer trains."""
    return [layer.name for layer in model.layers].index(POOLED) + 1


def weights_fingerprint(path: str | None) -> str:
    if path is None:
        return "random-init"
    p = Path(path)
    return f"{p.name}:{p.stat().st_size}:{file_sha256(p)[:16]}"


def cache_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _valid(directory: Path) -> dict | None:
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        for f in meta["files"]:
            path = directory / f["name"]
            if not path.is_file() or path.stat().st_size != f["bytes"] or file_sha256(path) != f["sha256"]:
                return None
    except (json.JSONDecodeError, KeyError, OSError):
        return None
    return meta


def cached_outputs(prefix: keras.Model | None, ds: Dataset, prep: Preprocessing, views: Views, *, cache_dir: Path,
                   key: str, seed: int, augmentation: Augmentation, run: FeaturePass, dtype: str = "float16",
                   describe: dict | None = None) -> list[np.ndarray]:
    """The prefix outputs for every view (prefix None: the preprocessed views themselves), computed once and
    memory-mapped from disk afterwards. `run` says at which precision and batch size the prefix runs; the
    precision changes the outputs, so the caller's key must include it."""
    directory = Path(cache_dir) / key
    meta = _valid(directory)
    if meta is None:
        if directory.exists():
            get_log("cache").warning(f"cache {directory} is incomplete or corrupt: rebuilding")
        _build(prefix, ds, prep, views, directory, seed, augmentation, dtype, run, describe or {})
        meta = _valid(directory)
        if meta is None:
            raise OSError(f"cache {directory} failed its checksum right after writing (disk full?)")
    return [np.load(directory / f["name"], mmap_mode="r") for f in meta["files"]]


def _build(prefix: keras.Model | None, ds: Dataset, prep: Preprocessing, views: Views, directory: Path, seed: int,
           augmentation: Augmentation, dtype: str, run: FeaturePass, describe: dict) -> None:
    with atomic_dir(directory) as tmp:
        shapes = output_shapes(prefix, prep)
        arrays = [np.lib.format.open_memmap(tmp / f"out{j}.npy", mode="w+", dtype=dtype, shape=(len(views), *shape))
                  for j, shape in enumerate(shapes)]
        angles, gammas = augmentation.of(seed, views.rows, views.copies, views.draws)
        forward = (lambda x: x) if prefix is None else inference(in_precision(prefix, run.precision))
        batch_size = run.batch_size
        batches = prefetched(len(views), batch_size, lambda sl: ds.make_inputs(views.rows[sl], prep, angles[sl],
                                                                               gammas[sl]))
        for sl, x in tqdm(batches, total=-(-len(views) // batch_size), desc="feature pass", unit="batch", leave=False,
                          disable=bool(os.environ.get("TQDM_DISABLE")) or None):  # jobs.py sets it in workers
            y = forward(x)
            for arr, part in zip(arrays, y if isinstance(y, (list, tuple)) else [y]):
                arr[sl] = np.asarray(part)
        for arr in arrays:
            arr.flush()
        del arrays
        files = []
        for j in range(len(shapes)):
            path = tmp / f"out{j}.npy"
            files.append({"name": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)})
        meta = {"files": files, "n_views": len(views), "dtype": dtype, "precision": run.precision,
                "batch_size": batch_size, **describe}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))


def output_shapes(prefix: keras.Model | None, prep: Preprocessing) -> list[tuple[int, ...]]:
    if prefix is None:
        return [(prep.input_size, prep.input_size, 3)]
    return [tuple(o.shape[1:]) for o in prefix.outputs]


def bytes_per_view(prefix: keras.Model | None, dtype: str, prep: Preprocessing) -> int:
    return int(sum(np.prod(s) for s in output_shapes(prefix, prep)) * np.dtype(dtype).itemsize)


class CachedInputs:
    """Training inputs gathered from cache arrays held in memory (as float32 tensors) for compiled epochs."""

    in_memory = True

    def __init__(self, arrays: list[np.ndarray], views: Views, augment: bool):
        import tensorflow as tf
        self.arrays = [np.asarray(a, dtype=np.float32) for a in arrays]
        self.tensors = [tf.constant(a) for a in self.arrays]
        self.index = ViewIndex(views)
        self.augment = augment
        self._y = None

    def positions(self, rows, copies, draws) -> np.ndarray:
        if not self.augment:  # every draw of every copy is the plain view
            return self.plain_positions(rows)
        return self.index(rows, copies, draws)

    def plain_positions(self, rows) -> np.ndarray:
        return self.index(rows, np.full(len(rows), -1), np.zeros(len(rows)))

    def y_tensor(self, targets: np.ndarray):
        import tensorflow as tf
        if self._y is None:
            self._y = tf.constant(targets)
        return self._y

    def batch(self, rows, copies, draws) -> list[np.ndarray]:
        pos = self.positions(rows, copies, draws)
        return [a[pos] for a in self.arrays]

    def plain(self, rows) -> list[np.ndarray]:
        return [a[self.plain_positions(rows)] for a in self.arrays]
