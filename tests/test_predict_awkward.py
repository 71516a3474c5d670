"""Awkward studies for `predict`: each gets a result for the short-axis stacks it holds with a line naming what was
left out, or one refusal (exit 2) naming the file."""
from __future__ import annotations

import numpy as np
import pytest

from dicom_factory import orientation_for, write_dicom
from test_predict import APEX_LPS, disk, run_dir, run_predict, write_cine, write_nifti  # noqa: F401  (run_dir)

SERIES = dict(PatientName="Doe^Jane", PatientID="MRN-778899", StudyInstanceUID="1.2.3.4", PixelSpacing=[1.5, 1.5])


def with_localiser(study):
    write_cine(study)
    write_dicom(study / "LOC1.dcm", disk(3), SeriesInstanceUID="1.2.3.4.9", SeriesNumber=1, InstanceNumber=1,
                ImageOrientationPatient=[1, 0, 0, 0, 1, 0], ImagePositionPatient=[0, 0, 0], **SERIES)
    return study


def with_other_files(study):
    write_cine(study)
    (study / "notes.txt").write_text("scan notes")
    (study / "DICOMDIR").write_bytes(bytes(200))
    (study / "thumb.png").write_bytes(b"\x89PNG")
    return study


def duplicated_position(study):
    write_cine(study, n_pos=4, n_phases=1)
    write_dicom(study / "IM0099.dcm", disk(4), SeriesInstanceUID="1.2.3.4.5", SeriesNumber=7, InstanceNumber=99,
                TriggerTime=0.0, ImageOrientationPatient=orientation_for(APEX_LPS),
                ImagePositionPatient=[10.0, -20.0, 30.0], **SERIES)
    return study


def single_slice(study):
    return write_cine(study, n_pos=1, n_phases=1)


def empty(study):
    study.mkdir()
    return study


def only_other_files(study):
    study.mkdir()
    (study / "notes.txt").write_text("scan notes")
    return study


def single_slice_nifti(study):
    return write_nifti(study.parent / "study.nii.gz", disk(3).astype(np.float32)[..., None], normal_lps=APEX_LPS)


@pytest.mark.parametrize("build, line", [
    (with_localiser, "{study}: skipped series 1 (1 image(s), LOC1.dcm...): another orientation than the short-axis "
                     "stack (series 7, 5 slice positions)"),
    (with_other_files, "10 DICOM images read; skipped: 3 non-DICOM files"),
])
def test_the_short_axis_stacks_are_predicted_and_what_was_left_out_is_named(run_dir, tmp_path, capsys, build,  # noqa: F811
                                                                            line):
    study = build(tmp_path / "study")
    rc, out, err = run_predict(capsys, "--model", run_dir, study, "--out", tmp_path / "o")
    assert rc == 0, err
    assert "2 stack(s), 10 slices" in out and line.format(study=study) in out + err


@pytest.mark.parametrize("build, message", [
    (duplicated_position, "{study}: {study}/IM0001.dcm and {study}/IM0099.dcm have the same slice position and "
                          "TriggerTime; not a single cine series (duplicates, or several images per frame)"),
    (single_slice, "{study}: not short-axis-like: all 1 images are at one slice position (a short-axis stack needs "
                   "several)"),
    (empty, "STUDY {study} is empty"),
    (only_other_files, "SRC {study}: no DICOM images found (1 non-DICOM files)"),
    (single_slice_nifti, "{study}: not short-axis-like: one slice (a short-axis stack needs several)"),
])
def test_a_study_without_a_short_axis_stack_is_one_refusal(run_dir, tmp_path, capsys, build, message):  # noqa: F811
    study = build(tmp_path / "study")
    rc, _, err = run_predict(capsys, "--model", run_dir, study, "--out", tmp_path / "o")
    assert rc == 2 and err.strip().splitlines() == [
        "benchmark predict: error: " + message.format(study=study)], err
    assert not (tmp_path / "o").exists()
