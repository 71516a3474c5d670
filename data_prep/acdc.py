"""ACDC (MICCAI 2017) short-axis stacks with expert masks, official NIfTI or SSL4MIS HDF5 layout.

The layout is detected from SRC:
- official NIfTI layout: the `training/` folder of `patientNNN/` folders, the folder holding `training/`, or
  one patient folder. `Info.cfg` names the ED and ES frames (not always frame01: patient090 has ED 4), read
  from `patientNNN_frameXX.nii.gz` and their masks `patientNNN_frameXX_gt.nii.gz`. NIfTI volumes are
  (x, y, slice); they are transposed to (slice, y, x), the arrays of the HDF5 copy. Pixel spacing comes from
  the header.
- SSL4MIS HDF5 layout: the folder holding `data/`, or `data/` itself, with whole stacks
  `patientNNN_frame0F.h5` and single slices `patientNNN_frame0F_slice_K.h5` (K = 1..n), each with datasets
  `image` and `label`; frame01 is ED and frame02 ES. This layout stores no pixel spacing.

Which end of each stack is the apex is decided from its mask (data_prep.orientation); slices are then
labelled OAP / IN / OBS from LV-cavity (label 3) presence, and each slice's LV-cavity pixel count is kept
as column lv_cavity_px. Images keep their native resolution and values; each slice's mask is kept beside it,
in the same order and axes, with ACDC's codes unchanged (the dataset format's MASK_CODES are ACDC's). Stacks
whose apex/base cues disagree or are weak are reported as warnings (stderr and dataset.json) but imported.

A corrupt, truncated or incomplete input (unreadable file, missing mask, mask shaped unlike its image, gap in
the slice files) stops the import with an error naming the file, and nothing is written: ACDC is a fixed,
published set, and a silently smaller dataset would change every count that depends on it.
"""
from __future__ import annotations

import argparse
import re
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import h5py
import nibabel as nib
import numpy as np
from tqdm import tqdm

from .errors import DataPrepError
from .manifest import MASK_CODES, OVERWRITE_HELP, SLICE_LABELS, Stack, write_dataset
from .orientation import LV_CAVITY, apex_first
from .stacks import label_from_cavity

DATASET = "acdc"
MASK_VALUES = (0, *MASK_CODES.values())  # background, RV cavity, LV myocardium, LV cavity
MASK_STRUCTURES = tuple(MASK_CODES)  # ACDC labels every structure of its own coding on every slice
PATIENT_DIR = re.compile(r"patient\d{3}")
H5_NAME = re.compile(r"(patient\d{3})_frame(\d{2})(?:_slice_(\d+))?\.h5")
H5_FRAMES = {"01": "ED", "02": "ES"}
SPACING_TOLERANCE_MM = 1e-3
FAILURE_POLICY = ("Corrupt, truncated or incomplete input (unreadable NIfTI/HDF5 file, missing mask, mask "
                  "shaped unlike its image, gap in the slice files) stops the import with an error naming the "
                  "file and exit code 2; nothing is written.")


@dataclass
class RawStack:
    """One stack as read from disk, slices in file order (slice, row, col), before orientation."""

    patient: str
    frame: str
    image: np.ndarray
    mask: np.ndarray
    sources: list[str]
    where: str                      # the file(s) it came from, relative to SRC, for messages
    pixel_spacing_mm: float | None = None
    warnings: list[str] = field(default_factory=list)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", type=Path,
                        help="NIfTI layout: training/ (or its parent, or one patientNNN/ folder); "
                             "HDF5 layout: the folder holding data/ (or data/ itself)")
    parser.add_argument("--out", required=True, type=Path, help="dataset directory to write")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.epilog = FAILURE_POLICY


def run(args: argparse.Namespace) -> Path:
    layout, root, stacks, warnings = read_acdc(args.src)
    for message in warnings:
        print(f"warning: {message}", file=sys.stderr)
    out = write_dataset(args.out, DATASET, stacks, source=str(root.resolve()), options={"layout": layout},
                        warnings=warnings, overwrite=args.overwrite, inputs=[args.src],
                        mask_structures=MASK_STRUCTURES)
    labels = [lab for s in stacks for lab in s.labels]
    ambiguous = sum(bool(s.orientation["ambiguous"]) for s in stacks)
    print(f"acdc ({layout} layout): {len(stacks)} stacks, {len(labels)} slices: "
          + ", ".join(f"{name} {labels.count(name)}" for name in SLICE_LABELS)
          + f"; {ambiguous} stack(s) with ambiguous apex/base")
    return out


def read_acdc(src: str | Path) -> tuple[str, Path, list[Stack], list[str]]:
    """(layout, root, stacks ordered apex -> base, warnings) for an ACDC folder in either layout."""
    layout, root = detect_layout(Path(src))
    raw_stacks = raw_nifti_stacks(root) if layout == "nifti" else raw_hdf5_stacks(root)
    stacks, warnings = [], []
    for raw in raw_stacks:
        stack, stack_warnings = orient_and_label(raw)
        stacks.append(stack)
        warnings.extend(stack_warnings)
    return layout, root, stacks, warnings + frame_disagreements(stacks)


def frame_disagreements(stacks: list[Stack]) -> list[str]:
    """Warnings for patients whose ED and ES stacks were oriented differently.

    Both frames come from one cine acquisition with the same slice positions, so they share their file order;
    each is still oriented on its own evidence, and a disagreement means one of them is probably wrong.
    """
    by_patient: dict[str, dict[str, Stack]] = {}
    for stack in stacks:
        by_patient.setdefault(stack.patient, {})[stack.frame] = stack
    warnings = []
    for patient, frames in by_patient.items():
        if len({s.orientation["apex_first"] for s in frames.values()}) > 1:
            files = ", ".join(f"{s.orientation['file']} apex_first={s.orientation['apex_first']}"
                              for s in frames.values())
            warnings.append(f"{patient}: ED and ES share slice positions but were oriented differently ({files})")
    return warnings


def detect_layout(src: Path) -> tuple[str, Path]:
    """("nifti", folder of patient folders or one patient folder) or ("hdf5", the data folder)."""
    if not src.exists():
        raise DataPrepError(f"SRC {src} not found")
    if not src.is_dir():
        raise DataPrepError(f"SRC {src} is not a folder")
    if not any(src.iterdir()):
        raise DataPrepError(f"SRC {src} is empty")
    if (src / "Info.cfg").is_file():
        return "nifti", src
    for root in (src / "training", src):
        if root.is_dir() and any(p.is_dir() and PATIENT_DIR.fullmatch(p.name) for p in root.iterdir()):
            return "nifti", root
    for root in (src / "data", src):
        if root.is_dir() and any(H5_NAME.fullmatch(p.name) for p in root.iterdir()):
            return "hdf5", root
    raise DataPrepError(f"SRC {src} is in neither ACDC layout: expected patientNNN/Info.cfg (NIfTI) or "
                        f"data/patientNNN_frameNN.h5 / data/patientNNN_frameNN_slice_K.h5 (SSL4MIS HDF5)")


def check_mask(mask: np.ndarray, image_shape: tuple[int, ...], path: Path) -> np.ndarray:
    """The mask as uint8 after checking it matches its image and holds only ACDC's label values."""
    if mask.shape != image_shape:
        raise DataPrepError(f"{path}: mask shape {mask.shape} differs from its image's {image_shape}")
    if not np.array_equal(mask, np.round(mask)) or not np.isin(mask, MASK_VALUES).all():
        found = sorted(set(np.unique(mask).tolist()) - set(MASK_VALUES))[:5]
        raise DataPrepError(f"{path}: mask values {found} are not ACDC labels {list(MASK_VALUES)}")
    return mask.astype(np.uint8)


def orient_and_label(raw: RawStack) -> tuple[Stack, list[str]]:
    """Order a stack apex -> base from its mask and label its slices; returns (stack, warnings)."""
    first, evidence, ambiguous = apex_first(raw.mask)
    order = list(range(len(raw.mask)))
    if not first:
        order.reverse()
    cavity_px = [int((raw.mask[i] == LV_CAVITY).sum()) for i in order]
    labels, warnings = label_from_cavity([px > 0 for px in cavity_px], where=raw.where)
    if ambiguous:
        warnings.append(f"{raw.where}: apex/base cues disagree or are weak (votes {evidence['votes']}); "
                        f"apex taken at the {'first' if first else 'last'} slice of the file")
    stack = Stack(patient=raw.patient, frame=raw.frame, images=[raw.image[i] for i in order], labels=labels,
                  sources=[raw.sources[i] for i in order], pixel_spacing_mm=raw.pixel_spacing_mm,
                  extra={"lv_cavity_px": cavity_px}, orientation={"file": raw.where, **evidence},
                  masks=[np.ascontiguousarray(raw.mask[i]) for i in order])
    return stack, raw.warnings + warnings


# --- official NIfTI layout -------------------------------------------------------------------------------

def read_info(path: Path) -> dict[str, str]:
    """Info.cfg as a dict of its `Key: value` lines."""
    if not path.is_file():
        raise DataPrepError(f"{path} not found (every ACDC patient folder has one, naming its ED and ES frames)")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataPrepError(f"{path}: unreadable ({exc})") from exc
    info = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def _frame_number(info: dict[str, str], key: str, path: Path) -> int:
    try:
        return int(info[key])
    except (KeyError, ValueError):
        raise DataPrepError(f"{path}: no integer '{key}:' line (got {info.get(key)!r})") from None


def read_nifti(path: Path, what: str) -> tuple[np.ndarray, tuple[float, ...]]:
    """(array in the file's own axis order, voxel sizes) of one NIfTI file; `what` names it in errors."""
    if not path.is_file():
        raise DataPrepError(f"{path} not found ({what})")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as exc:
        raise DataPrepError(f"{path}: unreadable or truncated NIfTI file ({exc})") from exc
    if data.ndim != 3:
        raise DataPrepError(f"{path}: expected a 3-D volume (x, y, slice), got shape {data.shape}")
    return data, tuple(float(z) for z in img.header.get_zooms())


def _nifti_stack(patient_dir: Path, frame_no: int, frame: str) -> RawStack:
    patient = patient_dir.name
    name = f"{patient}_frame{frame_no:02d}"
    image_path = patient_dir / f"{name}.nii.gz"
    image, zooms = read_nifti(image_path, f"the {frame} image named by Info.cfg")
    mask, _ = read_nifti(patient_dir / f"{name}_gt.nii.gz", f"the mask of {image_path.name}")
    mask = check_mask(mask, image.shape, patient_dir / f"{name}_gt.nii.gz")
    rel = f"{patient}/{image_path.name}"
    warnings = []
    spacing = zooms[0]
    if abs(zooms[0] - zooms[1]) > SPACING_TOLERANCE_MM:
        spacing = (zooms[0] + zooms[1]) / 2
        warnings.append(f"{rel}: anisotropic pixels {zooms[0]:g} x {zooms[1]:g} mm; "
                        f"pixel_spacing_mm is their mean {spacing:g}")
    return RawStack(patient=patient, frame=frame, image=image.transpose(2, 1, 0), mask=mask.transpose(2, 1, 0),
                    sources=[f"{rel}[{k}]" for k in range(image.shape[2])], where=rel,
                    pixel_spacing_mm=spacing, warnings=warnings)


def raw_nifti_stacks(root: Path) -> Iterator[RawStack]:
    """ED and ES stacks of every patient folder under root (or of root itself when it is one)."""
    if (root / "Info.cfg").is_file():
        patient_dirs = [root]
    else:
        patient_dirs = sorted(p for p in root.iterdir() if p.is_dir() and PATIENT_DIR.fullmatch(p.name))
    for patient_dir in tqdm(patient_dirs, desc="acdc nifti", unit="patient", disable=None, file=sys.stderr):
        info_path = patient_dir / "Info.cfg"
        info = read_info(info_path)
        ed, es = _frame_number(info, "ED", info_path), _frame_number(info, "ES", info_path)
        if ed == es:
            raise DataPrepError(f"{info_path}: ED and ES are the same frame ({ed})")
        yield _nifti_stack(patient_dir, ed, "ED")
        yield _nifti_stack(patient_dir, es, "ES")


# --- SSL4MIS HDF5 layout ---------------------------------------------------------------------------------

def read_h5(path: Path, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, label) of one SSL4MIS file, image with ndim dimensions and label of the same shape."""
    try:
        with h5py.File(path, "r") as fh:
            arrays = {}
            for key, what in (("image", "image"), ("label", "mask")):
                if not isinstance(fh.get(key), h5py.Dataset):
                    raise DataPrepError(f"{path}: no '{key}' dataset (the {what} of this stack)")
                arrays[key] = fh[key][()]
    except OSError as exc:
        raise DataPrepError(f"{path}: unreadable or truncated HDF5 file ({exc})") from exc
    image = arrays["image"]
    if image.ndim != ndim:
        raise DataPrepError(f"{path}: 'image' has shape {image.shape}, expected {ndim} dimensions")
    return image, check_mask(arrays["label"], image.shape, path)


def _h5_files(data_dir: Path) -> dict[tuple[str, str], dict[int, Path]]:
    """(patient, frame) -> {0: whole-stack file} or {K: slice file} for every SSL4MIS file in data_dir."""
    found: dict[tuple[str, str], dict[int, Path]] = {}
    for path in sorted(data_dir.iterdir()):
        m = H5_NAME.fullmatch(path.name)
        if not m:
            continue
        patient, frame_no, k = m.group(1), m.group(2), m.group(3)
        if frame_no not in H5_FRAMES:
            raise DataPrepError(f"{path}: the SSL4MIS layout has only frame01 (ED) and frame02 (ES)")
        if k is not None and int(k) < 1:
            raise DataPrepError(f"{path}: slice files are numbered from 1")
        files = found.setdefault((patient, frame_no), {})
        whole = k is None
        if files and whole != (0 in files):
            raise DataPrepError(f"{path}: stack {patient}_frame{frame_no} is both a whole-stack file and "
                                f"slice files")
        files[0 if whole else int(k)] = path
    return found


def raw_hdf5_stacks(data_dir: Path) -> Iterator[RawStack]:
    """Every stack of an SSL4MIS data folder, whole-stack and per-slice files alike."""
    found = _h5_files(data_dir)
    for (patient, frame_no), files in tqdm(sorted(found.items()), desc="acdc hdf5", unit="stack", disable=None,
                                           file=sys.stderr):
        if 0 in files:
            path = files[0]
            image, mask = read_h5(path, ndim=3)
            sources = [f"{path.name}[{k}]" for k in range(len(image))]
            where = path.name
        else:
            expected = range(1, max(files) + 1)
            missing = [k for k in expected if k not in files]
            if missing:
                raise DataPrepError(
                    f"{data_dir / f'{patient}_frame{frame_no}_slice_{missing[0]}.h5'} not found: the slice "
                    f"files of {patient}_frame{frame_no} run 1..{max(files)} with slice(s) {missing} missing")
            pairs = [read_h5(files[k], ndim=2) for k in expected]
            shapes = {img.shape for img, _ in pairs}
            if len(shapes) > 1:
                odd = next(files[k] for k, (img, _) in zip(expected, pairs) if img.shape != pairs[0][0].shape)
                raise DataPrepError(f"{odd}: slice shape differs from the other slices of its stack {sorted(shapes)}")
            image = np.stack([img for img, _ in pairs])
            mask = np.stack([lab for _, lab in pairs])
            sources = [files[k].name for k in expected]
            where = f"{patient}_frame{frame_no}_slice_*.h5"
        yield RawStack(patient=patient, frame=H5_FRAMES[frame_no], image=image, mask=mask, sources=sources,
                       where=where)
