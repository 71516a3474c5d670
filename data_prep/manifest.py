"""The dataset directory: the one contract between `data_prep` and `benchmark`.

A dataset directory holds
  manifest.csv   one row per slice image (columns below),
  images/        the slices, lossless at native resolution (16-bit PNG for unsigned integer data, else .npy),
  masks/         where the source has them, each slice's segmentation as an 8-bit PNG of the image's size, coded
                 as ACDC codes it (MASK_CODES); the manifest's `mask` column names it ("" for a slice without one),
  dataset.json   what made it: source, options, code version, counts, apex/base evidence, warnings, and which
                 structures the masks label (`mask_structures`).

Source modules build `Stack` objects (slices already ordered apex -> base) and hand them to `write_dataset`,
which writes everything under a temporary name and renames it into place, so an interrupted import never
leaves a directory that looks finished. An existing dataset is renamed aside first and deleted only once the new
one is in place; --overwrite replaces nothing but a dataset, and never the source or the current directory
(`check_out_dir`). Every image passes `check_finite` on its way in; a full disk is one DataPrepError.
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
MASK_DIR = "masks"
MASK_COLUMN = "mask"
# ACDC's coding of its ground truth, kept for every source: 0 background and one code per structure
MASK_CODES = {"rv_cavity": 1, "lv_myocardium": 2, "lv_cavity": 3}
# how every figure outlines each structure (Okabe-Ito, none of them a label colour)
MASK_COLOURS = {"lv_cavity": "#F0E442", "lv_myocardium": "#CC79A7", "rv_cavity": "#56B4E9"}
OVERWRITE_HELP = ("replace --out when it holds a dataset made by data_prep (a folder of other files, the source or "
                  "the current directory is never replaced)")


@dataclass
class Stack:
    """One short-axis stack of one patient and frame, slices ordered apex (index 0) -> base.

    labels: one of SLICE_LABELS (or any class name for non-slice datasets) or "" for unlabelled, per slice.
    sources: where each slice came from (file name and index), never identifying header values.
    extra: additional per-slice columns (e.g. {"lv_cavity_px": [...]}), each a list as long as the stack.
    orientation: the apex/base evidence for this stack, stored in dataset.json.
    masks: None for a stack without masks, else per slice a 2-D uint8 array of the image's shape coded by
        MASK_CODES (None for a slice the source gives no mask for).
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
    masks: list[np.ndarray | None] | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        if n == 0:
            raise DataPrepError(f"stack {self.patient}/{self.frame} has no slices")
        per_slice = [("labels", self.labels), ("sources", self.sources), *self.extra.items()]
        if self.masks is not None:
            per_slice.append(("masks", self.masks))
        for name, seq in per_slice:
            if len(seq) != n:
                raise DataPrepError(
                    f"stack {self.patient}/{self.frame}: {len(seq)} {name} for {n} slices")
        bad = sorted({lab for lab in self.labels if lab is None})
        if bad:
            raise DataPrepError(f"stack {self.patient}/{self.frame}: label None (use '' for unlabelled)")
        for i, (img, mask) in enumerate(zip(self.images, self.masks or [])):
            if mask is not None:
                check_mask(mask, img.shape, f"stack {self.patient}/{self.frame} slice {i}")


def check_mask(mask: np.ndarray, shape: tuple[int, ...], where: str) -> None:
    """A mask is the image's shape in uint8 with no code outside MASK_CODES: anything else would be read back
    as another structure, or misregistered with its slice."""
    if mask.dtype != np.uint8 or mask.shape != tuple(shape):
        raise DataPrepError(f"{where}: mask of {mask.dtype} {mask.shape} for an image of {tuple(shape)} "
                            f"(expected uint8 of the image's shape)")
    bad = sorted(set(np.unique(mask).tolist()) - {0, *MASK_CODES.values()})
    if bad:
        raise DataPrepError(f"{where}: mask codes {bad} outside {{0, {', '.join(map(str, MASK_CODES.values()))}}}")


def save_mask(path: Path, mask: np.ndarray) -> Path:
    """Write one mask as an 8-bit PNG (lossless); returns the path written."""
    path = path.with_suffix(".png")
    ok, png = cv2.imencode(".png", mask)
    if not ok:
        raise DataPrepError(f"could not encode {path.name} as PNG")
    path.write_bytes(png.tobytes())
    return path


def load_mask(path: str | os.PathLike, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read a mask written by `save_mask`, checked against MASK_CODES (and the image's shape when given)."""
    path = Path(path)
    if not path.is_file():
        raise DataPrepError(f"mask file not found: {path}")
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise DataPrepError(f"unreadable or truncated mask file {path}")
    if mask.ndim != 2:
        raise DataPrepError(f"{path}: expected a 2-D mask, got shape {mask.shape}")
    check_mask(mask, mask.shape if shape is None else shape, str(path))
    return mask


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
        # encoded in memory and written by Python, so a full disk is an OSError with its errno (cv2.imwrite only
        # returns False); the bytes are the same as cv2.imwrite's
        ok, png = cv2.imencode(".png", img.astype(np.uint16))
        if not ok:
            raise DataPrepError(f"could not encode {path.name} as PNG")
        path.write_bytes(png.tobytes())
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


def _rows_for(stack: Stack, dataset: str, image_names: Sequence[str],
              mask_names: Sequence[str] | None) -> list[dict[str, Any]]:
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
        if mask_names is not None:
            row[MASK_COLUMN] = mask_names[i]
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


def is_dataset_dir(path: str | os.PathLike) -> bool:
    """True when `path` holds a dataset.json written by `write_dataset` (the only directories --overwrite
    may replace)."""
    try:
        meta = json.loads((Path(path) / DATASET_JSON).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and {"format_version", "manifest_sha256", "counts"} <= meta.keys()


def _overlap(out: Path, other: Path) -> str | None:
    """How the resolved --out relates to another resolved path: "is", "contains", "lies inside" or None."""
    if out == other:
        return "is"
    if out in other.parents:
        return "contains"
    if other in out.parents:
        return "lies inside"
    return None


def check_out_dir(out: str | os.PathLike, overwrite: bool, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse an --out that would lose data: one that is, contains or lies inside an input (the source folder,
    a contours folder, a labels file, an image), is or contains the current directory, or already holds files.
    Existing files are replaced only with --overwrite and only when they are a dataset made by data_prep."""
    out = Path(out)
    out_abs = out.resolve()
    for given in inputs:
        how = _overlap(out_abs, Path(given).resolve())
        if how is not None:
            raise DataPrepError(f"--out {out} {how} the source {given}; write the dataset elsewhere")
    how = _overlap(out_abs, Path.cwd().resolve())
    if how in ("is", "contains"):
        raise DataPrepError(f"--out {out} {how} the current directory; write the dataset elsewhere")
    if out.exists() and not out.is_dir():
        raise DataPrepError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not is_dataset_dir(out):
            refused = "so --overwrite does not replace it" if overwrite else "so it is left alone"
            raise DataPrepError(f"--out {out} holds files but is not a dataset made by data_prep (no data_prep "
                                f"{DATASET_JSON}), {refused}; choose a new or empty directory")
        if not overwrite:
            raise DataPrepError(f"--out {out} already holds a dataset; choose another directory or pass "
                                f"--overwrite to replace it")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a path component is a file
        raise DataPrepError(f"--out {out}: cannot create {parent} ({exc.strerror})") from exc
    if not os.access(parent, os.W_OK):
        raise DataPrepError(f"--out {out}: directory {parent} is not writable")


def check_finite(img: np.ndarray, where: str) -> None:
    """NaN or infinite pixels would reach training as NaN inputs (or be clipped differently by each
    preprocessing step); an import refuses them."""
    if img.dtype.kind in "fc" and not np.isfinite(img).all():
        bad = int((~np.isfinite(img)).sum())
        raise DataPrepError(f"{where}: {bad} NaN or infinite pixel value(s); fix or drop this slice and "
                            f"import again")


def write_dataset(out: str | os.PathLike, dataset: str, stacks: Iterable[Stack], *, source: str,
                  options: dict[str, Any] | None = None, warnings: Sequence[str] = (),
                  classes: Sequence[str] = SLICE_LABELS, overwrite: bool = False,
                  inputs: Iterable[str | os.PathLike] = (), mask_structures: Sequence[str] = ()) -> Path:
    """Write a dataset directory atomically and return its path.

    classes: the class names in their reporting order (OAP, IN, OBS for slice data); every label must be one.
    mask_structures: the keys of MASK_CODES that the stacks' masks label (DSB's overlays: only "lv_cavity"), so
        a structure left out is not read as background; required when any stack has masks. Masks go to
        masks/<patient>_<frame>_s<slice>.png.
    inputs: the paths the stacks are read from, which --out must not overlap (see `check_out_dir`).
    Images go to images/<patient>_<frame>_s<slice>.{png,npy}. The files depend only on the stacks and the
    options (no timestamps), so the same import twice gives byte-identical files.
    """
    out = Path(out)
    unknown = sorted(set(mask_structures) - set(MASK_CODES))
    if unknown:
        raise ValueError(f"mask_structures {unknown}: not in {list(MASK_CODES)}")
    check_out_dir(out, overwrite, inputs)
    try:
        _write(out, dataset, stacks, source=source, options=options, warnings=warnings, classes=classes,
               mask_structures=tuple(mask_structures))
    except OSError as exc:  # the sources turn their read errors into DataPrepError: this is the output failing
        reason = exc.strerror or str(exc)
        raise DataPrepError(f"--out {out}: writing the dataset failed ({reason}); nothing was written"
                            + (", the dataset already there is unchanged" if is_dataset_dir(out) else "")) from exc
    return out


def _write(out: Path, dataset: str, stacks: Iterable[Stack], *, source: str, options: dict[str, Any] | None,
           warnings: Sequence[str], classes: Sequence[str], mask_structures: tuple[str, ...]) -> None:
    with atomic_dir(out) as tmp:
        (tmp / IMAGE_DIR).mkdir()
        any_mask = False
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
                check_finite(img, f"{stack.sources[i]} (patient {stack.patient}, frame {stack.frame}, slice {i})")
                written = save_image(tmp / IMAGE_DIR / f"{stack.patient}_{stack.frame}_s{i:02d}", img)
                names.append(f"{IMAGE_DIR}/{written.name}")
            mask_names = None
            if stack.masks is not None:
                if not mask_structures:
                    raise ValueError("write_dataset: stacks with masks need mask_structures")
                (tmp / MASK_DIR).mkdir(exist_ok=True)
                mask_names = [
                    "" if m is None else
                    f"{MASK_DIR}/{save_mask(tmp / MASK_DIR / f'{stack.patient}_{stack.frame}_s{i:02d}', m).name}"
                    for i, m in enumerate(stack.masks)]
                any_mask = any_mask or any(mask_names)
            rows.extend(_rows_for(stack, dataset, names, mask_names))
            if stack.orientation:
                evidence.append({"patient": stack.patient, "frame": str(stack.frame), **stack.orientation})
        if not rows:
            raise DataPrepError(f"no slices found in {source}")
        df = pd.DataFrame(rows)
        if MASK_COLUMN in df:
            df[MASK_COLUMN] = df[MASK_COLUMN].fillna("")
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
        if any_mask:
            meta["mask_structures"] = list(mask_structures)
        (tmp / DATASET_JSON).write_text(json.dumps(meta, indent=2, sort_keys=False, default=str) + "\n")


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
                                      "image": str, "split": str, MASK_COLUMN: str},
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
    for col in [c for c in ("image", MASK_COLUMN) if c in df]:
        outside = np.flatnonzero(df[col].map(_escapes).to_numpy())
        if len(outside):
            i = int(outside[0])
            raise DataPrepError(f"{path}: row {i + 1} (line {i + 2}): {col} {df[col].iloc[i]!r} lies outside "
                                f"{directory}; a dataset holds its own files (copy them in, or import again)")
    for col in ("slice", "n_slices"):
        if not pd.api.types.is_integer_dtype(df[col]):
            raise DataPrepError(f"{path}: column {col} must hold integers")
    classes = dataset_classes(directory)
    unknown = sorted(set(df["label"]) - set(classes) - {""})
    if unknown:
        raise DataPrepError(f"{path}: unknown label(s) {unknown}; this dataset's classes are {list(classes)}")
    if "split" in df:
        df["split"] = normalised_split(df["split"], path)
    return df


def _escapes(relative: str) -> bool:
    """A manifest path that leaves the dataset directory: absolute, or through `..` (by its spelling)."""
    norm = os.path.normpath(relative)
    return os.path.isabs(relative) or norm == os.pardir or norm.startswith(os.pardir + os.sep)


SPLIT_VALUES = ("train", "test", "")  # "": no designation (a patient the image-set CSV left without a split)


def normalised_split(values: pd.Series, where: Path) -> pd.Series:
    """The split column in lower case without surrounding blanks; any other value than SPLIT_VALUES is refused,
    since a misspelt `test` would silently send designated test patients into training."""
    out = values.fillna("").astype(str).str.strip().str.lower()
    bad = sorted(set(values[~out.isin(SPLIT_VALUES)].astype(str)))
    if bad:
        raise DataPrepError(f"{where}: column split holds {', '.join(map(repr, bad))}; allowed: train, test or "
                            f"empty (any case)")
    return out


def read_dataset_json(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / DATASET_JSON
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataPrepError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise DataPrepError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    return meta


def dataset_classes(directory: str | os.PathLike) -> tuple[str, ...]:
    """The class list in reporting order, from dataset.json (OAP, IN, OBS when it does not say)."""
    classes = read_dataset_json(directory).get("classes", SLICE_LABELS)
    if (not isinstance(classes, (list, tuple)) or not classes or not all(isinstance(c, str) and c for c in classes)
            or len(set(classes)) != len(classes)):
        raise DataPrepError(f"{Path(directory) / DATASET_JSON}: classes must be a list of distinct, non-empty "
                            f"class names, got {json.dumps(classes)}")
    return tuple(classes)


def mask_structures(directory: str | os.PathLike) -> tuple[str, ...]:
    """The structures this dataset's masks label (empty when it has no masks), from dataset.json."""
    path = Path(directory) / DATASET_JSON
    found = read_dataset_json(directory).get("mask_structures", [])
    if not isinstance(found, list) or not set(found) <= set(MASK_CODES):
        raise DataPrepError(f"{path}: mask_structures must be a list of {list(MASK_CODES)}, got {json.dumps(found)}")
    return tuple(found)


def labelled(df: pd.DataFrame) -> pd.DataFrame:
    """Rows that carry a label (unlabelled rows have an empty label)."""
    return df[df["label"].astype(str) != ""]
