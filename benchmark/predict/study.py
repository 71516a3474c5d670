"""A new study as a dataset directory, so that every slice reaches the network through
benchmark.data.Dataset.make_input, the preprocessing the model was trained with (model.json says which).

A STUDY is one of
- a dataset directory (holding manifest.csv), already ordered apex -> base, read in place;
- a NIfTI volume (.nii / .nii.gz): 3-D (x, y, slice), one stack (frame 0), or 4-D (x, y, slice, time), one stack
  per time point (frame t). Slice k of the file is the image volume[:, :, k] transposed to (row = y, col = x), as
  data_prep's ACDC importer reads NIfTI;
- anything else: a DICOM folder (or file), imported by data_prep's `dicom` source: one stack per cine phase
  (frame = phase, 0 = the first TriggerTime, near end-diastole for an R-wave-triggered cine), apex -> base from
  the DICOM geometry; files that are not one short-axis cine study are refused there.
DICOM and NIfTI studies are imported into a temporary dataset directory.

Apex -> base order of a NIfTI volume (there are no masks to read the anatomy from): with --apex-first / --base-first,
slice 0 of the file is the apex / the base. Without them the file's affine decides, by data_prep's DICOM rule
(dicom_io.apex_to_base: the apex is the end of the stack furthest along (+x, -y, -z) in LPS coordinates; the
affine's slice axis is turned from RAS into LPS first). A short-axis plane is double oblique, so a slice axis
along a body axis means the file did not keep the scanner geometry (ACDC's NIfTI files carry a placeholder
diag(-1, -1, 1) affine): such a volume, or one without sform/qform, is refused until --apex-first / --base-first
say the order. For DICOM the two flags count "first" in acquisition order, as in `python -m data_prep dicom`.
"""
from __future__ import annotations

import argparse
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_prep import dicom_io
from data_prep.errors import DataPrepError
from data_prep.manifest import MANIFEST, Stack, file_sha256, read_dataset_json, read_manifest, write_dataset

from ..data import Dataset
from ..preprocess import Preprocessing, crop_box
from .load import SLICE_CLASSES
from .outputs import safe_id

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def study_kind(study: Path) -> str:
    """'dataset', 'nifti' or 'dicom'; a missing or empty STUDY is an error."""
    if not study.exists():
        raise DataPrepError(f"STUDY {study} not found")
    if study.is_file() and study.name.lower().endswith(NIFTI_SUFFIXES):
        return "nifti"
    if study.is_dir() and (study / MANIFEST).is_file():
        return "dataset"
    dicom_io.list_files(study, "STUDY")
    return "dicom"


def study_name(study: Path) -> str:
    name = study.resolve().name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return name


def nifti_order(img, n: int, override: str | None, where: str) -> tuple[list[int], dict[str, Any], list[str]]:
    """File slice indices apex -> base, the evidence and warnings (see the module docstring)."""
    if override is not None:
        order = list(range(n)) if override == "apex_first" else list(range(n))[::-1]
        return order, {"decided_by": f"--{override.replace('_', '-')}", "file_slice_0": override.split("_")[0]}, []
    refuse = (f"{where}: the file does not place its slices in the body (%s), so apex and base cannot be told "
              f"apart; pass --apex-first or --base-first (first = slice 0 of the file)")
    header = img.header
    if int(header.get("sform_code", 0)) == 0 and int(header.get("qform_code", 0)) == 0:
        raise DataPrepError(refuse % "no sform or qform")
    axis = np.asarray(img.affine[:3, 2], dtype=np.float64)
    step = float(np.linalg.norm(axis))
    if step == 0:
        raise DataPrepError(refuse % "zero slice axis in the affine")
    normal_ras = axis / step
    if np.abs(normal_ras).max() >= dicom_io.SAME_PLANE_COS:
        raise DataPrepError(refuse % f"slice axis {np.round(normal_ras, 3).tolist()} (RAS) lies along a body axis; "
                                     f"a short-axis plane is double oblique")
    normal_lps = normal_ras * np.array([-1.0, -1.0, 1.0])
    return dicom_io.apex_to_base([k * step for k in range(n)], normal_lps, list(range(n)), None, where)


def read_nifti(path: Path):
    """(image, voxel array) of a NIfTI file: a 3-D volume, or 4-D with several time points."""
    import nibabel as nib
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as exc:
        raise DataPrepError(f"{path}: unreadable or truncated NIfTI file ({exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim not in (3, 4):
        raise DataPrepError(f"{path}: expected a 3-D (x, y, slice) or 4-D (x, y, slice, time) volume, got shape "
                            f"{data.shape}")
    if data.shape[2] < 2:
        raise DataPrepError(f"{path}: not short-axis-like: one slice (a short-axis stack needs several)")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise DataPrepError(f"{path}: the volume contains NaN or infinite values")
    return img, data


def nifti_stacks(path: Path, patient: str, override: str | None) -> tuple[list[Stack], list[str], int]:
    """The stacks of a 3-D or 4-D NIfTI volume, apex -> base; also the number of time points."""
    img, data = read_nifti(path)
    n = data.shape[2]
    order, evidence, notes = nifti_order(img, n, override, str(path))
    zooms = [float(z) for z in img.header.get_zooms()]
    volumes = [data] if data.ndim == 3 else [data[..., t] for t in range(data.shape[3])]
    stacks = []
    for t, vol in enumerate(volumes):
        where = "" if data.ndim == 3 else f", time {t}"
        stacks.append(Stack(patient=patient, frame=str(t), labels=[""] * n, pixel_spacing_mm=zooms[0],
                            images=[np.ascontiguousarray(vol[:, :, k].T) for k in order],
                            sources=[f"{path.name}[slice {k}{where}]" for k in order], orientation=evidence))
    return stacks, notes, len(volumes)


def import_study(study: Path, kind: str, out: Path, patient: str | None, apex: str | None,
                 allow_gaps: bool) -> Path:
    """A DICOM or NIfTI study as an (unlabelled) dataset directory at out."""
    if kind == "dicom":
        from data_prep import dicom
        return dicom.run(argparse.Namespace(src=str(study), out=str(out), patient=patient, apex=apex,
                                            allow_gaps=allow_gaps, overwrite=False))
    patient = dicom_io.check_patient_id(patient) if patient else safe_id(study_name(study))
    stacks, notes, n_times = nifti_stacks(study, patient, apex)
    print(f"{study.name}: {len(stacks[0].images)} slices x {n_times} time point(s)")
    dicom_io.print_warnings("nifti", notes)
    return write_dataset(out, "nifti", stacks, source=str(study), warnings=notes,
                         options={"apex": apex or "geometry (affine)"})


def study_dataset(root: Path) -> Dataset:
    """Every row of a dataset directory (labelled or not) as a Dataset, for Dataset.make_input."""
    rows = read_manifest(root).reset_index(drop=True)
    ds = Dataset(root, rows, SLICE_CLASSES, file_sha256(root / MANIFEST))
    ds.check_images()
    return ds


# How far a slice's centre crop may be enlarged to the model's input. The models learnt cine images of ~1-2 mm pixels,
# enlarged 1.5-3x; beyond 4x a pixel spans several of the network's, and beyond 8x (a thumbnail, pixels of 10-20 mm)
# the network sees interpolated blocks, not anatomy, and its OAP/IN/OBS calls mean nothing.
ENLARGED_WARN, ENLARGED_REFUSE = 4.0, 8.0


def check_resolution(ds: Dataset, prep: Preprocessing) -> None:
    """Refuse a study whose crops the model would enlarge beyond ENLARGED_REFUSE, warn (one line per stack) beyond
    ENLARGED_WARN."""
    for (patient, frame), stack in ds.rows.groupby(["patient", "frame"], sort=False):
        sides = {i: min(crop_box(ds.native(i).shape, prep.crop_fraction)[2:]) for i in stack.index}
        smallest = min(sides, key=sides.get)
        factor = prep.input_size / sides[smallest]
        h, w = ds.native(smallest).shape[:2]
        if factor <= ENLARGED_WARN:
            continue
        mm = stack["pixel_spacing_mm"].iloc[0] if "pixel_spacing_mm" in stack else None
        spacing = f", {float(mm):.3g} mm pixels" if mm is not None and pd.notna(mm) else ""
        what = (f"stack {patient} frame {frame}: images of {h} x {w} px{spacing}, their centre crop enlarged "
                f"{factor:.1f}x to the model's {prep.input_size} px input")
        if factor > ENLARGED_REFUSE:
            raise DataPrepError(f"{ds.root}: {what}; at that scale the network sees interpolation, not anatomy, so "
                                f"nothing is predicted; give the study at its native resolution")
        print(f"warning: {what}; its predictions are less reliable than at native cine resolution", file=sys.stderr)


def study_orientation(root: Path, kind: str) -> list[dict[str, Any]] | str:
    """How the slices were put apex -> base: the import's evidence per stack, or the manifest's own order."""
    return read_dataset_json(root).get("orientation", []) if kind != "dataset" else "manifest order"
