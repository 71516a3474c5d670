"""Any labelled image set -> dataset directory: a folder per class, or a CSV (path, patient, label).

SRC layouts
  folder   SRC/<class>/**/<image>; the classes are the folder names, sorted (or --classes to fix the order).
           Hidden files and folders (name starting with '.') are ignored; any other file must be an image.
           Patients come from --patient-regex, searched in the path below the class folder (e.g. '^(syn\\d+)_' on
           'syn003_ED_4.png', or '^([^/]+)/' for SRC/<class>/<patient>/<image>).
  CSV      columns `path` and `label`, and `patient` (or --patient-regex, searched in `path` as written). Paths are
           relative to the CSV's folder or absolute. The classes are the labels in order of first appearance (or
           --classes). Optional columns:
             frame, slice      both together: rows of one patient and frame form one ordered stack, slice 0..n-1
                               with no gap or duplicate (for short-axis stacks slice 0 is the most apical);
             split             copied to the manifest (`test` rows are the benchmark's held-out set), one value per
                               patient;
             pixel_spacing_mm  one value per stack (else DICOM PixelSpacing where there is one, else empty);
             mask              the image's segmentation mask (a .png path like `path`; empty: none), instead of
                               --masks;
             anything else     copied to the manifest verbatim as an extra column (e.g. a regression target).

Images: PNG/JPEG (read unchanged, 8 or 16 bit; colour is converted to grey: exactly when the channels are equal,
else as luma, counted in the warnings), DICOM (stored pixel values, no rescale or windowing; only PixelSpacing is
read from the header) and .npy (2-D). Sizes and bit depths may differ between images; each is written losslessly at
its own size and type.

Masks (optional): --masks DIR holds one 8-bit PNG per image at the image's path below SRC (or its CSV path, when
relative) with the image's stem and a .png extension (any case), e.g. DIR/IN/syn003_ED_4.png for
SRC/IN/syn003_ED_4.dcm; or the CSV's mask column names each file. A mask has the image's shape and codes
0 (background), 1 (RV cavity), 2 (LV myocardium), 3 (LV cavity); anything else refuses the import naming the mask
file. Images without a mask file get none (the manifest's mask column is empty). --mask-structures says which
structures the masks label (default: those whose codes occur in them), so that a structure not labelled is not
read as background.

Without frame/slice columns every image is its own stack of one slice: (patient, frame) must be unique, so frame is
a running index 0, 1, ... over each patient's images, in path order (folder) or row order (CSV); `source` keeps the
original path.

Patient grouping is required, because cross-validation folds are split by patient: without a patient column or
--patient-regex the import is refused, unless --no-groups is given, which makes every image its own patient
(img00000, ...) and says so loudly on stderr and in dataset.json.

Unreadable image files (corrupt, truncated, not 2-D, colour DICOM) are skipped and counted in dataset.json's
warnings; an ordered stack with an unreadable slice is skipped whole, so no stack has a gap. The import fails when
nothing readable remains, or when a class loses all its images. Missing files, unknown extensions and a path
--patient-regex does not match are errors.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from .dicom_io import DICOM_SUFFIXES, print_warnings, read_dicom
from .errors import DataPrepError
from .manifest import (MASK_CODES, MASK_COLUMN, OVERWRITE_HELP, REQUIRED_COLUMNS, Stack, check_out_dir, load_mask,
                       write_dataset)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".npy", *DICOM_SUFFIXES})
RESERVED = frozenset(REQUIRED_COLUMNS) - {"patient", "frame", "slice", "label", "pixel_spacing_mm"}
SPECIAL = ("path", "patient", "label", "frame", "slice", "split", "pixel_spacing_mm", MASK_COLUMN)
MASK_SUFFIX = ".png"  # lossless 8-bit; a JPEG mask would hold codes its compression invented
SHOW = 5  # file names listed in a warning before "..."


@dataclass
class Entry:
    """One image file and what the source says about it (before any pixel is read)."""

    path: Path
    name: str                          # as the user wrote it: path below SRC, or the CSV's `path`
    label: str
    patient: str = ""
    frame: str | None = None           # from the CSV; None: a running index is assigned
    slice: int | None = None
    split: str | None = None
    spacing: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    regex_target: str = ""             # what --patient-regex is searched in
    mask: Path | None = None


class Pixels(NamedTuple):
    image: np.ndarray
    spacing_mm: tuple[float, float] | None  # DICOM PixelSpacing (row, column)
    colour: bool                            # converted from unequal colour channels


def read_pixels(path: Path) -> Pixels | str:
    """An image file as a 2-D array, or the reason it cannot be read (a str)."""
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        try:
            dcm = read_dicom(path, path.name)
        except DataPrepError as exc:
            return str(exc)
        if isinstance(dcm, str):
            return f"{path}: {dcm}"
        return Pixels(dcm.pixels, dcm.pixel_spacing, False)
    if suffix == ".npy":
        try:
            img = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            return f"{path}: unreadable .npy ({exc})"
        if img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        elif img.ndim == 3 and img.shape[0] == 1:
            img = img[0]
        if img.ndim != 2 or img.dtype.kind not in "biuf":
            return f"{path}: expected a 2-D numeric array, got {img.dtype} of shape {img.shape}"
        return Pixels(img, None, False)
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        return f"{path}: unreadable or truncated image"
    if img.ndim == 2:
        return Pixels(img, None, False)
    if img.ndim == 3 and img.shape[2] in (3, 4):
        colour = img[..., :3]
        if (colour == colour[..., :1]).all():
            return Pixels(np.ascontiguousarray(colour[..., 0]), None, False)
        return Pixels(cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY), None, True)
    return f"{path}: unsupported image layout {img.shape}"


def _check_id(value: str, what: str, where: str) -> str:
    """Patient and frame ids become file names (images/<patient>_<frame>_sNN.png)."""
    if not value or value.startswith(".") or re.search(r"[/\\\s]", value):
        raise DataPrepError(f"{where}: {what} {value!r} is not usable in file names "
                            f"(needs a non-empty id without spaces or path separators, not starting with '.')")
    return value


def parse_classes(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [c.strip() for c in text.split(",")]
    if any(not c for c in names):
        raise DataPrepError(f"--classes {text!r}: empty class name")
    dup = sorted(c for c, k in Counter(names).items() if k > 1)
    if dup:
        raise DataPrepError(f"--classes {text!r}: {dup[0]} is listed twice")
    return names


def compile_regex(pattern: str | None) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise DataPrepError(f"--patient-regex {pattern!r}: not a valid regular expression ({exc})") from exc
    if rx.groups == 0:
        raise DataPrepError(f"--patient-regex {pattern!r}: needs a capture group, e.g. '^(\\w+?)_' or "
                            f"'(?P<patient>\\w+)'")
    return rx


def patient_from_regex(rx: re.Pattern, target: str) -> str:
    """The named group `patient` if the pattern has one, else the first group; DataPrepError when it does not match."""
    m = rx.search(target)
    value = None
    if m is not None:
        value = m.group("patient") if "patient" in rx.groupindex else m.group(1)
    if not value:
        raise DataPrepError(f"--patient-regex {rx.pattern!r} does not match {target!r}"
                            + ("" if m is None else " (the patient group is empty)"))
    return value


def _check_suffix(path: Path, where: str) -> None:
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise DataPrepError(f"{where}: unknown image extension {path.suffix or '(none)'!r} "
                            f"(expected one of {', '.join(sorted(IMAGE_SUFFIXES))})")


def scan_folders(src: Path) -> list[Entry]:
    """SRC/<class>/**/<image>, hidden files and folders ignored, in sorted path order."""
    entries = []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_root = Path(root).relative_to(src)
        for name in sorted(f for f in files if not f.startswith(".")):
            rel = rel_root / name
            if not rel_root.parts:
                raise DataPrepError(f"{src / name}: file outside a class folder (SRC must hold one folder per "
                                    f"class; for a CSV pass the .csv file as SRC)")
            _check_suffix(rel, str(src / rel))
            entries.append(Entry(path=src / rel, name=rel.as_posix(), label=rel.parts[0],
                                 regex_target=Path(*rel.parts[1:]).as_posix()))
    if not entries:
        raise DataPrepError(f"SRC {src}: no image files found (expected SRC/<class>/<image>)")
    return entries


def _int_slice(text: str, where: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise DataPrepError(f"{where}: slice {text!r} is not a whole number") from None
    if value < 0:
        raise DataPrepError(f"{where}: slice {value} is negative")
    return value


def scan_csv(csv: Path, patient_from_path: bool) -> tuple[list[Entry], list[str]]:
    """The CSV's rows as entries, and the names of the extra columns copied to the manifest."""
    try:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataPrepError(f"{csv}: not a readable CSV ({exc})") from exc
    df.columns = [str(c).strip() for c in df.columns]
    # a trailing comma on every line makes an empty unnamed column
    df = df[[c for c in df.columns if not (c.startswith("Unnamed: ") and (df[c] == "").all())]]
    needed = ["path", "label"] + ([] if patient_from_path else ["patient"])
    missing = [c for c in needed if c not in df.columns]
    if missing:
        hint = "" if patient_from_path else " (or give --patient-regex, or --no-groups)"
        raise DataPrepError(f"{csv}: missing column(s) {', '.join(missing)}{hint}; found {list(df.columns)}")
    if patient_from_path and "patient" in df.columns:
        raise DataPrepError(f"{csv}: has a patient column; drop --patient-regex/--no-groups or the column")
    reserved = sorted(RESERVED & set(df.columns))
    if reserved:
        raise DataPrepError(f"{csv}: column(s) {', '.join(reserved)} are reserved for the manifest; rename them")
    dup = sorted(c for c, k in Counter(df.columns).items() if k > 1)
    if dup:
        raise DataPrepError(f"{csv}: column {dup[0]} appears twice")
    if ("frame" in df.columns) != ("slice" in df.columns):
        raise DataPrepError(f"{csv}: has a {'frame' if 'frame' in df.columns else 'slice'} column but not the "
                            f"other; stacks need both frame and slice")
    if df.empty:
        raise DataPrepError(f"{csv}: no rows")
    stacked = "frame" in df.columns
    extras = [c for c in df.columns if c not in SPECIAL]
    entries, seen = [], {}
    for i, row in enumerate(df.to_dict("records")):
        where = f"{csv} row {i + 2}"  # +1 for the header, +1 for counting from 1 as editors do
        name = row["path"]
        if not name:
            raise DataPrepError(f"{where}: empty path")
        if not row["label"]:
            raise DataPrepError(f"{where}: empty label")
        path = Path(name) if Path(name).is_absolute() else csv.parent / name
        _check_suffix(path, f"{where} ({name})")
        if not path.is_file():
            raise DataPrepError(f"{where}: image file not found: {path}")
        key = os.path.normcase(os.path.abspath(path))
        if key in seen:
            raise DataPrepError(f"{where}: {name} is the same file as row {seen[key]}")
        seen[key] = i + 2
        entries.append(Entry(
            path=path, name=name, label=row["label"], regex_target=name,
            mask=_csv_mask(csv.parent, row[MASK_COLUMN], where) if row.get(MASK_COLUMN) else None,
            patient="" if patient_from_path else _check_id(row["patient"], "patient", where),
            frame=_check_id(row["frame"], "frame", where) if stacked else None,
            slice=_int_slice(row["slice"], where) if stacked else None,
            split=row.get("split"), spacing=row.get("pixel_spacing_mm", ""),
            extra={c: row[c] for c in extras}))
    return entries, extras


def _csv_mask(folder: Path, name: str, where: str) -> Path:
    path = Path(name) if Path(name).is_absolute() else folder / name
    if path.suffix.lower() != MASK_SUFFIX:
        raise DataPrepError(f"{where}: mask {name}: expected a {MASK_SUFFIX} file (8-bit, lossless)")
    if not path.is_file():
        raise DataPrepError(f"{where}: mask file not found: {path}")
    return path


def match_masks(entries: list[Entry], folder: Path) -> list[str]:
    """Set each entry's mask from --masks DIR: the .png (any case) with the image's stem at the image's path below
    SRC (or its relative CSV path). Returns the warnings for dataset.json (mask files that match no image)."""
    if not folder.is_dir():
        raise DataPrepError(f"--masks {folder}: not a folder")
    found: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            path = Path(root) / name
            if path.suffix.lower() == MASK_SUFFIX:
                found[(path.parent.relative_to(folder).as_posix(), path.stem)].append(path)
    used: dict[Path, str] = {}
    for e in entries:
        rel = Path(e.name)
        if rel.is_absolute():
            raise DataPrepError(f"--masks {folder}: image {e.name} is given by an absolute path, so no mask path "
                                f"follows from it; name the masks in a mask column of the CSV instead")
        hits = found.get((rel.parent.as_posix(), rel.stem), [])
        if len(hits) > 1:
            raise DataPrepError(f"--masks {folder}: {hits[0].name} and {hits[1].name} are both the mask of {e.name}")
        if hits and hits[0] in used:
            raise DataPrepError(f"{hits[0]}: the mask of both {used[hits[0]]} and {e.name} (images that differ only "
                                f"in their extension need masks in a CSV mask column)")
        if hits:
            used[hits[0]] = e.name
            e.mask = hits[0]
    if not used:
        raise DataPrepError(f"--masks {folder}: no mask file matches an image (the mask of {entries[0].name} would be "
                            f"{folder / Path(entries[0].name).with_suffix(MASK_SUFFIX)})")
    orphans = [str(p.relative_to(folder)) for hits in found.values() for p in hits if p not in used]
    return [_summarise(f"--masks: {len(orphans)} mask file(s) match no image", orphans)] if orphans else []


def parse_mask_structures(text: str | None) -> tuple[str, ...] | None:
    """--mask-structures as keys of MASK_CODES, in MASK_CODES order (None when not given)."""
    if text is None:
        return None
    names = [c.strip() for c in text.split(",")]
    unknown = [n for n in names if n not in MASK_CODES]
    if unknown:
        raise DataPrepError(f"--mask-structures {text!r}: {unknown[0]!r} is not one of {', '.join(MASK_CODES)}")
    dup = sorted(c for c, k in Counter(names).items() if k > 1)
    if dup:
        raise DataPrepError(f"--mask-structures {text!r}: {dup[0]} is listed twice")
    return tuple(k for k in MASK_CODES if k in names)


def _mask_codes(e: Entry, shape: tuple[int, ...], structures: tuple[str, ...] | None) -> set[int]:
    """The structure codes in an entry's mask, checked against its image's shape and --mask-structures."""
    try:
        mask = load_mask(e.mask, shape)
    except DataPrepError as exc:
        raise DataPrepError(f"{exc} (the mask of {e.name})") from None
    codes = set(np.unique(mask).tolist()) - {0}
    if structures is not None:
        left_out = sorted(codes - {MASK_CODES[k] for k in structures})
        if left_out:
            raise DataPrepError(f"{e.mask}: mask codes {left_out} label structures that --mask-structures "
                                f"{','.join(structures)} leaves out (the mask of {e.name})")
    return codes


def resolve_classes(labels: Sequence[str], given: list[str] | None, sort: bool, where: str) -> list[str]:
    """The class order: --classes when given (it must name exactly the labels found), else sorted (folders) or
    first appearance (CSV)."""
    found = list(dict.fromkeys(labels))
    if given is not None:
        unknown = [c for c in given if c not in found]
        if unknown:
            raise DataPrepError(f"--classes names {unknown[0]!r}, which has no images in {where} "
                                f"(found {sorted(found)})")
        unlisted = [c for c in found if c not in given]
        if unlisted:
            raise DataPrepError(f"--classes does not list {unlisted[0]!r}, a class of {where}")
        classes = given
    else:
        classes = sorted(found) if sort else found
    if len(classes) < 2:
        raise DataPrepError(f"{where}: only one class ({classes[0]!r}); a classification set needs at least two")
    lower = Counter(c.lower() for c in classes)
    clash = [c for c in classes if lower[c.lower()] > 1]
    if clash:
        # per-class metrics are named f1_<class in lower case>
        raise DataPrepError(f"{where}: classes {clash} differ only in letter case; rename one")
    return classes


def _group_stacks(entries: list[Entry], where: str) -> list[list[Entry]]:
    """Ordered stacks from frame/slice, else one stack per image with a running frame index per patient."""
    if entries[0].frame is None:
        index: Counter[str] = Counter()
        for e in entries:
            e.frame = str(index[e.patient])
            index[e.patient] += 1
        return [[e] for e in entries]
    groups: dict[tuple[str, str], list[Entry]] = defaultdict(list)
    for e in entries:
        groups[(e.patient, e.frame)].append(e)
    stacks = []
    for (patient, frame), members in groups.items():
        members.sort(key=lambda e: e.slice)
        got = [e.slice for e in members]
        if got != list(range(len(members))):
            dup = sorted({s for s in got if got.count(s) > 1})
            gaps = sorted(set(range(max(got) + 1)) - set(got))
            problem = f"slice {dup[0]} appears twice" if dup else f"slice {gaps[0]} is missing"
            raise DataPrepError(f"{where}: patient {patient} frame {frame}: slices must be 0..n-1 without gaps or "
                                f"duplicates; {problem} (slices {got})")
        stacks.append(members)
    return stacks


def _check_per(stacks: list[list[Entry]], attr: str, per: str, where: str) -> None:
    values: dict[str, set] = defaultdict(set)
    for stack in stacks:
        for e in stack:
            values[e.patient if per == "patient" else f"{e.patient}/{e.frame}"].add(getattr(e, attr))
    for key, vals in values.items():
        if len(vals) > 1:
            column = "pixel_spacing_mm" if attr == "spacing" else attr
            raise DataPrepError(f"{where}: {per} {key} has several {column} values {sorted(vals)}; "
                                f"use one per {per}")


def _stack_spacing(stack: list[Entry], pixels: dict[Path, Pixels], where: str) -> float | None:
    text = stack[0].spacing
    if text:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not 0 < value < float("inf"):
            raise DataPrepError(f"{where}: pixel_spacing_mm {text!r} of {stack[0].name} is not a positive number")
        return value
    rows = [pixels[e.path].spacing_mm[0] for e in stack if pixels[e.path].spacing_mm is not None]
    return float(np.median(rows)) if rows else None


def _summarise(what: str, items: list[str]) -> str:
    shown = "; ".join(items[:SHOW]) + ("; ..." if len(items) > SHOW else "")
    return f"{what}: {shown}"


def _is_csv(src: Path) -> bool:
    """True for a CSV, False for a folder tree; DataPrepError for anything else."""
    if not src.exists():
        raise DataPrepError(f"SRC {src} not found")
    is_csv = src.is_file()
    if is_csv and src.suffix.lower() != ".csv":
        raise DataPrepError(f"SRC {src}: expected a folder with one folder per class, or a .csv file")
    return is_csv


def _scan(src: Path, is_csv: bool, rx: re.Pattern | None, no_groups: bool) -> tuple[list[Entry], list[str]]:
    """The source's entries and the extra columns copied to the manifest (a folder tree has none)."""
    if is_csv:
        return scan_csv(src, patient_from_path=rx is not None or no_groups)
    entries = scan_folders(src)
    if rx is None and not no_groups:
        raise DataPrepError(f"SRC {src}: patients cannot be determined from a folder tree; give "
                            f"--patient-regex (e.g. '^([^_]+)_' on file names <patient>_...), or --no-groups "
                            f"to treat every image as its own patient (cross-validation then is not "
                            f"patient-grouped)")
    return entries, []


def _assign_patients(entries: list[Entry], src: Path, rx: re.Pattern | None, no_groups: bool) -> list[str]:
    """Sets each entry's patient from --patient-regex or --no-groups (a CSV's patient column is already set);
    returns the warnings for dataset.json (--no-groups has one)."""
    if no_groups:
        return [_one_patient_per_image(entries, src)]
    if rx is not None:
        for e in entries:
            e.patient = _check_id(patient_from_regex(rx, e.regex_target), "patient", f"--patient-regex on {e.name}")
    return []


def _one_patient_per_image(entries: list[Entry], src: Path) -> str:
    """--no-groups: patients img00000, img00001, ... in entry order; returns the warning, already shown on stderr
    (at once, so that it is seen even when the import fails later)."""
    if entries[0].frame is not None:
        raise DataPrepError(f"{src}: --no-groups cannot be combined with frame/slice columns (a stack "
                            f"belongs to one patient)")
    width = max(5, len(str(len(entries) - 1)))
    for k, e in enumerate(entries):
        e.patient = f"img{k:0{width}d}"
    loud = ("--no-groups: every image is its own patient, so cross-validation and the test split will NOT be "
            "patient-grouped; images of one patient can fall into both training and validation and inflate "
            "every metric")
    bar = "!" * 100
    print(f"{bar}\ndata_prep images: WARNING: {loud}\n{bar}", file=sys.stderr)
    return loud


def _checked_stacks(entries: list[Entry], where: str) -> list[list[Entry]]:
    """The stacks, with one split per patient, one pixel spacing per stack and image names that do not collide."""
    stacks = _group_stacks(entries, where)
    if any(e.split is not None for e in entries):
        _check_per(stacks, "split", "patient", where)
    _check_per(stacks, "spacing", "stack", where)
    names = Counter(f"{s[0].patient}_{s[0].frame}" for s in stacks)
    clash = [n for n, k in names.items() if k > 1]
    if clash:
        raise DataPrepError(f"{where}: patient/frame pairs collide in the image name {clash[0]}_sNN; "
                            f"use ids that do not differ only by where '_' splits them")
    return stacks


def _check_images(entries: list[Entry], structures: tuple[str, ...] | None
                  ) -> tuple[dict[Path, Pixels], dict[Path, str], set[int]]:
    """Every file read once: (readable files with their spacing and colour flag, unreadable files with the reason,
    the structure codes found in the masks of the readable ones, each mask checked against its image). The pixels
    are dropped, so that memory stays small; they are read again when the stacks are written."""
    pixels: dict[Path, Pixels] = {}
    bad: dict[Path, str] = {}
    codes: set[int] = set()
    for e in tqdm(entries, desc="checking images", unit="image"):
        got = read_pixels(e.path)
        if isinstance(got, str):
            bad[e.path] = got
            continue
        pixels[e.path] = Pixels(np.empty(0), got.spacing_mm, got.colour)
        if e.mask is not None:
            codes |= _mask_codes(e, got.image.shape, structures)
    return pixels, bad, codes


def _readable_stacks(entries: list[Entry], stacks: list[list[Entry]], bad: dict[Path, str], class_list: list[str],
                     where: str) -> tuple[list[list[Entry]], list[str]]:
    """The stacks without an unreadable slice (a stack with a gap is no stack), and the warning about those
    skipped; DataPrepError when nothing, or nothing of a class, remains."""
    kept = [s for s in stacks if not any(e.path in bad for e in s)]
    if not kept:
        raise DataPrepError(_summarise(f"{where}: none of the {len(entries)} image files could be read",
                                       list(bad.values())))
    notes = []
    if bad:
        dropped = sum(len(s) for s in stacks) - sum(len(s) for s in kept)
        extra = "" if dropped == len(bad) else (f", and {dropped - len(bad)} readable slice(s) of the stacks they "
                                                f"belong to")
        notes.append(_summarise(f"skipped {len(bad)} unreadable image file(s){extra}", list(bad.values())))
    left = Counter(e.label for s in kept for e in s)
    empty = [c for c in class_list if not left[c]]
    if empty:
        raise DataPrepError(f"{where}: class {empty[0]!r}: none of its images could be read "
                            f"({_summarise('e.g.', [bad[e.path] for e in entries if e.label == empty[0]])})")
    return kept, notes


def _colour_notes(stacks: list[list[Entry]], pixels: dict[Path, Pixels]) -> list[str]:
    colour = [e.name for s in stacks for e in s if pixels[e.path].colour]
    return [_summarise(f"{len(colour)} colour image(s) converted to grey (luma)", colour)] if colour else []


def _read_stacks(plan: list[tuple[list[Entry], float | None]], extras: list[str], with_masks: bool
                 ) -> Iterator[Stack]:
    """The stacks with their pixels (and masks), read again one stack at a time (each with its pixel spacing from
    `plan`)."""
    for stack, spacing in tqdm(plan, desc="writing stacks", unit="stack"):
        images = []
        for e in stack:
            got = read_pixels(e.path)
            if isinstance(got, str):
                raise DataPrepError(f"{got} (it was readable a moment ago: did the file change?)")
            images.append(got.image)
        first = stack[0]
        masks = [None if e.mask is None else load_mask(e.mask, img.shape) for e, img in zip(stack, images)]
        yield Stack(patient=first.patient, frame=first.frame, images=images,
                    labels=[e.label for e in stack], sources=[e.name for e in stack],
                    pixel_spacing_mm=spacing, split=first.split,
                    extra={c: [e.extra[c] for e in stack] for c in extras}, masks=masks if with_masks else None)


def build(src: str | os.PathLike, out: str | os.PathLike, *, patient_regex: str | None = None,
          no_groups: bool = False, classes: str | None = None, dataset: str | None = None,
          overwrite: bool = False, masks: str | os.PathLike | None = None,
          mask_structures: str | None = None) -> Path:
    """Import an image set (see the module docstring) into the dataset directory `out`; returns its path."""
    src = Path(src)
    is_csv = _is_csv(src)
    if patient_regex is not None and no_groups:
        raise DataPrepError("--patient-regex and --no-groups exclude each other")
    rx = compile_regex(patient_regex)
    given = parse_classes(classes)
    structures = parse_mask_structures(mask_structures)
    entries, extras = _scan(src, is_csv, rx, no_groups)
    mask_notes = []
    if masks is not None:
        if any(e.mask is not None for e in entries):
            raise DataPrepError(f"{src}: has a {MASK_COLUMN} column; drop --masks or the column")
        mask_notes = match_masks(entries, Path(masks))
    with_masks = any(e.mask is not None for e in entries)
    if structures is not None and not with_masks:
        raise DataPrepError(f"--mask-structures {mask_structures}: {src} has no masks (give --masks DIR, or a "
                            f"{MASK_COLUMN} column in the CSV)")
    # a CSV may list images anywhere, so each one is an input --out must not overlap; checked before reading
    inputs = [src, *(e.path for e in entries), *([masks] if masks is not None else []),
              *(e.mask for e in entries if e.mask is not None)]
    check_out_dir(out, overwrite, inputs)
    notes = _assign_patients(entries, src, rx, no_groups) + mask_notes
    where = str(src)
    class_list = resolve_classes([e.label for e in entries], given, sort=not is_csv, where=where)
    stacks = _checked_stacks(entries, where)
    pixels, bad, codes = _check_images(entries, structures)
    kept, skipped = _readable_stacks(entries, stacks, bad, class_list, where)
    notes += skipped + _colour_notes(kept, pixels)
    plan = [(s, _stack_spacing(s, pixels, where)) for s in kept]
    options = {"layout": "csv" if is_csv else "folders", "patient_regex": patient_regex, "no_groups": no_groups,
               "classes": given, "n_files": len(entries), "n_skipped": len(bad)}
    if with_masks:
        if structures is None:
            structures = tuple(k for k, code in MASK_CODES.items() if code in codes)
        if not structures:
            raise DataPrepError(f"{masks or src}: every mask is empty (all background); give --mask-structures to "
                                f"say which structures they label")
        options.update(masks=str(masks) if masks is not None else f"{MASK_COLUMN} column",
                       mask_structures=mask_structures)
    print_warnings("images", notes)
    root = (src.parent if is_csv else src).resolve()
    return write_dataset(out, dataset or root.name, _read_stacks(plan, extras, with_masks), source=str(src),
                         options=options, warnings=notes, classes=class_list, overwrite=overwrite, inputs=inputs,
                         mask_structures=structures if with_masks else ())


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 2)[2]
    parser.add_argument("src", metavar="SRC", type=Path,
                        help="folder with one folder per class, or a CSV with columns path, patient, label")
    parser.add_argument("--out", required=True, type=Path, help="dataset directory to write")
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--patient-regex", metavar="REGEX",
                     help="patient id from the image path (below the class folder, or the CSV's path as written): "
                          "the named group 'patient', else the first group; every path must match")
    who.add_argument("--no-groups", action="store_true",
                     help="no patient ids: every image is its own patient (cross-validation is then NOT "
                          "patient-grouped; said loudly on stderr and in dataset.json)")
    parser.add_argument("--classes", metavar="A,B,C",
                        help="class order for reporting (default: folder names sorted, or CSV labels in order of "
                             "first appearance); must list exactly the classes present")
    parser.add_argument("--dataset", metavar="NAME",
                        help="value of the manifest's dataset column "
                             "(default: the name of SRC, or of the CSV's folder)")
    parser.add_argument("--masks", metavar="DIR", type=Path,
                        help="segmentation masks: DIR/<the image's path below SRC, or its relative CSV path, with "
                             "the extension .png>, 8-bit, the image's shape, codes 0 background, "
                             + ", ".join(f"{code} {name}" for name, code in MASK_CODES.items())
                             + "; images without one get none (or name each in a CSV column mask)")
    parser.add_argument("--mask-structures", metavar="NAME[,NAME...]",
                        help="the structures the masks label, from " + ", ".join(MASK_CODES) + " (default: those "
                             "whose codes occur in the masks; give it when a labelled structure may be absent from "
                             "every mask)")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def run(args: argparse.Namespace) -> Path:
    return build(args.src, args.out, patient_regex=args.patient_regex, no_groups=args.no_groups,
                 classes=args.classes, dataset=args.dataset, overwrite=args.overwrite, masks=args.masks,
                 mask_structures=args.mask_structures)
