"""Any short-axis cine DICOM study, unlabelled (for prediction): one stack per cine phase, slices apex -> base.

SRC is a folder (searched recursively) holding one study: one series with every slice position, or one series
per position (any vendor). Files without the DICOM marker are skipped and counted; a corrupt or truncated DICOM
file (or any *.dcm file that does not read) stops the import with an error naming it, so a stack never silently
lacks a slice. Images are grouped by slice position (ImagePositionPatient along the slice normal) and ordered by
TriggerTime into phases 0..P-1 (the `frame` column); apex vs base comes from the geometry (see
data_prep.dicom_io), overridable with --apex-first / --base-first. Labels are empty.

Incomplete positions (a position lacking some phases) are reported as warnings and in dataset.json; each phase's
stack holds only the positions that have that phase, so some stacks are shorter (the `position_mm` column and the
orientation evidence say which positions each stack holds). A gap in slice positions (a spacing above 1.5x the
median) is an error unless --allow-gaps. Series of another orientation than the short-axis stack (localisers,
long-axis cines) are left out with a warning naming them. Mixed patients, several studies, mixed orientations within
the stack and a single slice position are errors.

No identifying header value is written: the patient id is --patient, else `dcm` + the first 10 hex digits of
SHA-256(PatientID, StudyInstanceUID) -- stable for a study, not reversible without the StudyInstanceUID.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from . import dicom_io
from .manifest import OVERWRITE_HELP, Stack, write_dataset

DATASET = "dicom"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="folder of one short-axis cine study (searched recursively)")
    parser.add_argument("--out", required=True, help="dataset directory to write")
    parser.add_argument("--patient", help="patient id for the manifest (default: dcm + a short hash of PatientID "
                                          "and StudyInstanceUID; header names are never copied)")
    dicom_io.add_apex_arguments(parser)
    parser.add_argument("--allow-gaps", action="store_true",
                        help="import a stack with a missing slice (spacing > 1.5x the median) with a warning "
                             "instead of an error")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.epilog = ("Non-DICOM files are skipped and counted; a corrupt or truncated DICOM file is an error. "
                     "Positions lacking some phases are reported and left out of those phases' stacks.")


def build_stacks(src: str | Path, patient: str | None = None, override: str | None = None,
                 allow_gaps: bool = False) -> tuple[list[Stack], list[str], dicom_io.CineStudy, dicom_io.ScanResult]:
    """The per-phase stacks of the study under src, with warnings, the grouped study and the scan counts."""
    scan = dicom_io.scan_dicom(src)
    study = dicom_io.group_cine(scan.images, str(src), override, allow_gaps)
    patient = dicom_io.check_patient_id(patient) if patient is not None else dicom_io.patient_hash(scan.images)
    notes = list(study.warnings)
    stacks = []
    for phase in range(study.n_phases):
        positions = study.stack_positions(phase)
        images = [p.frames[phase] for p in positions]
        spacing, spacing_notes = dicom_io.stack_pixel_spacing(images, str(src))
        notes.extend(n for n in spacing_notes if n not in notes)
        missing = [i for i, p in enumerate(study.positions) if phase not in p.frames]
        stacks.append(Stack(
            patient=patient, frame=str(phase), images=[im.pixels for im in images], labels=[""] * len(images),
            sources=[im.name for im in images], pixel_spacing_mm=spacing,
            extra={"position_mm": [round(p.s_mm, 2) for p in positions],
                   "trigger_time_ms": ["" if im.trigger_time is None else round(im.trigger_time, 2)
                                       for im in images]},
            orientation={**study.orientation, "positions_mm": [round(p.s_mm, 2) for p in positions],
                         "missing_positions": missing},
        ))
    return stacks, notes, study, scan


def run(args: argparse.Namespace) -> Path:
    stacks, notes, study, scan = build_stacks(args.src, args.patient, args.apex, args.allow_gaps)
    print(f"{scan.summary()}; {len(study.positions)} slice positions x {study.n_phases} phases, "
          f"{len(study.incomplete)} incomplete position(s)")
    dicom_io.print_warnings(DATASET, notes)
    options = {
        "apex": args.apex or "geometry",
        "allow_gaps": bool(args.allow_gaps),
        "patient_id": "given (--patient)" if args.patient else "hash of PatientID and StudyInstanceUID",
        "study": {"skipped_files": scan.skipped, "n_positions": len(study.positions),
                  "n_phases": study.n_phases, "incomplete_positions": study.incomplete},
    }
    return write_dataset(args.out, DATASET, stacks, source=str(args.src), options=options, warnings=notes,
                         overwrite=args.overwrite, inputs=[args.src])
