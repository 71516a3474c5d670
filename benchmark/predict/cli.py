"""`python -m benchmark predict`: the command line, and the order of its steps: every check that needs no network
(options, --out, --show, the released model's checksums, model.json) comes before Keras loads the model."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from tqdm import tqdm

from data_prep import atomic, dicom_io
from data_prep.errors import DataPrepError

from ..errors import exit_on_user_error
from .decide import StackPrediction, predictions_frame, ranges_document
from .draw import write_report
from .load import (REFERENCE_MODEL, TrainedModel, check_reference, existing_model_directory, import_tensorflow,
                   load_trained, read_model_json)
from .network import predict_study
from .outputs import PREDICTIONS, RANGES, check_out, stale_reports
from .study import check_resolution, import_study, study_dataset, study_kind, study_name, study_orientation
from .viewer import check_interactive, show

PROG = "benchmark predict"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmark predict",
        description="Classify every slice of a short-axis study as OAP / IN / OBS with a trained model, decode "
                    "one contiguous IN range per stack, and write predictions.csv, ranges.json and a PNG report "
                    "per stack (images, Grad-CAM, probability bars).",
        epilog="STUDY: a DICOM folder (data_prep's dicom importer: one stack per cine phase, apex -> base from "
               "the geometry), a NIfTI volume .nii/.nii.gz (3-D, or 4-D with time; apex -> base from the affine, "
               "or --apex-first/--base-first = slice 0 of the file), or a dataset directory (manifest.csv). "
               "Exit code 2 with one message for a bad model directory or study.")
    p.add_argument("study", metavar="STUDY", type=Path, help="DICOM folder, NIfTI file or dataset directory")
    p.add_argument("--model", type=Path, metavar="RUN_DIR",
                   help="a model run directory of `python -m benchmark` (holding model/model.keras and "
                        "model/model.json), or that model/ directory itself; default: the released reference "
                        "model shipped with the package (its model card: benchmark/reference/MODEL_CARD.md)")
    p.add_argument("--out", type=Path, help="output directory (default: ./<STUDY name>_predictions)")
    dicom_io.add_apex_arguments(p, first="first slice (DICOM: in acquisition order; NIfTI: slice 0 of the file)")
    p.add_argument("--patient", help="patient id in the outputs (DICOM default: dcm + a hash of PatientID and "
                                     "StudyInstanceUID; NIfTI default: the file name)")
    p.add_argument("--allow-gaps", action="store_true", help="DICOM: predict a stack with a missing slice position")
    p.add_argument("--show", action="store_true", help="open the reports in a window (left/right: stack, "
                                                        "c: Grad-CAM, q: close)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_on_user_error(PROG, lambda: run(args))


def check_study_options(args: argparse.Namespace, kind: str) -> None:
    if kind == "dataset" and (args.apex or args.patient or args.allow_gaps):
        raise DataPrepError("--apex-first / --base-first / --patient / --allow-gaps apply to DICOM and NIfTI "
                            "studies; a dataset directory is already ordered apex -> base")


def write_outputs(out: Path, frame: pd.DataFrame, ranges: dict[str, Any], stacks: Sequence[StackPrediction],
                  trained: TrainedModel) -> float:
    """predictions.csv, ranges.json and the reports into out, reports of earlier stacks removed; the seconds the
    reports took."""
    atomic.write_csv(out / PREDICTIONS, frame)
    atomic.write_json(out / RANGES, ranges)
    t0 = time.perf_counter()
    for stack in tqdm(stacks, desc="reports", unit="stack", disable=None, file=sys.stderr):
        write_report(out / stack.report, stack, trained)
    seconds = time.perf_counter() - t0
    for old in stale_reports(out, {s.report for s in stacks}):
        old.unlink()
    return seconds


def summary_lines(trained: TrainedModel, study: Path, kind: str, stacks: Sequence[StackPrediction],
                  timing: dict[str, float], total_s: float, out: Path) -> list[str]:
    """What a run prints: the model and study, each stack's IN ranges, where the time went, what was written."""
    n_slices = sum(len(s.slices) for s in stacks)
    per_stack = (timing["inputs_s"] + timing["predict_cam_s"] + timing["decode_s"]) / len(stacks)
    return [f"{trained.name} on {study} ({kind}): {len(stacks)} stack(s), {n_slices} slices; slice 0 = apex",
            *(stack.summary() for stack in stacks),
            "timing: " + ", ".join(f"{k[:-2].replace('_', ' ')} {v:.2f} s" for k, v in timing.items())
            + f"; per stack (inputs + predict + CAM + decode) {per_stack:.2f} s; total {total_s:.1f} s",
            f"wrote {out / PREDICTIONS}, {out / RANGES} and {len({s.report for s in stacks})} report(s) in {out}"]


def run(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    study = args.study
    kind = study_kind(study)
    check_study_options(args, kind)
    out = args.out or Path.cwd() / f"{study_name(study)}_predictions"
    check_out(out)
    if args.show:
        check_interactive()
    if args.model is None:
        check_reference()
    model_dir = existing_model_directory(args.model or REFERENCE_MODEL)
    timing = {"tensorflow_import_s": import_tensorflow()}
    meta, prep = read_model_json(model_dir)
    with tempfile.TemporaryDirectory(prefix="benchmark-predict-") as tmp:
        # the study is read before the model is loaded, so a bad study is refused without waiting for the load
        t0 = time.perf_counter()
        root = study if kind == "dataset" else import_study(study, kind, Path(tmp) / "study", args.patient,
                                                            args.apex, args.allow_gaps)
        ds = study_dataset(root)
        check_resolution(ds, prep)
        timing["read_study_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        trained = load_trained(model_dir, meta, prep)
        timing["model_load_s"] = time.perf_counter() - t0
        stacks = predict_study(trained, ds, kind, timing)
        frame = predictions_frame(stacks, ds, trained.classes)
        ranges = ranges_document(stacks, trained, study, kind, study_orientation(root, kind))
    timing["reports_s"] = write_outputs(out, frame, ranges, stacks, trained)
    print("\n".join(summary_lines(trained, study, kind, stacks, timing, time.perf_counter() - t_start, out)))
    if args.show:
        show(stacks, trained)
    return 0
