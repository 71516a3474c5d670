"""Cardiac Atlas Project challenge DICOM (DETxxxxxxx_SAyy_phzz.dcm): ED and ES stacks per patient, apex -> base.

SRC is a folder (searched recursively) of files named `DET<digits>_SA<n>_ph<m>.dcm` (patient, slice position
number, cine phase); other files are skipped and counted, corrupt ones are an error. Slices are ordered apex ->
base from the DICOM geometry (data_prep.dicom_io: apex = the end of the stack furthest along (+x, -y, -z) in LPS);
--apex-first / --base-first override it, "first" meaning the lowest SA number. A gap in slice positions is an
error unless --allow-gaps. `frame` is ED / ES; the `phase` and `sa` columns keep the file's numbers.

ED is phase 0 (the CAP convention: acquisition triggered on the R wave). ES is chosen per patient from the images
(`--es-phase N` overrides it for all patients), as the phase of smallest blood volume:
  1. on the mid-ventricular half of the stack (the apical and basal quarters are left out: through-plane motion of
     the base and partial volume at the apex make their blood area follow other rhythms), for each slice,
  2. the region of interest is the top ROI_FRACTION of pixels by temporal standard deviation over the cycle
     (smoothed over ~3 mm): the moving blood/myocardium borders of both ventricles, wherever the heart lies in
     the field of view -- a fixed central region would often miss it or be dominated by static tissue;
  3. in that region, one Otsu threshold over all phases splits bright blood (SSFP cine) from myocardium and
     tissue, and the blood fraction per phase is a proxy of the slice's blood volume;
  4. the fractions are summed over the slices, smoothed with a circular [1, 2, 1] / 4 kernel (the end-systolic
     plateau is flat, so single-phase noise would otherwise pick its edge), and ES is the minimum over phases
     1 .. P-1.
On the Sunnybrook study SCD0000101 (whose expert contours mark ES at phase 7) this gives phase 7; the curve and
its relative depth are stored in dataset.json, and a dip under MIN_DIP of the curve's maximum is a warning.

Labels come from --labels CSV with columns patient, frame, slice, label: frame is ED / ES or the phase number of
that stack, slice is the SA number, label one of OAP / IN / OBS. A row naming an unknown patient, frame or slice,
or an unknown label, is an error naming the CSV row; a labelled stack must have every slice labelled; stacks
without rows stay unlabelled (reported). Without --labels everything is unlabelled.
"""
from __future__ import annotations

import argparse
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from . import dicom_io
from .errors import DataPrepError
from .manifest import OVERWRITE_HELP, SLICE_LABELS, Stack, write_dataset

DATASET = "cap"
CAP_NAME = re.compile(r"^(DET\d+)_SA(\d+)_ph(\d+)\.dcm$", re.IGNORECASE)
ROI_FRACTION = 0.05
ROI_SMOOTH_MM = 3.0
MIN_DIP = 0.03


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="folder of DETxxxxxxx_SAyy_phzz.dcm files (searched recursively)")
    parser.add_argument("--out", required=True, help="dataset directory to write")
    parser.add_argument("--labels", metavar="CSV", help="slice labels: columns patient, frame (ED/ES or phase), "
                                                         "slice (SA number), label (OAP/IN/OBS)")
    parser.add_argument("--es-phase", type=int, metavar="N",
                        help="use phase N as ES for every patient instead of estimating it from the images")
    dicom_io.add_apex_arguments(parser, first="lowest SA number")
    parser.add_argument("--allow-gaps", action="store_true",
                        help="import a stack with a missing slice position with a warning instead of an error")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.epilog = ("ED = phase 0; ES = per patient, the phase of least blood in the moving region of the "
                     "mid-ventricular slices (see the module docstring). Other files are skipped and counted; a "
                     "corrupt or truncated DICOM file is an error.")


# ---------------------------------------------------------------------------------------------- ES estimation

def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of a 1-D sample (256 bins over its range)."""
    hist, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (m0 / w0 - (m0[-1] - m0) / w1) ** 2 * w0 * w1
    return float(centres[int(np.nanargmax(between[:-1]))])


def blood_fraction_curve(frames: np.ndarray, smooth_px: float) -> np.ndarray:
    """Per phase, the fraction of the moving region that is bright blood, for one slice's cine (P, H, W)."""
    frames = np.asarray(frames, dtype=np.float32)
    motion = cv2.GaussianBlur(frames.std(axis=0), (0, 0), max(smooth_px, 0.5))
    roi = motion >= np.quantile(motion, 1.0 - ROI_FRACTION)
    pixels = frames[:, roi]
    if pixels.size == 0 or np.ptp(pixels) == 0:
        return np.zeros(frames.shape[0])
    return (pixels > _otsu(pixels.ravel())).mean(axis=1)


def choose_es(curve: np.ndarray) -> int:
    """ES = minimum of the circularly [1, 2, 1]-smoothed curve over phases 1 .. P-1 (phase 0 is ED)."""
    curve = np.asarray(curve, dtype=np.float64)
    if curve.size < 2:
        raise DataPrepError("cannot choose ES from a cine with fewer than two phases")
    smooth = (np.roll(curve, 1) + 2 * curve + np.roll(curve, -1)) / 4
    return 1 + int(np.argmin(smooth[1:]))


def estimate_es(cines: list[np.ndarray], spacing_mm: float | None) -> tuple[int, dict[str, Any]]:
    """ES phase of a stack from its complete slice cines (each (P, H, W)), ordered apex -> base."""
    n = len(cines)
    mid = cines[n // 4: n - n // 4] or cines
    smooth_px = ROI_SMOOTH_MM / spacing_mm if spacing_mm else 2.0
    curve = np.sum([blood_fraction_curve(c, smooth_px) for c in mid], axis=0)
    es = choose_es(curve)
    dip = float((curve.max() - curve[es]) / curve.max()) if curve.max() > 0 else 0.0
    return es, {"rule": "min blood fraction in the moving region, mid-ventricular slices",
                "n_slices_used": len(mid), "curve": [round(float(v), 4) for v in curve],
                "relative_dip": round(dip, 4)}


# ----------------------------------------------------------------------------------------------------- reading

@dataclass
class _Patient:
    pid: str
    files: dict[tuple[int, int], dicom_io.DicomImage]  # (sa, phase) -> image


def _collect(src: str | Path) -> tuple[list[_Patient], dict[str, int]]:
    root, files = dicom_io.list_files(src)
    named = [(p, CAP_NAME.match(p.name)) for p in files]
    skipped = {"files not named DETxxxxxxx_SAyy_phzz.dcm": sum(m is None for _, m in named)}
    named = [(p, m) for p, m in named if m]
    if not named:
        raise DataPrepError(f"SRC {src}: no CAP-named DICOM files (DETxxxxxxx_SAyy_phzz.dcm) among {len(files)} files")
    by_patient: dict[str, dict[tuple[int, int], dicom_io.DicomImage]] = defaultdict(dict)
    for path, m in tqdm(named, desc="reading DICOM", unit="file", disable=None):
        pid, sa, phase = m.group(1).upper(), int(m.group(2)), int(m.group(3))
        got = dicom_io.read_dicom(path, path.relative_to(root).as_posix())
        if isinstance(got, str):
            raise DataPrepError(f"{path}: a CAP file that is not a DICOM image ({got})")
        if (sa, phase) in by_patient[pid]:
            raise DataPrepError(f"{path}: {pid} SA{sa} ph{phase} also in {by_patient[pid][(sa, phase)].path}")
        by_patient[pid][(sa, phase)] = got
    return [_Patient(pid, by_patient[pid]) for pid in sorted(by_patient)], skipped


def _slice_positions(patient: _Patient, where: str) -> tuple[dict[int, float], np.ndarray]:
    """Each SA number's position along the common normal; errors for mixed or shared positions."""
    images = list(patient.files.values())
    dicom_io.check_one_patient(images, where)
    normal = dicom_io.common_normal(images, where)
    per_sa: dict[int, list[dicom_io.DicomImage]] = defaultdict(list)
    for (sa, _), im in sorted(patient.files.items()):
        per_sa[sa].append(im)
    s = {}
    for sa, ims in per_sa.items():
        values = [float(im.position @ normal) for im in ims]
        far = int(np.argmax(np.abs(np.array(values) - values[0])))
        if abs(values[far] - values[0]) > dicom_io.POSITION_TOL_MM:
            raise DataPrepError(f"{where}: SA{sa} files lie at different slice positions ({ims[0].path} vs "
                                f"{ims[far].path}, {abs(values[far] - values[0]):.1f} mm apart)")
        s[sa] = float(np.mean(values))
    if len(s) < 2:
        raise DataPrepError(f"{where}: not short-axis-like: only one slice position (SA{next(iter(s))})")
    ordered = sorted(s, key=s.get)
    for a, b in zip(ordered, ordered[1:]):
        if s[b] - s[a] <= dicom_io.POSITION_TOL_MM:
            raise DataPrepError(f"{where}: SA{a} and SA{b} are the same slice position "
                                f"({per_sa[a][0].path}, {per_sa[b][0].path})")
    return s, normal


# ------------------------------------------------------------------------------------------------------ labels

@dataclass
class _LabelRow:
    line: int
    label: str


def read_labels(csv_path: str | Path, stacks: list[Stack]) -> tuple[dict[tuple[str, str, int], _LabelRow], list[str]]:
    """Labels by (patient, frame, SA number), validated against the stacks; errors name the CSV row."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataPrepError(f"--labels {csv_path} not found")
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataPrepError(f"--labels {csv_path}: not a readable CSV ({exc})") from exc
    missing = [c for c in ("patient", "frame", "slice", "label") if c not in df.columns]
    if missing:
        raise DataPrepError(f"--labels {csv_path}: missing column(s) {', '.join(missing)}")
    by_stack = {(s.patient, s.frame): s for s in stacks}
    out: dict[tuple[str, str, int], _LabelRow] = {}
    for i, row in enumerate(df.itertuples(index=False)):
        line = i + 2  # the header is line 1
        where = f"--labels {csv_path} line {line}"
        patient, frame_raw = row.patient.strip(), row.frame.strip()
        if not any(p == patient for p, _ in by_stack):
            raise DataPrepError(f"{where}: patient {patient!r} is not in SRC")
        frame = frame_raw.upper()
        if frame not in ("ED", "ES"):
            frame = next((f for (p, f), s in by_stack.items() if p == patient and frame_raw.isdigit()
                          and s.extra["phase"][0] == int(frame_raw)), "")
        if (patient, frame) not in by_stack:
            raise DataPrepError(f"{where}: frame {frame_raw!r} is neither ED, ES nor the ED/ES phase of {patient} "
                                f"(ED = {by_stack[(patient, 'ED')].extra['phase'][0]}, ES = "
                                f"{by_stack[(patient, 'ES')].extra['phase'][0]}; see --es-phase)")
        stack = by_stack[(patient, frame)]
        try:
            sa = int(row.slice)
        except ValueError:
            raise DataPrepError(f"{where}: slice {row.slice!r} is not an SA number") from None
        if sa not in stack.extra["sa"]:
            raise DataPrepError(f"{where}: slice SA{sa} is not in {patient}/{frame} "
                                f"(SA numbers {sorted(stack.extra['sa'])})")
        label = row.label.strip()
        if label not in SLICE_LABELS:
            raise DataPrepError(f"{where}: unknown label {label!r}; expected one of {list(SLICE_LABELS)}")
        key = (patient, frame, sa)
        if key in out:
            raise DataPrepError(f"{where}: {patient}/{frame} SA{sa} is already labelled on line {out[key].line}")
        out[key] = _LabelRow(line, label)
    notes = []
    for (patient, frame), stack in by_stack.items():
        have = [sa for sa in stack.extra["sa"] if (patient, frame, sa) in out]
        if not have:
            notes.append(f"{patient}/{frame}: no rows in {csv_path}; left unlabelled")
        elif len(have) < len(stack.extra["sa"]):
            lacking = sorted(set(stack.extra["sa"]) - set(have))
            raise DataPrepError(f"--labels {csv_path}: {patient}/{frame} lacks labels for SA {lacking}")
    return out, notes


# ------------------------------------------------------------------------------------------------------ stacks

def _first_file(patient: _Patient, sa: int) -> dicom_io.DicomImage:
    return patient.files[min(key for key in patient.files if key[0] == sa)]


def _patient_stacks(patient: _Patient, src: str | Path, es_phase: int | None, override: str | None,
                    allow_gaps: bool) -> tuple[list[Stack], list[str]]:
    where = f"{src} {patient.pid}"
    s, normal = _slice_positions(patient, where)
    sas = sorted(s)
    by_position = sorted(sas, key=s.get)
    spacing, notes = dicom_io.check_spacing([s[sa] for sa in by_position],
                                            [_first_file(patient, sa).name for sa in by_position], where,
                                            allow_gaps)
    order, orientation, apex_notes = dicom_io.apex_to_base([s[sa] for sa in sas], normal, list(range(len(sas))),
                                                           override, where)
    notes += apex_notes
    sas = [sas[i] for i in order]
    orientation["spacing_mm"] = round(spacing, 3)
    orientation["sa_apex_to_base"] = sas
    n_phases = 1 + max(ph for _, ph in patient.files)
    for sa in sas:
        if (sa, 0) not in patient.files:
            raise DataPrepError(f"{where}: SA{sa} has no ph0 (ED) file")
    if es_phase is not None:
        lacking = [sa for sa in sas if (sa, es_phase) not in patient.files]
        if lacking:
            raise DataPrepError(f"{where}: --es-phase {es_phase}: no ph{es_phase} file for SA {lacking}")
        es, es_evidence = es_phase, {"rule": "--es-phase"}
    else:
        complete = [sa for sa in sas if all((sa, ph) in patient.files for ph in range(n_phases))]
        if len(complete) < len(sas):
            notes.append(f"{where}: SA {sorted(set(sas) - set(complete))} lack some of the {n_phases} phases; "
                         f"ES is estimated from the others")
        if not complete:
            raise DataPrepError(f"{where}: no slice has all {n_phases} phases to estimate ES from; pass --es-phase")
        cines = []
        for sa in complete:
            shapes = {patient.files[(sa, ph)].pixels.shape for ph in range(n_phases)}
            if len(shapes) > 1:
                raise DataPrepError(f"{where}: SA{sa} phases differ in image size {sorted(shapes)}")
            cines.append(np.stack([patient.files[(sa, ph)].pixels for ph in range(n_phases)]))
        es, es_evidence = estimate_es(cines, patient.files[(complete[0], 0)].pixel_spacing[0]
                                      if patient.files[(complete[0], 0)].pixel_spacing else None)
        if es_evidence["relative_dip"] < MIN_DIP:
            notes.append(f"{where}: ES (phase {es}) is uncertain: the blood-volume curve dips only "
                         f"{100 * es_evidence['relative_dip']:.1f}%; consider --es-phase")
        lacking = [sa for sa in sas if (sa, es) not in patient.files]
        if lacking:
            raise DataPrepError(f"{where}: estimated ES phase {es} is missing for SA {lacking}; pass --es-phase")
    stacks = []
    for frame, phase in (("ED", 0), ("ES", es)):
        images = [patient.files[(sa, phase)] for sa in sas]
        pixel_spacing, spacing_notes = dicom_io.stack_pixel_spacing(images, f"{where}/{frame}")
        notes += spacing_notes
        stacks.append(Stack(
            patient=patient.pid, frame=frame, images=[im.pixels for im in images], labels=[""] * len(images),
            sources=[im.name for im in images], pixel_spacing_mm=pixel_spacing,
            extra={"sa": sas, "phase": [phase] * len(sas), "position_mm": [round(s[sa], 2) for sa in sas]},
            orientation={**orientation, "n_phases": n_phases, "es": {"phase": es, **es_evidence}},
        ))
    return stacks, notes


def build_stacks(src: str | Path, labels_csv: str | Path | None = None, es_phase: int | None = None,
                 override: str | None = None, allow_gaps: bool = False
                 ) -> tuple[list[Stack], list[str], dict[str, int]]:
    if es_phase is not None and es_phase < 1:
        raise DataPrepError(f"--es-phase {es_phase}: must be a phase after ED (phase 0)")
    patients, skipped = _collect(src)
    stacks, notes = [], []
    for patient in patients:
        got, patient_notes = _patient_stacks(patient, src, es_phase, override, allow_gaps)
        stacks += got
        notes += patient_notes
    if labels_csv is not None:
        labels, label_notes = read_labels(labels_csv, stacks)
        notes += label_notes
        for stack in stacks:
            found = [labels.get((stack.patient, stack.frame, sa)) for sa in stack.extra["sa"]]
            stack.labels = [row.label if row else "" for row in found]
    return stacks, notes, skipped


def run(args: argparse.Namespace) -> Path:
    stacks, notes, skipped = build_stacks(args.src, args.labels, args.es_phase, args.apex, args.allow_gaps)
    skipped_text = ", ".join(f"{n} {why}" for why, n in skipped.items() if n) or "none"
    es = {s.patient: s.extra["phase"][0] for s in stacks if s.frame == "ES"}
    print(f"{len(es)} patient(s), {sum(len(s.images) for s in stacks)} slices; skipped: {skipped_text}; "
          f"ES phase: {', '.join(f'{p} {ph}' for p, ph in es.items())}")
    dicom_io.print_warnings(DATASET, notes)
    options = {"labels": args.labels, "es_phase": args.es_phase if args.es_phase is not None else "estimated",
               "apex": args.apex or "geometry", "allow_gaps": bool(args.allow_gaps),
               "study": {"skipped_files": skipped}}
    return write_dataset(args.out, DATASET, stacks, source=str(args.src), options=options, warnings=notes,
                         overwrite=args.overwrite, inputs=[p for p in (args.src, args.labels) if p is not None])
