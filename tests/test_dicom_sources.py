"""The DICOM sources of data_prep: dicom (any cine study), sunnybrook (contours) and cap (challenge naming).

Synthetic studies are small pydicom datasets (16x16 uint16) written to tmp_path; each pixel value encodes the
slice position and phase (100 * position + phase) so the tests can see exactly which file landed where.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from dicom_factory import orientation_for, write_dicom

from data_prep import cap, dicom, dicom_io, sunnybrook
from data_prep.__main__ import main
from data_prep.errors import DataPrepError
from data_prep.manifest import load_image, load_mask, mask_structures, read_dataset_json, read_manifest

APEX = np.array([1.0, -1.0, -1.0]) / np.sqrt(3.0)
NAME, PID = "Doe^Jane", "MRN-778899"  # identifying values that must never reach an output


def write_image(path: Path, *, value: int, position, normal=APEX, trigger: float | None = 0.0, instance: int = 1,
                patient_id: str = PID, study_uid: str = "1.2.3.4", series_uid: str = "1.2.3.4.5",
                series_number: int = 7, spacing=(1.5, 1.5), orientation=None, pixels=None) -> Path:
    optional = {} if trigger is None else {"TriggerTime": trigger}
    return write_dicom(
        path, np.full((16, 16), value) if pixels is None else pixels,
        PatientName=NAME, PatientID=patient_id, PatientBirthDate="19700101",
        StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid, SeriesNumber=series_number, InstanceNumber=instance,
        ImagePositionPatient=[round(float(x), 4) for x in position],
        ImageOrientationPatient=orientation if orientation is not None else orientation_for(normal),
        PixelSpacing=list(spacing), **optional)


def write_cine(folder: Path, n_pos: int = 4, n_phases: int = 3, normal=APEX, spacing_mm: float = 8.0,
               skip: set[tuple[int, int]] = frozenset(), positions=None, **kw) -> list[Path]:
    """One series, positions 0..n-1 at k * spacing along the normal, instance numbers phase-fastest.
    File names run backwards so that no test can pass by relying on file order."""
    normal = np.asarray(normal, dtype=float) / np.linalg.norm(normal)
    origin = np.array([10.0, -20.0, 30.0])
    positions = positions if positions is not None else [k * spacing_mm for k in range(n_pos)]
    paths = []
    for k, s in enumerate(positions):
        for ph in range(n_phases):
            if (k, ph) in skip:
                continue
            instance = k * n_phases + ph + 1
            paths.append(write_image(folder / f"IM{9999 - instance:05d}.dcm", value=100 * k + ph,
                                     position=origin + s * normal, normal=normal, trigger=40.0 * ph,
                                     instance=instance, **kw))
    return paths


def stack_values(out: Path, frame: str) -> list[int]:
    df = read_manifest(out)
    sub = df[df["frame"].astype(str) == frame].sort_values("slice")
    return [int(load_image(out / img)[0, 0]) for img in sub["image"]]


def assert_no_identifying_values(out: Path, values=(NAME, PID, "19700101")) -> None:
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for value in values:
                assert value.encode() not in data, f"{value!r} found in {path}"


def run_cli(*argv: str) -> int:
    return main([str(a) for a in argv])


# ------------------------------------------------------------------------------------------- geometry, units

def test_apex_is_the_end_furthest_along_the_apex_direction():
    # normal (0, 0, -1): cos with (1, -1, -1)/sqrt(3) is 1/sqrt(3) > 0, so the apex is the highest position
    order, evidence, notes = dicom_io.apex_to_base([0.0, 10.0, 20.0], np.array([0.0, 0.0, -1.0]), [0, 1, 2], None,
                                                   "t")
    assert order == [2, 1, 0]
    assert evidence["cos_normal_apex"] == pytest.approx(0.577, abs=1e-3)
    assert evidence["geometry_says"] == "base first in acquisition order"
    assert not evidence["ambiguous"] and notes == []
    order, evidence, _ = dicom_io.apex_to_base([0.0, 10.0, 20.0], np.array([0.0, 0.0, 1.0]), [0, 1, 2], None, "t")
    assert order == [0, 1, 2] and evidence["cos_normal_apex"] == pytest.approx(-0.577, abs=1e-3)


def test_apex_ambiguous_and_override():
    perpendicular = np.array([1.0, 1.0, 0.0]) / np.sqrt(2.0)  # cos 0 with the apex direction
    order, evidence, notes = dicom_io.apex_to_base([0.0, 5.0, 10.0], perpendicular, [2, 0, 1], None, "t")
    assert evidence["ambiguous"] and "ambiguous" in notes[0]
    # acquisition ranks [2, 0, 1]: position 1 was acquired first
    order, evidence, notes = dicom_io.apex_to_base([0.0, 5.0, 10.0], perpendicular, [2, 0, 1], "apex_first", "t")
    assert order == [1, 2, 0] and evidence["decided_by"] == "--apex-first" and notes == []
    order, _, _ = dicom_io.apex_to_base([0.0, 5.0, 10.0], perpendicular, [2, 0, 1], "base_first", "t")
    assert order == [0, 2, 1]
    _, _, notes = dicom_io.apex_to_base([0.0, 10.0], np.array([0.0, 0.0, -1.0]), [0, 1], "apex_first", "t")
    assert "contradicts the geometry" in notes[0]


def test_check_spacing_gap():
    assert dicom_io.check_spacing([0, 8, 16, 24], list("abcd"), "t", False) == (8.0, [])
    with pytest.raises(DataPrepError, match="between b and c: 16.00 mm is 2.0x the median"):
        dicom_io.check_spacing([0, 8, 24, 32], list("abcd"), "t", False)
    spacing, notes = dicom_io.check_spacing([0, 8, 24, 32], list("abcd"), "t", True)
    assert spacing == 8.0 and "gap" in notes[0]


def test_cluster_positions_tolerates_header_rounding():
    assert dicom_io.cluster_positions([10.0, 0.2, 0.0, 10.3, 20.0]) == [[2, 1], [0, 3], [4]]


# ----------------------------------------------------------------------------------------------- dicom source

@pytest.mark.parametrize("normal,apex_position", [(APEX, 3), (-APEX, 0)])
def test_dicom_groups_and_orders_along_the_normal(tmp_path, normal, apex_position):
    write_cine(tmp_path / "src", n_pos=4, n_phases=3, normal=normal)
    assert run_cli("dicom", tmp_path / "src", "--out", tmp_path / "out") == 0
    out = tmp_path / "out"
    df = read_manifest(out)
    assert sorted(df["frame"].unique()) == ["0", "1", "2"] and (df["label"] == "").all()
    expected_positions = [apex_position, 2, 1, 0] if apex_position == 3 else [0, 1, 2, 3]
    for phase in range(3):
        assert stack_values(out, str(phase)) == [100 * k + phase for k in expected_positions]
    meta = read_dataset_json(out)
    assert meta["orientation"][0]["cos_normal_apex"] == pytest.approx(1.0 if apex_position == 3 else -1.0, abs=1e-3)
    assert meta["warnings"] == []
    assert_no_identifying_values(out)


def test_dicom_phases_follow_trigger_time_not_instance_or_file_order(tmp_path):
    src = tmp_path / "src"
    for k in range(2):
        for ph, trigger in enumerate([0.0, 45.0, 90.0]):
            # instance numbers run against the trigger times
            write_image(src / f"f{k}{ph}.dcm", value=100 * k + ph, position=[0, 0, 0] + k * 8 * APEX,
                        trigger=trigger, instance=10 - ph)
    stacks, _, study, _ = dicom.build_stacks(src)
    assert study.n_phases == 3
    assert [[int(im[0, 0]) for im in s.images] for s in stacks] == [[100, 0], [101, 1], [102, 2]]


def test_dicom_incomplete_positions_are_reported(tmp_path):
    # position 1 has phases 0 and 2 only (trigger times 0 and 80 ms on the 40 ms grid)
    write_cine(tmp_path / "src", n_pos=3, n_phases=3, skip={(1, 1)})
    assert run_cli("dicom", tmp_path / "src", "--out", tmp_path / "out") == 0
    out = tmp_path / "out"
    assert stack_values(out, "0") == [200, 100, 0]
    assert stack_values(out, "1") == [201, 1]
    assert stack_values(out, "2") == [202, 102, 2]
    meta = read_dataset_json(out)
    [inc] = meta["options"]["study"]["incomplete_positions"]
    assert inc["position"] == 1 and inc["phases"] == [0, 2]
    assert any("incomplete position 1" in w and "2 of 3 phases (0, 2)" in w for w in meta["warnings"])
    ev = {e["frame"]: e for e in meta["orientation"]}
    assert ev["1"]["missing_positions"] == [1] and ev["0"]["missing_positions"] == []


def test_dicom_incomplete_position_phase_from_trigger_grid(tmp_path):
    src = tmp_path / "src"
    write_cine(src, n_pos=2, n_phases=5)
    # a third position with two frames at 0 and 165 ms: nearest grid phases 0 and 4 (grid 0, 40, ..., 160)
    for trigger, value in ((0.0, 200), (165.0, 204)):
        write_image(src / f"extra{value}.dcm", value=value, position=np.array([10.0, -20.0, 30.0]) + 16 * APEX,
                    trigger=trigger, instance=50 + value)
    stacks, notes, study, _ = dicom.build_stacks(src)
    assert study.incomplete[0]["phases"] == [0, 4]
    assert [int(im[0, 0]) for im in stacks[4].images] == [204, 104, 4]
    assert [int(im[0, 0]) for im in stacks[2].images] == [102, 2]


def test_dicom_skips_non_dicom_files_with_a_count(tmp_path):
    src = tmp_path / "src"
    write_cine(src, n_pos=2, n_phases=2)
    (src / "notes.txt").write_text("not an image")
    (src / "README").write_text("hello")
    assert run_cli("dicom", src, "--out", tmp_path / "out", "--patient", "case7") == 0
    meta = read_dataset_json(tmp_path / "out")
    assert meta["options"]["study"]["skipped_files"] == {"non-DICOM files": 2}
    assert set(read_manifest(tmp_path / "out")["patient"]) == {"case7"}


def test_dicom_patient_id_is_a_stable_hash_without_header_values(tmp_path):
    write_cine(tmp_path / "a", n_pos=2, n_phases=1)
    write_cine(tmp_path / "b", n_pos=2, n_phases=1, study_uid="1.2.3.9")
    ids = [dicom.build_stacks(tmp_path / name)[0][0].patient for name in ("a", "a", "b")]
    assert ids[0] == ids[1] != ids[2]
    assert ids[0].startswith("dcm") and len(ids[0]) == 13 and PID not in ids[0]


def test_dicom_repeated_series_keeps_the_later_one(tmp_path):
    src = tmp_path / "src"
    write_cine(src / "s7", n_pos=3, n_phases=1)
    write_image(src / "s9" / "repeat.dcm", value=999, position=np.array([10.0, -20.0, 30.0]) + 8 * APEX,
                series_uid="1.2.3.4.9", series_number=9)
    stacks, notes, _, _ = dicom.build_stacks(src)
    assert [int(im[0, 0]) for im in stacks[0].images] == [200, 999, 0]
    assert any("kept series 9" in n for n in notes)


def test_dicom_one_series_per_position_is_one_stack(tmp_path):
    src = tmp_path / "src"
    for k in range(3):
        write_image(src / f"sax_{k}" / "a.dcm", value=k, position=k * 8 * APEX, series_uid=f"1.2.3.{k}",
                    series_number=20 + k)
    stacks, notes, study, _ = dicom.build_stacks(src)
    assert [int(im[0, 0]) for im in stacks[0].images] == [2, 1, 0] and notes == []


# -------------------------------------------------------------------------------------------- bad DICOM input

def test_missing_and_empty_src(tmp_path, capsys):
    assert run_cli("dicom", tmp_path / "nope", "--out", tmp_path / "out") == 2
    assert "nope not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert run_cli("dicom", tmp_path / "empty", "--out", tmp_path / "out") == 2
    assert "is empty" in capsys.readouterr().err


def test_folder_without_dicom(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("x")
    with pytest.raises(DataPrepError, match=r"no DICOM images found \(1 non-DICOM files\)"):
        dicom.build_stacks(tmp_path / "src")


@pytest.mark.parametrize("keep_bytes", [60, 300, 1000, 500 + 16 * 16])
def test_truncated_dicom_is_an_error_naming_the_file(tmp_path, keep_bytes):
    paths = write_cine(tmp_path / "src", n_pos=2, n_phases=2)
    bad = paths[1]
    bad.write_bytes(bad.read_bytes()[:keep_bytes])
    with pytest.raises(DataPrepError, match=f"{bad.name}: corrupt or truncated DICOM"):
        dicom.build_stacks(tmp_path / "src")


@pytest.mark.skipif(int(pydicom.__version__.split(".")[0]) < 3, reason="writes raw DICOM with the pydicom 3 API")
def test_raw_dicom_without_preamble_is_read(tmp_path):
    paths = write_cine(tmp_path / "src", n_pos=2, n_phases=1)
    ds = pydicom.dcmread(paths[0])
    del ds.file_meta
    ds.preamble = None
    pydicom.dcmwrite(paths[0], ds, implicit_vr=True, little_endian=True)
    assert paths[0].read_bytes()[128:132] != b"DICM"
    stacks, _, _, _ = dicom.build_stacks(tmp_path / "src")
    assert [int(im[0, 0]) for im in stacks[0].images] == [100, 0]


def test_dcm_file_that_is_not_dicom_is_corrupt(tmp_path):
    write_cine(tmp_path / "src", n_pos=2, n_phases=1)
    (tmp_path / "src" / "broken.dcm").write_text("garbage")
    with pytest.raises(DataPrepError, match="broken.dcm: corrupt or truncated DICOM"):
        dicom.build_stacks(tmp_path / "src")


def test_mixed_patients_in_one_series(tmp_path, capsys):
    src = tmp_path / "src"
    write_cine(src, n_pos=3, n_phases=1)
    write_image(src / "intruder.dcm", value=5, position=np.array([10.0, -20.0, 30.0]) + 24 * APEX,
                patient_id="OTHER-42")
    assert run_cli("dicom", src, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "series 7 mixes patients" in err and "intruder.dcm" in err
    assert PID not in err and "OTHER-42" not in err
    assert not (tmp_path / "out").exists()


def test_two_studies_are_refused(tmp_path):
    write_cine(tmp_path / "src" / "a", n_pos=2, n_phases=1)
    write_cine(tmp_path / "src" / "b", n_pos=2, n_phases=1, study_uid="9.9", series_uid="9.9.1")
    with pytest.raises(DataPrepError, match="more than one of the studies"):
        dicom.build_stacks(tmp_path / "src")


def test_single_position_is_not_short_axis_like(tmp_path):
    write_cine(tmp_path / "src", n_pos=1, n_phases=3)
    with pytest.raises(DataPrepError, match="not short-axis-like: all 3 images are at one slice position"):
        dicom.build_stacks(tmp_path / "src")


def test_inconsistent_orientation_in_a_series(tmp_path):
    src = tmp_path / "src"
    write_cine(src, n_pos=3, n_phases=1)
    write_image(src / "tilted.dcm", value=1, position=[0, 0, 50], normal=[0.0, 0.0, 1.0])
    with pytest.raises(DataPrepError, match="series 7 is not short-axis-like: inconsistent ImageOrientationPatient"):
        dicom.build_stacks(src)


def test_a_series_of_another_orientation_is_skipped_with_a_note(tmp_path):
    """A long-axis or localiser series beside the short-axis cine (a whole exam exported): left out, said once."""
    src = tmp_path / "src"
    write_cine(src / "sax", n_pos=3, n_phases=1)
    write_image(src / "lax" / "4ch.dcm", value=1, position=[0, 0, 50], normal=[0.0, 1.0, 0.0],
                series_uid="1.2.3.4.8", series_number=8)
    stacks, notes, _, _ = dicom.build_stacks(src)
    assert len(stacks) == 1 and len(stacks[0].images) == 3 and not any("4ch" in s for s in stacks[0].sources)
    assert [n for n in notes if "skipped" in n] == [
        f"{src}: skipped series 8 (1 image(s), 4ch.dcm...): another orientation than the short-axis stack "
        f"(series 7, 3 slice positions)"]


def test_two_stacks_of_other_orientations_are_refused(tmp_path):
    """As many slice positions in two orientations: which is the short-axis stack cannot be told."""
    src = tmp_path / "src"
    write_cine(src / "sax", n_pos=1, n_phases=1)
    write_image(src / "lax" / "4ch.dcm", value=1, position=[0, 0, 50], normal=[0.0, 1.0, 0.0],
                series_uid="1.2.3.4.8", series_number=8)
    with pytest.raises(DataPrepError, match="different slice orientations; point SRC at the short-axis series"):
        dicom.build_stacks(src)


def test_gap_in_slice_positions(tmp_path, capsys):
    src = tmp_path / "src"
    write_cine(src, n_phases=1, positions=[0.0, 8.0, 16.0, 32.0, 40.0])
    assert run_cli("dicom", src, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "gap in slice positions" in err and "IM09996.dcm" in err and "--allow-gaps" in err
    assert run_cli("dicom", src, "--out", tmp_path / "out", "--allow-gaps") == 0
    assert any("gap" in w for w in read_dataset_json(tmp_path / "out")["warnings"])


def test_same_position_and_trigger_twice(tmp_path):
    src = tmp_path / "src"
    write_cine(src, n_pos=2, n_phases=2)
    write_image(src / "dup.dcm", value=7, position=np.array([10.0, -20.0, 30.0]), trigger=40.0, instance=77)
    with pytest.raises(DataPrepError, match="same slice position and TriggerTime"):
        dicom.build_stacks(src)


def test_out_dir_holding_another_dataset(tmp_path, capsys):
    write_cine(tmp_path / "src", n_pos=2, n_phases=1)
    assert run_cli("dicom", tmp_path / "src", "--out", tmp_path / "out") == 0
    assert run_cli("dicom", tmp_path / "src", "--out", tmp_path / "out") == 2
    assert "already holds a dataset" in capsys.readouterr().err
    assert run_cli("dicom", tmp_path / "src", "--out", tmp_path / "out", "--overwrite") == 0


# ------------------------------------------------------------------------------------ sunnybrook (synthetic)

def write_contour(folder: Path, instance: int, kind: str, centre=(8.0, 8.0), r: float = 3.0) -> Path:
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    pts = np.c_[centre[0] + r * np.cos(t), centre[1] + r * np.sin(t)]
    path = folder / f"IM-0001-{instance:04d}-{kind}contour-manual.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, pts, fmt="%.2f")
    return path


def write_points(folder: Path, instance: int, kind: str, points) -> Path:
    path = folder / f"IM-0001-{instance:04d}-{kind}contour-manual.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, np.asarray(points, dtype=float), fmt="%.2f")
    return path


def rectangle(x0, y0, x1, y1):
    """A contour around columns x0..x1 and rows y0..y1 (outline included: (x1-x0+1) * (y1-y0+1) pixels)."""
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


# not square, so that swapping x (column) and y (row) shows: cavity columns 2..5, rows 3..9 (4 x 7 = 28 pixels),
# epicardium columns 1..7, rows 2..11 (7 x 10 = 70), myocardium the 70 - 28 = 42 between them
I_RECT, O_RECT = rectangle(2, 3, 5, 9), rectangle(1, 2, 7, 11)


def rect_mask(shape=(16, 16), cavity=True):
    """I_RECT and O_RECT as a mask, by hand: 2 in rows 2..11 x columns 1..7, 3 in rows 3..9 x columns 2..5."""
    want = np.zeros(shape, np.uint8)
    want[2:12, 1:8] = 2
    if cavity:
        want[3:10, 2:6] = 3
    return want


def test_contour_area_hand_computed():
    square = np.array([[2, 2], [5, 2], [5, 5], [2, 5]], dtype=float)
    assert sunnybrook.contour_area_px(square, (10, 10)) == 16  # columns and rows 2..5, outline included


def test_contour_mask_hand_computed():
    i, o = np.array(I_RECT, float), np.array(O_RECT, float)
    mask = sunnybrook.contour_mask({"i": i, "o": o}, (16, 16))
    np.testing.assert_array_equal(mask, rect_mask())
    assert (mask == 3).sum() == 28 == sunnybrook.contour_area_px(i, (16, 16)) and (mask == 2).sum() == 42
    np.testing.assert_array_equal(sunnybrook.contour_mask({"o": o}, (16, 16)), rect_mask(cavity=False))
    np.testing.assert_array_equal(sunnybrook.contour_mask({}, (16, 16)), np.zeros((16, 16), np.uint8))


def contoured_study(src: Path, epicardium: bool) -> Path:
    """5 positions x 2 phases, apex at position 0; i-contours (the rectangle, and a smaller one at phase 0, so
    that phase 1 is ED) on positions 1..3, o-contours at ED on the same positions when `epicardium`."""
    write_cine(src / "dicom", n_pos=5, n_phases=2, normal=-APEX)
    for k in (1, 2, 3):
        write_points(src / "contours", k * 2 + 1 + 1, "i", I_RECT)
        write_points(src / "contours", k * 2 + 0 + 1, "i", rectangle(3, 4, 5, 8))  # 3 x 5 = 15 pixels
        if epicardium:
            write_points(src / "contours", k * 2 + 1 + 1, "o", O_RECT)
    return src


def test_sunnybrook_masks_from_the_contours(tmp_path, capsys):
    src = contoured_study(tmp_path / "SCD0000998", epicardium=True)
    assert run_cli("sunnybrook", src, "--out", tmp_path / "out") == 0
    assert "masks (lv_myocardium, lv_cavity): ED 5 of 5; ES 0 of 5" in capsys.readouterr().out
    df = read_manifest(tmp_path / "out")
    assert mask_structures(tmp_path / "out") == ("lv_myocardium", "lv_cavity")
    ed, es = (df[df["frame"] == f].sort_values("slice") for f in ("ED", "ES"))
    assert list(ed["label"]) == ["OAP", "IN", "IN", "IN", "OBS"] and set(ed["phase"]) == {1}
    # the contoured phase says the slices it left out hold neither structure; ES has no o-contour at all, so
    # its myocardium is unknown and it gets no masks
    for k, name in enumerate(ed["mask"]):
        mask = load_mask(tmp_path / "out" / name, (16, 16))
        np.testing.assert_array_equal(mask, rect_mask() if k in (1, 2, 3) else np.zeros((16, 16), np.uint8))
    assert list(ed["lv_cavity_px"]) == [0, 28, 28, 28, 0] and list(es["lv_cavity_px"]) == [0, 15, 15, 15, 0]
    assert list(es["mask"]) == [""] * 5 and not any(p.name.startswith("SCD0000998_ES") for p in
                                                     (tmp_path / "out" / "masks").iterdir())


def test_sunnybrook_without_o_contours_masks_the_cavity_alone(tmp_path):
    study = sunnybrook.build_study(contoured_study(tmp_path / "s", epicardium=False))
    assert study.mask_structures == ("lv_cavity",)
    ed_cavity, es_cavity = np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8)
    ed_cavity[3:10, 2:6] = 3  # I_RECT: 28 pixels
    es_cavity[4:9, 3:6] = 3   # rectangle(3, 4, 5, 8): 15 pixels
    for stack, cavity, px in zip(study.stacks, (ed_cavity, es_cavity), (28, 15)):
        assert stack.extra["lv_cavity_px"] == [0, px, px, px, 0]
        for k, mask in enumerate(stack.masks):
            np.testing.assert_array_equal(mask, cavity if k in (1, 2, 3) else np.zeros_like(cavity))


def test_sunnybrook_synthetic_ed_es_and_labels(tmp_path):
    src = tmp_path / "SCD0000999"
    # 5 positions (0 = apex: normal along the apex direction puts the apex at the highest position, k = 4)
    write_cine(src / "dicom", n_pos=5, n_phases=4, normal=-APEX)
    # instance = k * 4 + phase + 1; i-contours on positions 1..3 at phase 1 (small) and phase 3 (large)
    for k in (1, 2, 3):
        write_contour(src / "contours" / "i-contours", k * 4 + 1 + 1, "i", r=2.0)
        write_contour(src / "contours" / "i-contours", k * 4 + 3 + 1, "i", r=4.0 + k * 0.5)
    write_contour(src / "contours" / "o-contours", 2 * 4 + 3 + 1, "o", r=6.0)
    assert run_cli("sunnybrook", src, "--out", tmp_path / "out", "--montage", tmp_path / "m.png") == 0
    df = read_manifest(tmp_path / "out")
    ed, es = (df[df["frame"] == f].sort_values("slice") for f in ("ED", "ES"))
    assert list(ed["label"]) == ["OAP", "IN", "IN", "IN", "OBS"] == list(es["label"])
    assert set(ed["phase"]) == {3} and set(es["phase"]) == {1}
    assert list(ed["lv_cavity_px"] > 0) == [False, True, True, True, False]
    assert stack_values(tmp_path / "out", "ED") == [3, 103, 203, 303, 403]
    # the epicardium is traced at ED position 2 only: the other cavity slices' myocardium is unknown
    assert [bool(m) for m in ed["mask"]] == [True, False, True, False, True] and set(es["mask"]) == {""}
    assert ("SCD0000999/ED: slices [1, 3] have an i-contour but no o-contour; no mask (myocardium unknown)"
            in read_dataset_json(tmp_path / "out")["warnings"])
    ev = read_dataset_json(tmp_path / "out")["options"]["study"]
    assert ev["ed_phase"] == 3 and ev["contour_check"]["agrees_with_order"]
    assert (tmp_path / "m.png").stat().st_size > 1000
    assert_no_identifying_values(tmp_path / "out")


def test_sunnybrook_contour_check_warns_when_areas_shrink_to_base(tmp_path):
    src = tmp_path / "s"
    write_cine(src / "dicom", n_pos=4, n_phases=2, normal=-APEX)
    for k, r in ((0, 2.0), (1, 3.0), (2, 4.0)):  # cavity widest at position 2
        write_contour(src / "contours", k * 2 + 1 + 1, "i", r=r + 2)   # phase 1 = ED
        write_contour(src / "contours", k * 2 + 0 + 1, "i", r=r)       # phase 0 = ES
    study = sunnybrook.build_study(src)
    # -APEX normal: apex at the lowest position (k = 0), where the contour is smallest: areas grow to the base
    assert study.evidence["contour_check"]["agrees_with_order"]
    flipped = sunnybrook.build_study(src, override="base_first")
    assert not flipped.evidence["contour_check"]["agrees_with_order"]
    assert any("does not grow from apex to base" in w for w in flipped.warnings)


def test_sunnybrook_bad_contours(tmp_path):
    src = tmp_path / "s"
    write_cine(src / "dicom", n_pos=3, n_phases=2)
    write_contour(src / "contours", 77, "i")
    with pytest.raises(DataPrepError, match="IM-0001-0077-icontour-manual.txt: no DICOM image has InstanceNumber 77"):
        sunnybrook.build_study(src)
    shutil.rmtree(src / "contours")
    (src / "contours").mkdir()
    (src / "contours" / "IM-0001-0001-icontour-manual.txt").write_text("1 2\n3\n")
    with pytest.raises(DataPrepError, match="IM-0001-0001-icontour-manual.txt: not a contour file"):
        sunnybrook.build_study(src)
    shutil.rmtree(src / "contours")
    with pytest.raises(DataPrepError, match="contour folder .* not found"):
        sunnybrook.build_study(src)
    write_contour(src / "contours", 1, "i")
    with pytest.raises(DataPrepError, match=r"lie on 1 cine phase\(s\) \[0\]; expected two"):
        sunnybrook.build_study(src)


# ----------------------------------------------------------------------------------------------- cap (units)

def test_choose_es_smooths_over_the_plateau():
    assert cap.choose_es([5, 4, 3, 1, 3, 4]) == 3
    # raw minimum at phase 2 (tie with 4); [1, 2, 1] / 4 smoothing gives 2.775, 2.05, 2.775: the plateau centre
    assert cap.choose_es([6, 5, 2.0, 2.1, 2.0, 5, 6]) == 3
    # phase 0 is ED and never ES, even when it is the smallest
    assert cap.choose_es([0, 9, 9, 3, 9, 9]) == 3  # smoothed 6.75, 7.5, 6, 7.5, 6.75 over phases 1..5


def test_otsu_splits_two_modes():
    values = np.r_[np.full(50, 10.0), np.full(50, 200.0)]
    t = cap._otsu(values)
    assert 10.0 <= t < 200.0 and (values > t).sum() == 50


def radius_cine(radii, size: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    dist = np.hypot(yy - size / 2 + 3, xx - size / 2 + 5)
    return np.array([np.where(dist < r, 400, 120) + rng.normal(0, 10, (size, size)) for r in radii]).clip(0)


def test_estimate_es_finds_the_smallest_blood_pool():
    radii = [14, 13, 11, 9, 8, 8.5, 10, 12, 13, 14]  # smallest at phase 4
    cines = [radius_cine(np.array(radii) * f, seed=i) for i, f in enumerate((0.6, 0.8, 1.0, 1.0, 0.9, 0.7))]
    es, evidence = cap.estimate_es(cines, 1.5)
    assert es == 4 and evidence["n_slices_used"] == 4 and evidence["relative_dip"] > 0.2
    assert len(evidence["curve"]) == 10


# ------------------------------------------------------------------------------------------- cap (synthetic)

def write_cap_patient(folder: Path, pid: str, radii, n_sa: int = 4, normal=APEX, spacing_mm: float = 8.0,
                      patient_id: str = PID, skip=()) -> None:
    origin = np.array([0.0, 10.0, -10.0])
    for sa in range(1, n_sa + 1):
        cine = radius_cine(np.array(radii) * (0.7 + 0.1 * sa), size=16, seed=sa)
        for ph in range(len(radii)):
            if (sa, ph) in skip:
                continue
            write_image(folder / f"{pid}_SA{sa}_ph{ph}.dcm", value=0, pixels=cine[ph],
                        position=origin + sa * spacing_mm * normal, normal=normal, trigger=30.0 * ph,
                        instance=sa * 100 + ph, patient_id=patient_id, study_uid=f"1.2.{int(pid[3:])}",
                        series_uid=f"1.2.{int(pid[3:])}.1")


RADII = [7, 6.5, 5.5, 4.5, 4, 4.2, 5, 6, 6.5, 7]  # smallest blood pool at phase 4


def test_cap_synthetic_two_patients(tmp_path):
    src = tmp_path / "cap"
    write_cap_patient(src / "a", "DET0000001", RADII)
    write_cap_patient(src / "b", "DET0000002", RADII[2:] + RADII[:2], normal=-APEX)  # smallest at phase 2
    (src / "readme.txt").write_text("x")
    assert run_cli("cap", src, "--out", tmp_path / "out") == 0
    df = read_manifest(tmp_path / "out")
    es = df[df["frame"] == "ES"].groupby("patient")["phase"].first().to_dict()
    assert es == {"DET0000001": 4, "DET0000002": 2}
    assert set(df[df["frame"] == "ED"]["phase"]) == {0}
    a = df[(df["patient"] == "DET0000001") & (df["frame"] == "ED")].sort_values("slice")
    b = df[(df["patient"] == "DET0000002") & (df["frame"] == "ED")].sort_values("slice")
    assert list(a["sa"]) == [4, 3, 2, 1] and list(b["sa"]) == [1, 2, 3, 4]  # apex furthest along (+x, -y, -z)
    assert (df["label"] == "").all()
    meta = read_dataset_json(tmp_path / "out")
    assert meta["options"]["study"]["skipped_files"] == {"files not named DETxxxxxxx_SAyy_phzz.dcm": 1}
    assert_no_identifying_values(tmp_path / "out")


def test_cap_es_override_and_apex_override(tmp_path):
    write_cap_patient(tmp_path / "cap", "DET0000001", RADII)
    stacks, _, _ = cap.build_stacks(tmp_path / "cap", es_phase=6, override="apex_first")
    assert stacks[1].extra["phase"] == [6] * 4 and stacks[0].extra["sa"] == [1, 2, 3, 4]
    with pytest.raises(DataPrepError, match="--es-phase 0: must be a phase after ED"):
        cap.build_stacks(tmp_path / "cap", es_phase=0)
    with pytest.raises(DataPrepError, match="--es-phase 12: no ph12 file for SA"):
        cap.build_stacks(tmp_path / "cap", es_phase=12)


def write_labels(path: Path, rows) -> Path:
    pd.DataFrame(rows, columns=["patient", "frame", "slice", "label"]).to_csv(path, index=False)
    return path


def full_labels(pid="DET0000001", es_frame="ES"):
    # SA4 is the apex (normal along the apex direction, SA4 furthest along it)
    per_sa = {4: "OAP", 3: "IN", 2: "IN", 1: "OBS"}
    return [(pid, f, sa, lab) for f in ("ED", es_frame) for sa, lab in per_sa.items()]


def test_cap_labels_csv(tmp_path):
    write_cap_patient(tmp_path / "cap", "DET0000001", RADII)
    csv = write_labels(tmp_path / "labels.csv", full_labels(es_frame="4"))  # ES given by its phase number
    assert run_cli("cap", tmp_path / "cap", "--labels", csv, "--out", tmp_path / "out") == 0
    df = read_manifest(tmp_path / "out")
    for frame in ("ED", "ES"):
        assert list(df[df["frame"] == frame].sort_values("slice")["label"]) == ["OAP", "IN", "IN", "OBS"]


@pytest.mark.parametrize("bad_row,message", [
    (("DET0000001", "ED", 9, "IN"), "line 10: slice SA9 is not in DET0000001/ED"),
    (("DET0000001", "ED", 2, "MID"), "line 10: unknown label 'MID'"),
    (("DET0000077", "ED", 2, "IN"), "line 10: patient 'DET0000077' is not in SRC"),
    (("DET0000001", "7", 2, "IN"), "line 10: frame '7' is neither ED, ES nor the ED/ES phase"),
    (("DET0000001", "ED", 2, "IN"), "line 10: DET0000001/ED SA2 is already labelled on line 4"),
])
def test_cap_labels_csv_errors_name_the_row(tmp_path, bad_row, message):
    write_cap_patient(tmp_path / "cap", "DET0000001", RADII)
    csv = write_labels(tmp_path / "labels.csv", full_labels() + [bad_row])
    with pytest.raises(DataPrepError, match=message):
        cap.build_stacks(tmp_path / "cap", labels_csv=csv)


def test_cap_labels_incomplete_stack_and_missing_columns(tmp_path):
    write_cap_patient(tmp_path / "cap", "DET0000001", RADII)
    csv = write_labels(tmp_path / "labels.csv", full_labels()[:-1])
    with pytest.raises(DataPrepError, match=r"DET0000001/ES lacks labels for SA \[1\]"):
        cap.build_stacks(tmp_path / "cap", labels_csv=csv)
    csv.write_text("patient,slice,label\nDET0000001,1,IN\n")
    with pytest.raises(DataPrepError, match="missing column\\(s\\) frame"):
        cap.build_stacks(tmp_path / "cap", labels_csv=csv)
    stacks, notes, _ = cap.build_stacks(tmp_path / "cap",
                                        labels_csv=write_labels(tmp_path / "ed.csv", full_labels()[:4]))
    assert stacks[0].labels == ["OAP", "IN", "IN", "OBS"] and stacks[1].labels == [""] * 4
    assert any("DET0000001/ES: no rows" in n for n in notes)


def test_cap_bad_input(tmp_path):
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "x.dcm").write_text("x")
    with pytest.raises(DataPrepError, match="no CAP-named DICOM files"):
        cap.build_stacks(tmp_path / "none")
    src = tmp_path / "mixed"
    write_cap_patient(src, "DET0000001", RADII[:3])
    write_image(src / "DET0000001_SA5_ph0.dcm", value=0, position=5 * 8.0 * APEX, patient_id="OTHER",
                study_uid="1.2.1", series_uid="1.2.1.1")
    with pytest.raises(DataPrepError, match="mixes patients: .*DET0000001_SA5_ph0.dcm"):
        cap.build_stacks(src)
    src = tmp_path / "gap"
    write_cap_patient(src, "DET0000001", RADII[:3], n_sa=6)
    for ph in range(3):
        (src / f"DET0000001_SA3_ph{ph}.dcm").unlink()
    with pytest.raises(DataPrepError, match="gap in slice positions between DET0000001_SA2_ph0.dcm and "
                                            "DET0000001_SA4_ph0.dcm"):
        cap.build_stacks(src)
    src = tmp_path / "trunc"
    write_cap_patient(src, "DET0000001", RADII[:3])
    bad = src / "DET0000001_SA2_ph1.dcm"
    bad.write_bytes(bad.read_bytes()[:700])
    with pytest.raises(DataPrepError, match="DET0000001_SA2_ph1.dcm: corrupt or truncated"):
        cap.build_stacks(src)
    src = tmp_path / "noed"
    write_cap_patient(src, "DET0000001", RADII[:3], skip={(2, 0)})
    with pytest.raises(DataPrepError, match="SA2 has no ph0"):
        cap.build_stacks(src)


# --------------------------------------------------------------------------------------------------- real data

@pytest.fixture(scope="module")
def sunnybrook_src(shared_data):
    src = shared_data / "sunnybrook" / "SCD0000101"
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    return src


@pytest.mark.realdata
def test_real_sunnybrook(sunnybrook_src, tmp_path):
    out = tmp_path / "sb"
    assert run_cli("sunnybrook", sunnybrook_src, "--out", out, "--montage", tmp_path / "m.png") == 0
    df = read_manifest(out)
    meta = read_dataset_json(out)
    study = meta["options"]["study"]
    assert (study["ed_phase"], study["es_phase"]) == (18, 7)
    assert study["contour_check"]["agrees_with_order"]
    contoured = {int(p.name.split("-")[2]) for p in (sunnybrook_src / "contours").rglob("*icontour*")}
    for frame in ("ED", "ES"):
        stack = df[df["frame"] == frame].sort_values("slice")
        assert len(stack) == 12
        # IN exactly where the expert drew an i-contour (instance = file name of the source)
        has = [int(Path(s).stem) in contoured for s in stack["source"]]
        assert has == list(stack["lv_cavity_px"] > 0)
        assert list(stack["label"]) == ["OAP"] + ["IN"] * 9 + ["OBS"] * 2
        # slice 0 is apical: the lowest position along a normal pointing away from the apex (cos < 0)
        assert stack["position_mm"].iloc[0] == pytest.approx(-148.9, abs=0.1)
    ed = df[df["frame"] == "ED"].sort_values("slice")
    assert ed["lv_cavity_px"].iloc[1] < ed["lv_cavity_px"].iloc[5]  # the cavity widens away from the apex
    assert meta["orientation"][0]["cos_normal_apex"] < -0.9
    assert (tmp_path / "m.png").stat().st_size > 10000


@pytest.mark.realdata
@pytest.mark.parametrize("study", ["SCD0000101", "SCD0000301", "SCD0000401"])
def test_real_sunnybrook_masks_are_the_contours(shared_data, tmp_path, study):
    """ED (the phase with o-contours) has a mask on every slice whose cavity is lv_cavity_px exactly and whose
    myocardium is the o-contour's fill outside the i-contour's; ES (no o-contours) has none."""
    src = shared_data / "sunnybrook" / study
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    out = tmp_path / "sb"
    assert run_cli("sunnybrook", src, "--out", out) == 0
    df = read_manifest(out)
    assert mask_structures(out) == ("lv_myocardium", "lv_cavity")
    assert set(df[df["frame"] == "ES"]["mask"]) == {""}
    contours = src / "contours"
    for row in df[df["frame"] == "ED"].itertuples():
        mask = load_mask(out / row.mask, (256, 256))
        instance = int(Path(row.source).stem)
        inner = contours / "i-contours" / f"IM-0001-{instance:04d}-icontour-manual.txt"
        assert (mask == 3).sum() == row.lv_cavity_px == (
            sunnybrook.contour_area_px(np.loadtxt(inner), (256, 256)) if inner.exists() else 0)
        outer = contours / "o-contours" / f"IM-0001-{instance:04d}-ocontour-manual.txt"
        assert outer.exists() == inner.exists() == (row.label == "IN")
        if outer.exists():
            fills = []
            for path in (inner, outer):
                fill = np.zeros((256, 256), np.uint8)
                sunnybrook.fill_contour(fill, np.loadtxt(path), 1)
                fills.append(fill.astype(bool))
            # the expert's i-contour may cross the o-contour by a pixel: the cavity wins there
            np.testing.assert_array_equal(mask == 2, fills[1] & ~fills[0])
            assert (mask == 2).sum() > 0.2 * (mask == 3).sum()
        else:
            assert not mask.any()


@pytest.mark.realdata
def test_real_sunnybrook_as_unlabelled_dicom(sunnybrook_src, tmp_path):
    stacks, notes, study, scan = dicom.build_stacks(sunnybrook_src / "dicom")
    assert (len(study.positions), study.n_phases, len(scan.images)) == (12, 20, 240)
    assert notes == [] and study.incomplete == []
    assert [len(s.images) for s in stacks] == [12] * 20
    assert stacks[0].sources[0] == "221.dcm" and stacks[0].sources[-1] == "1.dcm"


@pytest.mark.realdata
def test_real_rvsc_incomplete_positions_reported(shared_data, tmp_path):
    src = shared_data / "dicom_sax_examples" / "rvsc_patient09" / "dicom"
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    out = tmp_path / "rvsc"
    assert run_cli("dicom", src, "--out", out) == 0
    meta = read_dataset_json(out)
    inc = meta["options"]["study"]["incomplete_positions"]
    assert [(i["files"], i["phases"]) for i in inc] == [(["P09-0022.dcm", "P09-0023.dcm"], [0, 7]),
                                                        (["P09-0020.dcm", "P09-0021.dcm"], [0, 1])]
    assert sum("incomplete position" in w for w in meta["warnings"]) == 2
    df = read_manifest(out)
    assert len(df) == 24 and df["frame"].nunique() == 20
    assert list(df[df["frame"] == "0"].sort_values("slice")["source"]) == ["P09-0022.dcm", "P09-0020.dcm",
                                                                            "P09-0000.dcm"]
    with pydicom.dcmread(src / "P09-0000.dcm") as ds:
        identifying = [str(ds.PatientName), str(ds.PatientID)]
    assert identifying[0] == "59^CR"
    assert_no_identifying_values(out, identifying)


@pytest.fixture(scope="module")
def cap_copy(sunnybrook_src, tmp_path_factory):
    """The Sunnybrook study rewritten with pydicom under CAP names (SA = acquisition position + 1)."""
    folder = tmp_path_factory.mktemp("cap") / "DET0000101"
    folder.mkdir()
    for path in (sunnybrook_src / "dicom").glob("*.dcm"):
        k, phase = divmod(int(path.stem) - 1, 20)
        ds = pydicom.dcmread(path)
        ds.save_as(folder / f"DET0000101_SA{k + 1:02d}_ph{phase:02d}.dcm")
    return folder


@pytest.mark.realdata
def test_real_cap_named_copy(cap_copy, sunnybrook_src, tmp_path):
    stacks, notes, skipped = cap.build_stacks(cap_copy.parent)
    ed, es = stacks
    assert ed.extra["sa"] == list(range(12, 0, -1))  # acquired base first; SA12 is the apex
    assert es.extra["phase"][0] in (7, 8)  # the expert's ES is phase 7; the plateau is flat around it
    assert ed.orientation["es"]["relative_dip"] > 0.1
    # labels from the Sunnybrook contours, given by SA number, ES by its phase number
    ref = sunnybrook.build_study(sunnybrook_src).stacks[0]
    rows = [("DET0000101", frame, sa, lab) for frame in ("ED", str(es.extra["phase"][0]))
            for sa, lab in zip(ed.extra["sa"], ref.labels)]
    csv = write_labels(tmp_path / "labels.csv", rows)
    assert run_cli("cap", cap_copy.parent, "--labels", csv, "--out", tmp_path / "out") == 0
    df = read_manifest(tmp_path / "out")
    assert list(df[df["frame"] == "ED"].sort_values("slice")["label"]) == ["OAP"] + ["IN"] * 9 + ["OBS"] * 2
    assert run_cli("cap", cap_copy.parent, "--es-phase", "7", "--out", tmp_path / "out7") == 0
    assert set(read_manifest(tmp_path / "out7").query("frame == 'ES'")["phase"]) == {7}
