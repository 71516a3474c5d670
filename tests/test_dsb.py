"""data_prep.dsb on small hand-written PNG folders (order, repeated locations, orientation, labels, masks, every
refusal) and on the real Kaggle DSB overlay folder when present."""
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from data_prep.__main__ import main
from data_prep.dsb import OVERLAY_THRESHOLD, SUBFOLDER
from data_prep.manifest import MASK_CODES, load_image, load_mask, read_dataset_json, read_manifest

H, W = 20, 16  # not square, so a transposed mask cannot go unnoticed
# cavity pixels apex -> base: an empty slice beyond the apex, cavity growing to the base, an empty one beyond it
AREAS_APEX_TO_BASE = [0, 12, 40, 90, 0]
LABELS_APEX_TO_BASE = ["OAP", "IN", "IN", "IN", "OBS"]
LOCATIONS = [9900, 9910, 9920, 9930, 9940]


def name(patient, frame, location, series, instance=1, part=None, overlay=False):
    tail = f"-{part:04d}" if part is not None else ""
    return (f"{patient}_00000sax_{frame}_{location:05d}_IM-{series:04d}-{instance:04d}{tail}"
            f"{'_o' if overlay else ''}.png")


def overlay_of(area, shape=(H, W)):
    """area pixels at 255 in raster order and, where there is any, one anti-aliased edge pixel just below the
    threshold (not cavity); an empty overlay gets a faint pixel too, so it must not count as cavity."""
    ov = np.zeros(shape, dtype=np.uint8)
    ov.flat[:area] = 255
    ov.flat[area] = OVERLAY_THRESHOLD - 1
    return ov


def image_of(seed, shape=(H, W)):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def write_slice(folder, patient, frame, location, series, area, seed, **kw):
    folder.mkdir(parents=True, exist_ok=True)
    img = image_of(seed)
    cv2.imwrite(str(folder / name(patient, frame, location, series, **kw)), img)
    cv2.imwrite(str(folder / name(patient, frame, location, series, overlay=True, **kw)), overlay_of(area))
    return img


def write_patient(folder, patient, apex_at_lowest, frames=("01", "12"), series=100):
    """A patient whose stacks hold AREAS_APEX_TO_BASE at LOCATIONS, the apex at the lowest or highest code.
    Returns {frame: images apex -> base}."""
    areas = AREAS_APEX_TO_BASE if apex_at_lowest else AREAS_APEX_TO_BASE[::-1]
    out = {}
    for f, frame in enumerate(frames):
        images = [write_slice(folder, patient, frame, loc, series, area, seed=1000 * int(patient) + 10 * int(frame) + k)
                  for k, (loc, area) in enumerate(zip(LOCATIONS, areas))]
        out[frame] = images if apex_at_lowest else images[::-1]
    return out


def run_cli(*argv):
    return main(["dsb", *map(str, argv)])


def stack_rows(df, patient, frame):
    return df[(df.patient == patient) & (df.frame == frame)].sort_values("slice")


def orientation(meta, patient, frame):
    return next(o for o in meta["orientation"] if o["patient"] == patient and o["frame"] == frame)


# --- hand-made folders ---------------------------------------------------------------------------------------

def test_orders_by_location_and_finds_the_apex_per_patient(tmp_path, capsys):
    src = tmp_path / "src"
    low = write_patient(src, "0001", apex_at_lowest=True)
    high = write_patient(src, "0002", apex_at_lowest=False)
    assert run_cli(src, "--out", tmp_path / "out") == 0
    assert ("2 patients, 4 stacks, 20 slices: OAP 4, IN 12, OBS 4; 8 empty overlay(s); 0 repeated location(s), "
            "0 earlier image(s) dropped; 0 patient(s) with ambiguous") in capsys.readouterr().out
    df = read_manifest(tmp_path / "out")
    meta = read_dataset_json(tmp_path / "out")
    for patient, images, locations, first in (("0001", low, LOCATIONS, True),
                                              ("0002", high, LOCATIONS[::-1], False)):
        for frame in ("01", "12"):
            rows = stack_rows(df, patient, frame)
            assert rows.label.tolist() == LABELS_APEX_TO_BASE
            assert rows.lv_cavity_px.tolist() == AREAS_APEX_TO_BASE
            assert rows.location_code.tolist() == locations
            assert rows.source.tolist() == [name(patient, frame, loc, 100) for loc in locations]
            for k, image in enumerate(rows.image):
                np.testing.assert_array_equal(load_image(tmp_path / "out" / image), images[frame][k])
            evidence = orientation(meta, patient, frame)
            assert evidence["apex_first"] is first and evidence["own_apex_first"] is first
            assert evidence["ambiguous"] is False and evidence["decided_by_frames"] == ["01", "12"]
    assert (pd.to_numeric(df.pixel_spacing_mm) == 1.0).all() and set(df.dataset) == {"dsb"}
    assert meta["warnings"] == []


def test_masks_are_the_thresholded_overlays(tmp_path):
    src = tmp_path / "src"
    write_patient(src, "0001", apex_at_lowest=False)
    assert run_cli(src, "--out", tmp_path / "out") == 0
    df = read_manifest(tmp_path / "out")
    assert read_dataset_json(tmp_path / "out")["mask_structures"] == ["lv_cavity"]
    for row in df.itertuples():
        overlay = cv2.imread(str(src / row.source.replace(".png", "_o.png")), cv2.IMREAD_UNCHANGED)
        mask = load_mask(tmp_path / "out" / row.mask, (H, W))
        np.testing.assert_array_equal(mask, np.where(overlay >= OVERLAY_THRESHOLD, MASK_CODES["lv_cavity"], 0))
        assert int((mask > 0).sum()) == row.lv_cavity_px


def test_repeated_location_keeps_the_highest_series(tmp_path, capsys):
    src = tmp_path / "src"
    write_patient(src, "0001", apex_at_lowest=True, series=9)
    # series 12 re-acquired the base slice of frame 01, with a cavity; 9 < 12 although "9" > "12" as text
    later = write_slice(src, "0001", "01", LOCATIONS[-1], 12, area=30, seed=7)
    assert run_cli(src, "--out", tmp_path / "out") == 0
    out = capsys.readouterr()
    assert "1 repeated location(s), 1 earlier image(s) dropped" in out.out
    kept = name("0001", "01", LOCATIONS[-1], 12)
    warning = f"patient 0001 frame 01: location {LOCATIONS[-1]} imaged in series 9, 12; kept {kept}"
    assert warning in out.err
    df = read_manifest(tmp_path / "out")
    rows = stack_rows(df, "0001", "01")
    assert len(rows) == 5 and rows.source.iloc[-1] == kept
    assert rows.label.tolist() == ["OAP", "IN", "IN", "IN", "IN"]  # the later image has a cavity
    np.testing.assert_array_equal(load_image(tmp_path / "out" / rows.image.iloc[-1]), later)
    meta = read_dataset_json(tmp_path / "out")
    assert any(w.startswith(warning) for w in meta["warnings"])
    assert orientation(meta, "0001", "01")["repeated_locations"] == [
        {"location": LOCATIONS[-1], "series": [9, 12], "kept": kept,
         "dropped": [name("0001", "01", LOCATIONS[-1], 9)]}]
    assert orientation(meta, "0001", "12")["repeated_locations"] == []


def test_few_slice_frames_follow_their_patients_orientation(tmp_path):
    src = tmp_path / "src"
    write_patient(src, "0001", apex_at_lowest=False)
    # frame 05 has two slices whose own cavity trend points the other way (larger cavity at the higher code)
    write_slice(src, "0001", "05", LOCATIONS[1], 100, area=20, seed=1)
    write_slice(src, "0001", "05", LOCATIONS[2], 100, area=60, seed=2)
    assert run_cli(src, "--out", tmp_path / "out") == 0
    rows = stack_rows(read_manifest(tmp_path / "out"), "0001", "05")
    assert rows.location_code.tolist() == [LOCATIONS[2], LOCATIONS[1]]
    evidence = orientation(read_dataset_json(tmp_path / "out"), "0001", "05")
    assert evidence["own_apex_first"] is True and evidence["apex_first"] is False
    assert evidence["ambiguous"] is False


def test_disagreeing_or_weak_frames_are_warned(tmp_path, capsys):
    src = tmp_path / "src"
    for k, (loc, area) in enumerate(zip(LOCATIONS, AREAS_APEX_TO_BASE)):
        write_slice(src, "0001", "01", loc, 100, area, seed=k)
        write_slice(src, "0001", "12", loc, 100, AREAS_APEX_TO_BASE[::-1][k], seed=10 + k)
    for k, loc in enumerate(LOCATIONS):  # flat cavity: no trend at all
        write_slice(src, "0002", "01", loc, 100, 50, seed=20 + k)
    assert run_cli(src, "--out", tmp_path / "out") == 0
    err = capsys.readouterr().err
    assert "patient 0001: the cavity trends of the longest stacks disagree or are weak" in err
    assert "patient 0002: the cavity trends of the longest stacks disagree or are weak (frame 01 +0.00)" in err
    meta = read_dataset_json(tmp_path / "out")
    assert all(o["ambiguous"] for o in meta["orientation"])


def test_codes_much_closer_than_the_step_are_warned(tmp_path, capsys):
    src = tmp_path / "src"
    write_patient(src, "0001", apex_at_lowest=True)
    write_slice(src, "0001", "01", LOCATIONS[2] + 1, 100, area=41, seed=3)
    assert run_cli(src, "--out", tmp_path / "out") == 0
    assert (f"patient 0001: locations {LOCATIONS[2]} and {LOCATIONS[2] + 1} are much closer than the usual step"
            in capsys.readouterr().err)
    assert len(stack_rows(read_manifest(tmp_path / "out"), "0001", "01")) == 6


def test_multi_frame_names_are_read_and_an_unresolvable_repeat_refused(tmp_path, capsys):
    src = tmp_path / "src"
    for k, (loc, area) in enumerate(zip(LOCATIONS, AREAS_APEX_TO_BASE)):
        write_slice(src, "0001", "01", loc, 100, area, seed=k, instance=1, part=k + 1)
    assert run_cli(src, "--out", tmp_path / "out") == 0
    rows = stack_rows(read_manifest(tmp_path / "out"), "0001", "01")
    assert rows.source.tolist() == [name("0001", "01", loc, 100, part=k + 1) for k, loc in enumerate(LOCATIONS)]
    assert rows.label.tolist() == LABELS_APEX_TO_BASE
    write_slice(src, "0001", "01", LOCATIONS[0], 100, 0, seed=9, instance=1, part=9)
    assert run_cli(src, "--out", tmp_path / "out2") == 2
    err = capsys.readouterr().err
    assert (f"{name('0001', '01', LOCATIONS[0], 100, part=1)}, {name('0001', '01', LOCATIONS[0], 100, part=9)}: "
            f"two images of series 100 at location {LOCATIONS[0]}") in err
    assert not (tmp_path / "out2").exists()


def test_reads_the_folder_holding_the_trainset(tmp_path):
    write_patient(tmp_path / "kaggle_ndsb2" / SUBFOLDER, "0001", apex_at_lowest=True)
    (tmp_path / "kaggle_ndsb2" / "SOURCE.md").write_text("not a slice\n")
    assert run_cli(tmp_path / "kaggle_ndsb2", "--out", tmp_path / "out") == 0
    assert len(read_manifest(tmp_path / "out")) == 10


def test_help_explains_the_source(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["dsb", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in ("PPPP_00000sax_FF_LLLLL_IM-SSSS-NNNN", "_o.png", "highest series", "IN = overlay >= 128",
                  "pixel spacing 1 mm", "stops the import with an error naming the file"):
        assert words in text


def _truncate(path):
    path.write_bytes(path.read_bytes()[:40])


def _resize(path):
    cv2.imwrite(str(path), np.zeros((H + 1, W), np.uint8))


def _image(frame, location):
    return name("0001", frame, location, 100)


def _overlay(frame, location):
    return name("0001", frame, location, 100, overlay=True)


def _colour(path):
    cv2.imwrite(str(path), np.zeros((H, W, 3), np.uint8))


BREAKERS = {
    "image without overlay": (lambda src: (src / _overlay("01", 9920)).unlink(),
                              f"{_image('01', 9920)}: its overlay {_overlay('01', 9920)} is missing"),
    "overlay without image": (lambda src: (src / _image("12", 9930)).unlink(),
                              f"{_overlay('12', 9930)}: an overlay without its image"),
    "overlay of another size": (lambda src: _resize(src / _overlay("01", 9910)),
                                f"{_overlay('01', 9910)}: overlay of 16x21 px for an image of 16x20 px"),
    "truncated image": (lambda src: _truncate(src / _image("12", 9900)),
                        f"{_image('12', 9900)}: unreadable or truncated PNG (image)"),
    "empty overlay file": (lambda src: (src / _overlay("01", 9940)).write_bytes(b""),
                           f"{_overlay('01', 9940)}: unreadable or truncated PNG (overlay)"),
    "colour image": (lambda src: _colour(src / _image("01", 9900)),
                     f"{_image('01', 9900)}: expected a greyscale image, got shape (20, 16, 3)"),
    "name that does not parse": (lambda src: _colour(src / "0001_sax_01.png"),
                                 "0001_sax_01.png: not a DSB slice name (PPPP_00000sax_FF_LLLLL_IM-SSSS-NNNN"),
}


@pytest.mark.parametrize("breaker", BREAKERS)
def test_bad_input_exits_2_naming_the_file(tmp_path, capsys, breaker):
    src = tmp_path / "src"
    write_patient(src, "0001", apex_at_lowest=True)
    breaks, message = BREAKERS[breaker]
    breaks(src)
    assert run_cli(src, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("data_prep dsb: error: ") and message in err, err
    assert str(tmp_path) not in err  # files are named as in SRC, not by this machine's paths
    assert not (tmp_path / "out").exists()


def test_a_folder_without_slice_files_is_refused(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("no slices here\n")
    assert run_cli(tmp_path / "src", "--out", tmp_path / "out") == 2
    assert "holds no DSB slice files (PPPP_00000sax_FF_LLLLL_IM-SSSS-NNNN" in capsys.readouterr().err
    assert run_cli(tmp_path / "missing", "--out", tmp_path / "out") == 2
    assert f"SRC {tmp_path / 'missing'} not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_stack_without_any_cavity_is_refused(tmp_path, capsys):
    src = tmp_path / "src"
    write_patient(src, "0001", apex_at_lowest=True)
    write_slice(src, "0001", "29", LOCATIONS[0], 100, area=0, seed=5)
    assert run_cli(src, "--out", tmp_path / "out") == 2
    assert "patient 0001 frame 29: no slice contains LV cavity" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- real data ------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.realdata
def test_real_folder_counts_match_source_md(shared_data, tmp_path, capsys):
    """SOURCE.md counts files: 2,282 slices of which 371 empty overlays. Repeated locations are resolved to the
    later series, so the dataset holds 2,282 - 64 slices and 18 of the empty overlays are among those dropped;
    the 175 stacks with an empty slice at an end are the same either way."""
    src = shared_data / "kaggle_ndsb2"
    if not src.is_dir():
        pytest.skip(f"real DSB folder {src} not found")
    files = [p for p in (src / SUBFOLDER).iterdir() if p.suffix == ".png" and not p.stem.endswith("_o")]
    empty_files = sum(not (cv2.imread(str(p.with_name(p.stem + "_o.png")), cv2.IMREAD_UNCHANGED)
                           >= OVERLAY_THRESHOLD).any() for p in files)
    assert (len(files), empty_files) == (2282, 371)

    assert run_cli(src, "--out", tmp_path / "out") == 0
    df = read_manifest(tmp_path / "out")
    meta = read_dataset_json(tmp_path / "out")
    repeats = [r for o in meta["orientation"] for r in o["repeated_locations"]]
    dropped = [n for r in repeats for n in r["dropped"]]
    assert (df.patient.nunique(), df.groupby(["patient", "frame"]).ngroups) == (100, 254)
    assert (len(repeats), len(dropped)) == (54, 64)
    assert len(df) == 2282 - len(dropped) == 2218
    dropped_empty = sum(not (cv2.imread(str(src / SUBFOLDER / n.replace(".png", "_o.png")), cv2.IMREAD_UNCHANGED)
                             >= OVERLAY_THRESHOLD).any() for n in dropped)
    assert (df.lv_cavity_px == 0).sum() == 371 - dropped_empty == 353
    ends = df.sort_values("slice").groupby(["patient", "frame"]).lv_cavity_px
    assert ends.agg(lambda px: px.iloc[0] == 0 or px.iloc[-1] == 0).sum() == 175
    assert df.label.value_counts().to_dict() == {"IN": 1866, "OBS": 217, "OAP": 135}
    assert meta["counts"]["n_slices"] == 2218 and meta["mask_structures"] == ["lv_cavity"]
    # one decision per patient: every frame of a patient runs the same way along the location codes
    assert all(len(g) == 1 for g in pd.DataFrame(meta["orientation"]).groupby("patient").apex_first.unique())
    assert "54 repeated location(s), 64 earlier image(s) dropped" in capsys.readouterr().out
    json.dumps(meta)
