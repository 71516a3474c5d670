"""The dataset directory: the one contract between `data_prep` and `benchmark`.

A dataset directory holds
  manifest.csv   one row per slice image (columns below),
  images/        the slices, lossless at native resolution (16-bit PNG for unsigned integer data, else .npy),
  dataset.json   what made it: source, options, code version, counts, apex/base evidence, warnings.

Source modules build `Stack` objects (slices already ordered apex -> base) and hand them to `write_dataset`,
which writes everything under a temporary name and renames it into place, so an interrupted import never
leaves a directory that looks finished.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np
import pandas as pd

from .atomic import atomic_dir
from .errors import DataPrepError
from .provenance import code_version

FORMAT_VERSION = 1
SLICE_LABELS = ("OAP", "IN", "OBS")  # the paper's order: apex side, usable, base side
REQUIRED_COLUMNS = (
    "image", "dataset", "patient", "frame", "slice", "n_slices", "label", "pixel_spacing_mm", "source",
)
MANIFEST = "manifest.csv"
DATASET_JSON = "dataset.json"
IMAGE_DIR = "images"


@dataclass
class Stack:
    """One short-axis stack of one patient and frame, slices ordered apex (index 0) -> base.

    labels: one of SLICE_LABELS (or any class name for non-slice datasets) or "" for unlabelled, per slice.
    sources: where each slice came from (file name and index), never identifying header values.
    extra: additional per-slice columns (e.g. {"lv_cavity_px": [...]}), each a list as long as the stack.
    orientation: the apex/base evidence for this stack, stored in dataset.json.
    """

    patient: str
    frame: str
    images: list[np.ndarray]
    labels: list[str]
    sources: list[str]
    pixel_spacing_mm: float | None = None
    split: str | None = None
    extra: dict[str, list[Any]] = field(default_factory=dict)
    orientation: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.images)
        if n == 0:
            raise DataPrepError(f"stack {self.patient}/{self.frame} has no slices")
        for name, seq in [("labels", self.labels), ("sources", self.sources), *self.extra.items()]:
            if len(seq) != n:
                raise DataPrepError(
                    f"stack {self.patient}/{self.frame}: {len(seq)} {name} for {n} slices")
        bad = sorted({lab for lab in self.labels if lab is None})
        if bad:
            raise DataPrepError(f"stack {self.patient}/{self.frame}: label None (use '' for unlabelled)")


def image_suffix(img: np.ndarray) -> str:
    """16-bit PNG holds unsigned integers up to 65535 exactly; everything else is kept as .npy."""
    if img.dtype.kind == "u" and img.dtype.itemsize <= 2:
        return ".png"
    if img.dtype.kind == "i" and img.size and img.min() >= 0 and img.max() <= 65535:
        return ".png"
    return ".npy"


def save_image(path: Path, img: np.ndarray) -> Path:
    """Write one 2-D slice losslessly; returns the path actually written (suffix chosen by dtype)."""
    if img.ndim != 2:
        raise DataPrepError(f"{path}: expected a 2-D slice, got shape {img.shape}")
    path = path.with_suffix(image_suffix(img))
    if path.suffix == ".png":
        if not cv2.imwrite(str(path), img.astype(np.uint16)):
            raise DataPrepError(f"could not write {path}")
    else:
        np.save(path, np.ascontiguousarray(img), allow_pickle=False)
    return path


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read a slice written by `save_image` (or any 8/16-bit PNG/JPEG), as a 2-D array."""
    path = Path(path)
    if not path.is_file():
        raise DataPrepError(f"image file not found: {path}")
    if path.suffix == ".npy":
        try:
            img = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataPrepError(f"unreadable image file {path}: {exc}") from exc
    else:
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise DataPrepError(f"unreadable or truncated image file {path}")
        if img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if img.ndim != 2:
        raise DataPrepError(f"{path}: expected a 2-D image, got shape {img.shape}")
    return img


def _rows_for(stack: Stack, dataset: str, image_names: Sequence[str]) -> list[dict[str, Any]]:
    n = len(stack.images)
    rows = []
    for i in range(n):
        row = {
            "image": image_names[i],
            "dataset": dataset,
            "patient": stack.patient,
            "frame": stack.frame,
            "slice": i,
            "n_slices": n,
            "label": stack.labels[i],
            "pixel_spacing_mm": "" if stack.pixel_spacing_mm is None else round(float(stack.pixel_spacing_mm), 6),
            "source": stack.sources[i],
        }
        if stack.split is not None:
            row["split"] = stack.split
        for key, values in stack.extra.items():
            row[key] = values[i]
        rows.append(row)
    return rows


def counts(df: pd.DataFrame) -> dict[str, Any]:
    labels = df["label"].fillna("").replace("", "unlabelled")
    return {
        "n_patients": int(df["patient"].nunique()),
        "n_stacks": int(df.groupby(["patient", "frame"]).ngroups),
        "n_slices": int(len(df)),
        "label": {str(k): int(v) for k, v in labels.value_counts().sort_index().items()},
        "frame": {str(k): int(v) for k, v in df["frame"].astype(str).value_counts().sort_index().items()},
    }


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataPrepError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        what = "a dataset" if (out / MANIFEST).exists() else "files"
        raise DataPrepError(f"--out {out} already holds {what}; choose another directory or pass --overwrite")
    parent = out.parent if out.parent != Path("") else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a path component is a file
        raise DataPrepError(f"--out {out}: cannot create {parent} ({exc.strerror})") from exc
    if not os.access(parent, os.W_OK):
        raise DataPrepError(f"--out {out}: directory {parent} is not writable")


def write_dataset(out: str | os.PathLike, dataset: str, stacks: Iterable[Stack], *, source: str,
                  options: dict[str, Any] | None = None, warnings: Sequence[str] = (),
                  classes: Sequence[str] = SLICE_LABELS, overwrite: bool = False) -> Path:
    """Write a dataset directory atomically and return its path.

    classes: the class names in their reporting order (OAP, IN, OBS for slice data); every label must be one.
    Images go to images/<patient>_<frame>_s<slice>.{png,npy}. The files depend only on the stacks and the
    options (no timestamps), so the same import twice gives byte-identical files.
    """
    out = Path(out)
    _check_out_dir(out, overwrite)
    with atomic_dir(out) as tmp:
        (tmp / IMAGE_DIR).mkdir()
        rows: list[dict[str, Any]] = []
        evidence: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        for stack in stacks:
            key = (stack.patient, str(stack.frame))
            if key in seen:
                raise DataPrepError(f"two stacks for patient {stack.patient} frame {stack.frame}")
            seen.add(key)
            names = []
            for i, img in enumerate(stack.images):
                written = save_image(tmp / IMAGE_DIR / f"{stack.patient}_{stack.frame}_s{i:02d}", img)
                names.append(f"{IMAGE_DIR}/{written.name}")
            rows.extend(_rows_for(stack, dataset, names))
            if stack.orientation:
                evidence.append({"patient": stack.patient, "frame": str(stack.frame), **stack.orientation})
        if not rows:
            raise DataPrepError(f"no slices found in {source}")
        df = pd.DataFrame(rows)
        unknown = sorted(set(df["label"]) - set(classes) - {""})
        if unknown:
            raise DataPrepError(f"unknown label(s) {unknown} in {source}; expected one of {list(classes)}")
        df.to_csv(tmp / MANIFEST, index=False, lineterminator="\n")
        meta = {
            "format_version": FORMAT_VERSION,
            "dataset": dataset,
            "classes": list(classes),
            "source": str(source),
            "options": options or {},
            "code_version": code_version(),
            "manifest_sha256": file_sha256(tmp / MANIFEST),
            "counts": counts(df),
            "warnings": list(warnings),
            "orientation": evidence,
        }
        (tmp / DATASET_JSON).write_text(json.dumps(meta, indent=2, sort_keys=False, default=str) + "\n")
    return out


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(directory: str | os.PathLike) -> pd.DataFrame:
    """Load and validate a dataset directory's manifest; raises DataPrepError naming the problem."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise DataPrepError(f"{directory} is not a directory (expected a dataset directory made by data_prep)")
    if not path.is_file():
        raise DataPrepError(f"{directory} is not a dataset directory: {MANIFEST} is missing "
                            f"(make one with `python -m data_prep ...`)")
    try:
        df = pd.read_csv(path, dtype={"patient": str, "frame": str, "label": str, "source": str,
                                      "image": str, "split": str},
                         keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataPrepError(f"{path}: not a readable CSV ({exc})") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataPrepError(f"{path}: missing column(s) {', '.join(missing)}")
    if df.empty:
        raise DataPrepError(f"{path}: no rows")
    dup = df.duplicated(["patient", "frame", "slice"], keep=False)
    if dup.any():
        first = df[dup].iloc[0]
        raise DataPrepError(f"{path}: duplicate rows for patient {first.patient} frame {first.frame} "
                            f"slice {first.slice} ({int(dup.sum())} rows)")
    dup_img = df["image"].duplicated()
    if dup_img.any():
        raise DataPrepError(f"{path}: image {df['image'][dup_img].iloc[0]} is listed twice")
    for col in ("slice", "n_slices"):
        if not pd.api.types.is_integer_dtype(df[col]):
            raise DataPrepError(f"{path}: column {col} must hold integers")
    classes = dataset_classes(directory)
    unknown = sorted(set(df["label"]) - set(classes) - {""})
    if unknown:
        raise DataPrepError(f"{path}: unknown label(s) {unknown}; this dataset's classes are {list(classes)}")
    return df


def read_dataset_json(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / DATASET_JSON
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataPrepError(f"{path}: not valid JSON ({exc})") from exc


def dataset_classes(directory: str | os.PathLike) -> tuple[str, ...]:
    """The class list in reporting order, from dataset.json (OAP, IN, OBS when it does not say)."""
    return tuple(read_dataset_json(directory).get("classes", SLICE_LABELS))


def labelled(df: pd.DataFrame) -> pd.DataFrame:
    """Rows that carry a label (unlabelled rows have an empty label)."""
    return df[df["label"].astype(str) != ""]
