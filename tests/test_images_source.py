"""`python -m data_prep images`: folder-per-class and CSV image sets, built from the synthetic phantom."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from dicom_factory import write_dicom

from data_prep import images, synthetic
from data_prep.__main__ import main
from data_prep.errors import DataPrepError
from data_prep.manifest import (dataset_classes, load_image, load_mask, mask_structures, read_dataset_json,
                                read_manifest)

REGEX = r"^(syn\d+)_"


def run_cli(*argv) -> int:
    return main([str(a) for a in argv])


def position_class(label: str, k: int, n_in: int) -> str:
    """OAP/OBS -> outside; the stack's IN slices in thirds (apex side first) -> apical, mid, basal."""
    if label != "IN":
        return "outside"
    return ("apical", "mid", "basal")[min(2, 3 * k // n_in)]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> pd.DataFrame:
    """The synthetic manifest (6 patients, ED+ES) with each slice's IN rank and absolute image path."""
    root = synthetic.generate(tmp_path_factory.mktemp("phantom") / "syn", patients=6, seed=1)
    df = read_manifest(root)
    df["file"] = [root / p for p in df["image"]]
    df["in_rank"] = df.groupby(["patient", "frame"])["label"].transform(lambda s: (s == "IN").cumsum() - 1)
    df["n_in"] = df.groupby(["patient", "frame"])["label"].transform(lambda s: int((s == "IN").sum()))
    df["pos4"] = [position_class(r.label, r.in_rank, r.n_in) for r in df.itertuples()]
    return df


def write_tree(phantom: pd.DataFrame, src: Path, classify) -> Path:
    """SRC/<class>/<patient>_<frame>_<slice>.png from the phantom, class = classify(row)."""
    for r in phantom.itertuples():
        path = src / classify(r) / f"{r.patient}_{r.frame}_{r.slice}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(r.file, path)
    return src


@pytest.fixture(scope="module")
def tree4(phantom, tmp_path_factory) -> Path:
    return write_tree(phantom, tmp_path_factory.mktemp("tree") / "pos4", lambda r: r.pos4)


def test_position_class_thirds():
    assert [position_class("IN", k, 6) for k in range(6)] == ["apical"] * 2 + ["mid"] * 2 + ["basal"] * 2
    assert [position_class("IN", k, 7) for k in range(7)] == ["apical"] * 3 + ["mid"] * 2 + ["basal"] * 2
    assert position_class("OAP", 0, 5) == position_class("OBS", 0, 5) == "outside"


def test_folder_tree_four_classes(phantom, tree4, tmp_path):
    assert run_cli("images", tree4, "--out", tmp_path / "ds", "--patient-regex", REGEX) == 0
    out = tmp_path / "ds"
    df = read_manifest(out)
    assert dataset_classes(out) == ("apical", "basal", "mid", "outside")  # folder names, sorted
    assert len(df) == len(phantom)
    assert sorted(df["patient"].unique()) == [f"syn{k:03d}" for k in range(6)]
    assert (df["slice"] == 0).all() and (df["n_slices"] == 1).all()
    assert not df.duplicated(["patient", "frame"]).any()
    # frame: a running index over each patient's images in path order
    for _, g in df.groupby("patient"):
        assert sorted(g["frame"].astype(int)) == list(range(len(g)))
    truth = {f"{r.pos4}/{r.patient}_{r.frame}_{r.slice}.png": r for r in phantom.itertuples()}
    assert set(df["source"]) == set(truth)
    for row in df.itertuples():
        src = truth[row.source]
        assert row.label == src.pos4 and row.patient == src.patient and row.dataset == "pos4"
    for row in df.sample(8, random_state=0).itertuples():  # lossless: the 16-bit pixels survive unchanged
        np.testing.assert_array_equal(load_image(out / row.image), load_image(truth[row.source].file))
    meta = read_dataset_json(out)
    assert meta["counts"]["label"] == phantom["pos4"].value_counts().sort_index().to_dict()
    assert meta["options"]["patient_regex"] == REGEX and meta["warnings"] == []


def test_classes_option_fixes_the_order(tree4, tmp_path):
    images.build(tree4, tmp_path / "ds", patient_regex=REGEX, classes="outside, apical,mid,basal")
    assert dataset_classes(tmp_path / "ds") == ("outside", "apical", "mid", "basal")


@pytest.mark.parametrize("classify, expected", [
    (lambda r: "inside" if r.label == "IN" else "outside", ("inside", "outside")),
    (lambda r: r.pos4 if r.label == "IN" else r.label, ("OAP", "OBS", "apical", "basal", "mid")),
])
@pytest.mark.slow
def test_class_list_comes_from_the_data(phantom, tmp_path, classify, expected):
    """2 and 5 classes: the manifest, the engine's Dataset and the benchmark's summary all use the folders' classes."""
    from benchmark.data import Dataset
    src = write_tree(phantom, tmp_path / "src", classify)
    images.build(src, tmp_path / "ds", patient_regex=REGEX)
    df = read_manifest(tmp_path / "ds")
    assert dataset_classes(tmp_path / "ds") == expected
    assert df["label"].value_counts().to_dict() == phantom.apply(classify, axis=1).value_counts().to_dict()
    assert Dataset.load(tmp_path / "ds").classes == expected
    summary = benchmark_run(tmp_path / "ds", tmp_path / "results")
    assert sorted(c for c in summary.columns if c.startswith("f1_")) == sorted(f"f1_{c.lower()}" for c in expected)
    assert_no_stack_metrics(summary.columns)


def test_named_patient_group_and_patient_folders(phantom, tmp_path):
    src = tmp_path / "src"
    for r in phantom[phantom["patient"].isin(["syn000", "syn001"])].itertuples():
        path = src / r.pos4 / f"P-{r.patient}" / f"{r.frame}{r.slice}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(r.file, path)
    images.build(src, tmp_path / "ds", patient_regex=r"^(P)-(?P<patient>[^/]+)/")
    assert sorted(read_manifest(tmp_path / "ds")["patient"].unique()) == ["syn000", "syn001"]


def test_csv_stacks_with_extra_columns(phantom, tmp_path):
    """frame + slice columns make ordered stacks; extra columns reach the manifest verbatim."""
    shuffled = phantom.sample(frac=1.0, random_state=2)  # row order must not matter within a stack
    csv = pd.DataFrame({
        "path": [str(p) for p in shuffled["file"]],  # absolute paths
        "patient": shuffled["patient"], "label": shuffled["label"],
        "frame": shuffled["frame"], "slice": shuffled["slice"],
        "lv_cavity_px": shuffled["lv_cavity_px"],
        "split": np.where(shuffled["patient"] == "syn005", "test", "train"),
        "pixel_spacing_mm": shuffled["pixel_spacing_mm"],
    })
    csv.to_csv(tmp_path / "labels.csv", index=False)
    images.build(tmp_path / "labels.csv", tmp_path / "ds")
    df = read_manifest(tmp_path / "ds").sort_values(["patient", "frame", "slice"]).reset_index(drop=True)
    ref = phantom.sort_values(["patient", "frame", "slice"]).reset_index(drop=True)
    for col in ("patient", "frame", "slice", "n_slices", "label", "lv_cavity_px"):
        assert df[col].tolist() == ref[col].tolist(), col
    np.testing.assert_allclose(df["pixel_spacing_mm"], ref["pixel_spacing_mm"])
    assert set(df.loc[df["patient"] == "syn005", "split"]) == {"test"}
    assert set(df.loc[df["patient"] != "syn005", "split"]) == {"train"}
    assert list(dataset_classes(tmp_path / "ds")) == list(dict.fromkeys(shuffled["label"]))  # first appearance
    for row in df.sample(5, random_state=1).itertuples():
        orig = ref[(ref.patient == row.patient) & (ref.frame == row.frame) & (ref.slice == row.slice)].iloc[0]
        np.testing.assert_array_equal(load_image(tmp_path / "ds" / row.image), load_image(orig.file))


def test_csv_single_images_get_unique_frames_and_keep_targets(phantom, tmp_path):
    """Relative paths, no frame/slice: one stack per image, frame = running index per patient (row order)."""
    sub = phantom.head(6)
    for r in sub.itertuples():
        shutil.copyfile(r.file, tmp_path / f"{r.patient}_{r.slice}.png")
    csv = tmp_path / "set.csv"
    rows = [f"{r.patient}_{r.slice}.png, {'A' if i % 2 else 'B'}, {'p1' if i < 4 else 'p2'}, {i * 1.25}"
            for i, r in enumerate(sub.itertuples())]
    csv.write_text("path, label, patient, volume_ml,\n" + ",\n".join(rows) + ",\n")
    images.build(csv, tmp_path / "out" / "ds")
    df = read_manifest(tmp_path / "out" / "ds")
    assert df["patient"].tolist() == ["p1"] * 4 + ["p2"] * 2
    assert df["frame"].tolist() == ["0", "1", "2", "3", "0", "1"]
    assert df["volume_ml"].tolist() == [0.0, 1.25, 2.5, 3.75, 5.0, 6.25]
    assert "Unnamed: 4" not in df.columns  # the trailing commas' empty column
    assert dataset_classes(tmp_path / "out" / "ds") == ("B", "A")
    assert (df["dataset"] == tmp_path.name).all()


def test_mixed_formats_sizes_and_depths(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    u8 = rng.integers(0, 256, (10, 12), dtype=np.uint8)
    u16 = rng.integers(0, 65536, (20, 16), dtype=np.uint16)
    grey_rgb = np.repeat(u8[..., None], 3, axis=2)
    colour = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    f32 = rng.normal(size=(7, 9)).astype(np.float32)
    dcm = rng.integers(0, 4096, (6, 5)).astype(np.uint16)
    cv2.imwrite(str(src / "a" / "p1_u8.png"), u8)
    cv2.imwrite(str(src / "a" / "p1_u16.png"), u16)
    cv2.imwrite(str(src / "a" / "p2_rgb.png"), grey_rgb)
    cv2.imwrite(str(src / "b" / "p2_colour.png"), colour)
    np.save(src / "b" / "p3_f32.npy", f32)
    np.save(src / "b" / "p3_chan.npy", u8[..., None])
    write_dicom(src / "b" / "p4_x.dcm", dcm, PatientName="Doe^Jane", PatientID="MRN-778899", PixelSpacing=[0.8, 0.8])
    (src / ".DS_Store").write_bytes(b"\0")  # hidden files are ignored
    out = images.build(src, tmp_path / "ds", patient_regex=r"^(p\d)_")
    df = read_manifest(out).set_index("source")
    expect = {"a/p1_u8.png": u8, "a/p1_u16.png": u16, "a/p2_rgb.png": u8, "b/p3_f32.npy": f32,
              "b/p3_chan.npy": u8, "b/p4_x.dcm": dcm}
    for name, arr in expect.items():
        got = load_image(out / df.loc[name, "image"])
        # the contract stores every unsigned image as 16-bit PNG: the values survive, uint8 comes back as uint16
        assert got.dtype == (np.uint16 if arr.dtype.kind == "u" else arr.dtype) and got.shape == arr.shape, name
        np.testing.assert_array_equal(got, arr)
    luma = cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(load_image(out / df.loc["b/p2_colour.png", "image"]), luma)
    assert float(df.loc["b/p4_x.dcm", "pixel_spacing_mm"]) == pytest.approx(0.8)
    assert df.loc["a/p1_u8.png", "pixel_spacing_mm"] == ""
    warnings = read_dataset_json(out)["warnings"]
    assert len(warnings) == 1 and warnings[0].startswith("1 colour image(s) converted to grey")
    for path in out.rglob("*"):  # DICOM identifying values never reach the output
        if path.is_file():
            assert b"Doe^Jane" not in path.read_bytes() and b"MRN-778899" not in path.read_bytes()
    # the benchmark takes the mixture as it is: every row becomes one input of the network's size
    from benchmark.data import Dataset
    from benchmark.preprocess import Preprocessing
    ds = Dataset.load(out)
    x = np.stack([ds.make_input(i, Preprocessing(32, "tf")) for i in range(len(ds.rows))])
    assert x.shape == (len(df), 32, 32, 3) and np.isfinite(x).all()


@pytest.fixture()
def small_tree(phantom, tmp_path) -> Path:
    sub = phantom[phantom["patient"].isin(["syn000", "syn001", "syn002"]) & (phantom["frame"] == "ED")]
    return write_tree(sub, tmp_path / "small", lambda r: "inside" if r.label == "IN" else "outside")


def test_unreadable_files_are_skipped_with_a_count(small_tree, tmp_path, capsys):
    """The policy --help states: skipped, counted on stderr and in dataset.json, the import succeeds."""
    bad = sorted((small_tree / "inside").iterdir())[:2]
    good = bad[0].read_bytes()
    bad[0].write_bytes(good[:len(good) // 2])  # a truncated PNG
    bad[1].write_bytes(b"")
    n = sum(1 for _ in small_tree.rglob("*.png"))
    capsys.readouterr()
    assert run_cli("images", small_tree, "--out", tmp_path / "ds", "--patient-regex", REGEX) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert len(warning) == 1 and warning[0].startswith("data_prep images: warning: skipped 2 unreadable image file(s)")
    out = tmp_path / "ds"
    meta = read_dataset_json(out)
    assert meta["counts"]["n_slices"] == n - 2 and meta["options"]["n_skipped"] == 2
    assert len(meta["warnings"]) == 1 and meta["warnings"][0].startswith("skipped 2 unreadable image file(s)")
    assert bad[0].name in meta["warnings"][0]


def test_help_states_the_unreadable_file_policy(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["images", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Unreadable image files (corrupt, truncated, not 2-D, colour DICOM) are skipped and counted" in text
    assert "The import fails when nothing readable remains, or when a class loses all its images" in text


def test_a_stack_with_an_unreadable_slice_is_skipped_whole(phantom, tmp_path):
    sub = phantom[phantom["patient"].isin(["syn000", "syn001"])]
    csv = pd.DataFrame({"path": [str(p) for p in sub["file"]], "patient": sub["patient"], "label": sub["label"],
                        "frame": sub["frame"], "slice": sub["slice"]})
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    csv.loc[csv.index[3], "path"] = str(broken)  # syn000 ED slice 3
    csv.to_csv(tmp_path / "set.csv", index=False)
    out = images.build(tmp_path / "set.csv", tmp_path / "ds")
    df = read_manifest(out)
    assert set(zip(df.patient, df.frame)) == {("syn000", "ES"), ("syn001", "ED"), ("syn001", "ES")}
    n_dropped = int(((sub.patient == "syn000") & (sub.frame == "ED")).sum()) - 1
    assert f"skipped 1 unreadable image file(s), and {n_dropped} readable slice(s)" in \
        read_dataset_json(out)["warnings"][0]


def test_nothing_readable_or_a_class_unreadable_fails(small_tree, tmp_path):
    for p in (small_tree / "outside").iterdir():
        p.write_bytes(b"")
    with pytest.raises(DataPrepError, match="class 'outside': none of its images could be read"):
        images.build(small_tree, tmp_path / "ds", patient_regex=REGEX)
    for p in (small_tree / "inside").iterdir():
        p.write_bytes(b"")
    with pytest.raises(DataPrepError, match="none of the .* image files could be read"):
        images.build(small_tree, tmp_path / "ds", patient_regex=REGEX)
    assert not (tmp_path / "ds").exists()


def test_no_groups_is_loud(small_tree, tmp_path, capsys):
    assert run_cli("images", small_tree, "--out", tmp_path / "ds", "--no-groups") == 0
    err = capsys.readouterr().err
    assert "WARNING: --no-groups" in err and "NOT be patient-grouped" in err
    df = read_manifest(tmp_path / "ds")
    assert df["patient"].is_unique and df["patient"].iloc[0] == "img00000"
    assert any("NOT be patient-grouped" in w for w in read_dataset_json(tmp_path / "ds")["warnings"])


def test_overwrite(small_tree, tmp_path, capsys):
    assert run_cli("images", small_tree, "--out", tmp_path / "ds", "--patient-regex", REGEX) == 0
    assert run_cli("images", small_tree, "--out", tmp_path / "ds", "--patient-regex", REGEX) == 2
    assert "already holds a dataset" in capsys.readouterr().err
    assert run_cli("images", small_tree, "--out", tmp_path / "ds", "--patient-regex", REGEX, "--overwrite") == 0


# ----------------------------------------------------------------------------------------------- bad input

def csv_file(tmp_path: Path, text: str, touch=("a.png", "b.png", "c.png")) -> Path:
    for name in touch:
        cv2.imwrite(str(tmp_path / name), np.zeros((4, 4), np.uint8))
    (tmp_path / "set.csv").write_text(text)
    return tmp_path / "set.csv"


CSV_OK = "path,patient,label\na.png,p1,X\nb.png,p2,Y\n"


@pytest.mark.parametrize("text, kwargs, message", [
    ("path,patient\na.png,p1\n", {}, r"missing column\(s\) label"),
    ("path,label\na.png,X\nb.png,Y\n", {}, r"missing column\(s\) patient \(or give --patient-regex"),
    ("path,patient,label\n", {}, "no rows"),
    ("path,patient,label\na.gif,p1,X\nb.png,p2,Y\n", {}, r"row 2 \(a.gif\): unknown image extension '.gif'"),
    ("path,patient,label\nmissing.png,p1,X\nb.png,p2,Y\n", {}, "row 2: image file not found: .*missing.png"),
    ("path,patient,label\na.png,p1,X\nb.png,p2,X\n", {}, "only one class"),
    ("path,patient,label\na.png,p1,X\n./a.png,p2,Y\n", {}, "row 3: ./a.png is the same file as row 2"),
    ("path,patient,label\na.png,p1,X\nb.png,p 2,Y\n", {}, "row 3: patient 'p 2' is not usable"),
    ("path,patient,label\na.png,p1,X\nb.png,p2,\n", {}, "row 3: empty label"),
    ("path,patient,label\na.png,p1,in\nb.png,p2,IN\n", {}, "differ only in letter case"),
    ("path,patient,label,source\na.png,p1,X,s\nb.png,p2,Y,s\n", {}, "source are reserved"),
    ("path,patient,label,slice\na.png,p1,X,0\nb.png,p2,Y,0\n", {}, "has a slice column but not the other"),
    ("path,patient,label,frame,slice\na.png,p1,X,f,0\nb.png,p1,Y,f,2\n", {},
     "patient p1 frame f: .*slice 1 is missing"),
    ("path,patient,label,frame,slice\na.png,p1,X,f,0\nb.png,p1,Y,f,0\n", {}, "slice 0 appears twice"),
    ("path,patient,label,frame,slice\na.png,p1,X,f,zero\nb.png,p2,Y,f,0\n", {}, "slice 'zero' is not a whole"),
    ("path,patient,label,split\na.png,p1,X,test\nb.png,p1,Y,train\n", {}, "patient p1 has several split"),
    ("path,patient,label\na.png,p1,X\nb.png,p2,Y\n", {"patient_regex": "(a)"}, "has a patient column"),
    ("path,label\na.png,X\nb.png,Y\nc.png,Y\n", {"patient_regex": r"^(a|b)\."}, r"does not match 'c.png'"),
    ("path,label,frame,slice\na.png,X,f,0\nb.png,Y,g,0\n", {"no_groups": True}, "cannot be combined with frame"),
    (CSV_OK, {"classes": "X,Z"}, "--classes names 'Z', which has no images"),
    (CSV_OK, {"classes": "X"}, "--classes does not list 'Y'"),
    (CSV_OK, {"classes": "X,,Y"}, "empty class name"),
    (CSV_OK, {"patient_regex": "(a", "no_groups": False}, "not a valid regular expression"),
])
def test_bad_csv(tmp_path, text, kwargs, message):
    with pytest.raises(DataPrepError, match=message):
        images.build(csv_file(tmp_path, text), tmp_path / "ds", **kwargs)
    assert not (tmp_path / "ds").exists()


def test_patients_a_and_a_b_frames_cannot_collide(tmp_path):
    csv = csv_file(tmp_path, "path,patient,label,frame,slice\na.png,p_1,X,f,0\nb.png,p,Y,1_f,0\n")
    with pytest.raises(DataPrepError, match="collide in the image name p_1_f_sNN"):
        images.build(csv, tmp_path / "ds")


def test_bad_folder_trees(small_tree, tmp_path):
    with pytest.raises(DataPrepError, match="SRC .*nowhere not found"):
        images.build(tmp_path / "nowhere", tmp_path / "ds", patient_regex=REGEX)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataPrepError, match="no image files found"):
        images.build(tmp_path / "empty", tmp_path / "ds", patient_regex=REGEX)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataPrepError, match="expected a folder with one folder per class, or a .csv"):
        images.build(tmp_path / "notes.txt", tmp_path / "ds", patient_regex=REGEX)
    with pytest.raises(DataPrepError, match="patients cannot be determined .* --patient-regex .* --no-groups"):
        images.build(small_tree, tmp_path / "ds")
    with pytest.raises(DataPrepError, match="needs a capture group"):
        images.build(small_tree, tmp_path / "ds", patient_regex=r"syn\d+")
    odd = small_tree / "inside" / "patient7_ED_0.png"
    shutil.copyfile(next((small_tree / "inside").iterdir()), odd)
    with pytest.raises(DataPrepError, match=re.escape("does not match 'patient7_ED_0.png'")):
        images.build(small_tree, tmp_path / "ds", patient_regex=REGEX)
    odd.unlink()
    with pytest.raises(DataPrepError, match="ds lies inside the source .*; write the dataset elsewhere"):
        images.build(small_tree, small_tree / "ds", patient_regex=REGEX, overwrite=True)
    with pytest.raises(DataPrepError, match="contains the source .*; write the dataset elsewhere"):
        images.build(small_tree, small_tree.parent, patient_regex=REGEX, overwrite=True)
    (small_tree / "inside" / "readme.txt").write_text("x")
    with pytest.raises(DataPrepError, match="readme.txt: unknown image extension '.txt'"):
        images.build(small_tree, tmp_path / "ds", patient_regex=REGEX)
    (small_tree / "inside" / "readme.txt").unlink()
    (small_tree / "labels.csv").write_text("x")
    with pytest.raises(DataPrepError, match="labels.csv: file outside a class folder"):
        images.build(small_tree, tmp_path / "ds", patient_regex=REGEX)
    (small_tree / "labels.csv").unlink()
    assert not (tmp_path / "ds").exists()


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert run_cli("images", tmp_path / "nowhere", "--out", tmp_path / "ds", "--no-groups") == 2
    assert "data_prep images: error: SRC" in capsys.readouterr().err


def test_regex_named_group_wins_over_first_group():
    assert images.patient_from_regex(re.compile(r"^(\w)_(?P<patient>\d+)"), "x_42_ED.png") == "42"
    assert images.patient_from_regex(re.compile(r"(\d+)_(\w+)"), "a/12_ED.png") == "12"
    with pytest.raises(DataPrepError, match="the patient group is empty"):
        images.patient_from_regex(re.compile(r"^(\d*)x"), "x.png")


def test_dataset_json_is_valid_json(small_tree, tmp_path):
    out = images.build(small_tree, tmp_path / "ds", patient_regex=REGEX, dataset="mine")
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["dataset"] == "mine" and meta["options"]["layout"] == "folders"
    assert (read_manifest(out)["dataset"] == "mine").all()


# ----------------------------------------------------------------------------------------------- masks

def hand_mask(shape=(6, 8)):
    """Myocardium along row 0 (8 pixels), cavity in rows 2..3 x columns 3..5 (6 pixels), the rest background."""
    mask = np.zeros(shape, np.uint8)
    mask[0, :] = 2
    mask[2:4, 3:6] = 3
    return mask


def masked_tree(tmp_path: Path) -> tuple[Path, Path]:
    """SRC/A/p1_0.png, SRC/A/p1_1.dcm, SRC/B/p2_0.png, SRC/B/p2_1.npy (6 x 8 each) and masks for p1_0 (hand_mask)
    and p2_1 (cavity only, 4 pixels, upper-case extension) at their paths below SRC; p1_1 and p2_0 have none."""
    src, masks = tmp_path / "src", tmp_path / "masks"
    for folder in (src / "A", src / "B", masks / "A", masks / "B"):
        folder.mkdir(parents=True)
    img = np.arange(48, dtype=np.uint16).reshape(6, 8)
    cv2.imwrite(str(src / "A" / "p1_0.png"), img)
    write_dicom(src / "A" / "p1_1.dcm", img + 1)
    cv2.imwrite(str(src / "B" / "p2_0.png"), img + 2)
    np.save(src / "B" / "p2_1.npy", (img + 3).astype(np.float32))
    cv2.imwrite(str(masks / "A" / "p1_0.png"), hand_mask())
    cavity = np.zeros((6, 8), np.uint8)
    cavity[5, 4:] = 3
    cv2.imwrite(str(masks / "B" / "p2_1.PNG"), cavity)
    return src, masks


def test_masks_folder_beside_a_folder_tree(tmp_path, capsys):
    src, masks = masked_tree(tmp_path)
    cv2.imwrite(str(masks / "A" / "p9_0.png"), hand_mask())  # no image p9_0: warned
    assert run_cli("images", src, "--out", tmp_path / "ds", "--patient-regex", r"^(p\d)_", "--masks", masks) == 0
    out = tmp_path / "ds"
    df = read_manifest(out).set_index("source")
    assert df.loc["A/p1_1.dcm", "mask"] == df.loc["B/p2_0.png", "mask"] == ""
    got = load_mask(out / df.loc["A/p1_0.png", "mask"], (6, 8))
    np.testing.assert_array_equal(got, hand_mask())
    assert (got == 2).sum() == 8 and (got == 3).sum() == 6 and (got == 1).sum() == 0
    got = load_mask(out / df.loc["B/p2_1.npy", "mask"], (6, 8))
    assert (got == 3).sum() == 4 and got[5, 4:].tolist() == [3] * 4 and (got != 3).sum() == 44
    # the codes found say which structures are labelled: no RV here
    assert mask_structures(out) == ("lv_myocardium", "lv_cavity")
    meta = read_dataset_json(out)
    assert meta["options"]["masks"] == str(masks) and meta["options"]["mask_structures"] is None
    assert meta["warnings"] == ["--masks: 1 mask file(s) match no image: A/p9_0.png"]
    assert "1 mask file(s) match no image" in capsys.readouterr().err
    # given, the structures are kept as given (in MASK_CODES order), RV included though no mask holds it
    images.build(src, tmp_path / "ds3", patient_regex=r"^(p\d)_", masks=masks,
                 mask_structures="lv_cavity,rv_cavity,lv_myocardium")
    assert mask_structures(tmp_path / "ds3") == ("rv_cavity", "lv_myocardium", "lv_cavity")


def test_without_masks_there_is_no_mask_column(tmp_path):
    src, _ = masked_tree(tmp_path)
    out = images.build(src, tmp_path / "ds", patient_regex=r"^(p\d)_")
    assert "mask" not in read_manifest(out).columns and not (out / "masks").exists()
    assert mask_structures(out) == () and "masks" not in read_dataset_json(out)["options"]


def test_masks_from_a_csv_column_or_a_masks_folder(tmp_path):
    src, masks = masked_tree(tmp_path)
    csv = tmp_path / "set.csv"
    csv.write_text("path,patient,label,mask\n"
                   "src/A/p1_0.png,p1,A,masks/A/p1_0.png\n"
                   f"src/B/p2_1.npy,p2,B,{masks / 'B' / 'p2_1.PNG'}\n"  # absolute
                   "src/B/p2_0.png,p2,B,\n")
    df = read_manifest(images.build(csv, tmp_path / "ds")).set_index("source")
    np.testing.assert_array_equal(load_mask(tmp_path / "ds" / df.loc["src/A/p1_0.png", "mask"]), hand_mask())
    assert (load_mask(tmp_path / "ds" / df.loc["src/B/p2_1.npy", "mask"]) == 3).sum() == 4
    assert df.loc["src/B/p2_0.png", "mask"] == ""
    assert read_dataset_json(tmp_path / "ds")["options"]["masks"] == "mask column"
    # the same masks by --masks: the CSV's relative paths below the masks folder (masks/src/...)
    shutil.copytree(masks, tmp_path / "m2" / "src")
    csv.write_text("path,patient,label\nsrc/A/p1_0.png,p1,A\nsrc/B/p2_1.npy,p2,B\nsrc/B/p2_0.png,p2,B\n")
    df2 = read_manifest(images.build(csv, tmp_path / "ds2", masks=tmp_path / "m2")).set_index("source")
    for name in ("src/A/p1_0.png", "src/B/p2_1.npy"):
        np.testing.assert_array_equal(load_mask(tmp_path / "ds2" / df2.loc[name, "mask"]),
                                      load_mask(tmp_path / "ds" / df.loc[name, "mask"]))
    assert df2.loc["src/B/p2_0.png", "mask"] == ""


def _bad_shape(masks):
    cv2.imwrite(str(masks / "A" / "p1_0.png"), np.zeros((6, 9), np.uint8))
    return {}, r"p1_0.png: mask of uint8 \(6, 9\) for an image of \(6, 8\).*\(the mask of A/p1_0.png\)"


def _bad_depth(masks):
    cv2.imwrite(str(masks / "A" / "p1_0.png"), hand_mask().astype(np.uint16))
    return {}, r"p1_0.png: mask of uint16"


def _bad_code(masks):
    mask = hand_mask()
    mask[5, 0] = 4
    cv2.imwrite(str(masks / "A" / "p1_0.png"), mask)
    return {}, r"p1_0.png: mask codes \[4\] outside"


def _bad_colour(masks):
    cv2.imwrite(str(masks / "A" / "p1_0.png"), np.dstack([hand_mask()] * 3))
    return {}, r"p1_0.png: expected a 2-D mask"


def _bad_truncated(masks):
    path = masks / "A" / "p1_0.png"
    path.write_bytes(path.read_bytes()[:20])
    return {}, r"unreadable or truncated mask file .*p1_0.png"


def _structure_left_out(masks):
    return {"mask_structures": "lv_cavity"}, (r"p1_0.png: mask codes \[2\] label structures that --mask-structures "
                                              r"lv_cavity leaves out")


def _unknown_structure(masks):
    return {"mask_structures": "lv_cavity,aorta"}, r"'aorta' is not one of rv_cavity, lv_myocardium, lv_cavity"


def _all_empty(masks):
    for path in masks.rglob("*.*"):
        cv2.imwrite(str(path), np.zeros((6, 8), np.uint8))
    return {}, r"every mask is empty .* give --mask-structures"


def _no_match(masks):
    for path in masks.rglob("*.*"):
        path.rename(path.with_name("x" + path.name))
    return {}, r"--masks .*: no mask file matches an image \(the mask of A/p1_0.png would be .*A/p1_0.png\)"


def _two_matches(masks):
    cv2.imwrite(str(masks / "A" / "p1_0.PNG"), hand_mask())
    if len(list((masks / "A").iterdir())) == 1:
        pytest.skip("a case-insensitive file system holds one of p1_0.png and p1_0.PNG")
    return {}, r"p1_0.PNG and p1_0.png are both the mask of A/p1_0.png|p1_0.png and p1_0.PNG are both"


@pytest.mark.parametrize("breaker", [_bad_shape, _bad_depth, _bad_code, _bad_colour, _bad_truncated,
                                     _structure_left_out, _unknown_structure, _all_empty, _no_match, _two_matches],
                         ids=lambda f: f.__name__.removeprefix("_"))
def test_bad_masks_are_refused_naming_the_file(tmp_path, breaker):
    src, masks = masked_tree(tmp_path)
    kwargs, message = breaker(masks)
    with pytest.raises(DataPrepError, match=message):
        images.build(src, tmp_path / "ds", patient_regex=r"^(p\d)_", masks=masks, **kwargs)
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("text, kwargs, message", [
    ("path,patient,label,mask\na.png,p1,X,m.jpg\nb.png,p2,Y,\n", {}, r"row 2: mask m.jpg: expected a .png file"),
    ("path,patient,label,mask\na.png,p1,X,m.png\nb.png,p2,Y,\n", {}, r"row 2: mask file not found: .*m.png"),
    ("path,patient,label,mask\na.png,p1,X,c.png\nb.png,p2,Y,\n", {"masks": "."}, "has a mask column; drop --masks"),
    (CSV_OK, {"mask_structures": "lv_cavity"}, "--mask-structures lv_cavity: .* has no masks"),
    (CSV_OK, {"masks": "nowhere"}, "--masks nowhere: not a folder"),
])
def test_bad_mask_options_in_a_csv(tmp_path, text, kwargs, message):
    with pytest.raises(DataPrepError, match=message):
        images.build(csv_file(tmp_path, text), tmp_path / "ds", **kwargs)
    assert not (tmp_path / "ds").exists()


def benchmark_run(data: Path, out: Path) -> pd.DataFrame:
    """`python -m benchmark` shrunk to seconds (MobileNet at depth 0, random weights, one epoch, two folds; CBR-Tiny
    would take minutes here); returns summary.csv."""
    from benchmark.__main__ import main as benchmark_main
    assert benchmark_main(["--backbone", "mobilenet", "--depth", "0", "--data", str(data), "--epochs", "1", "--folds",
                           "2", "--test-fraction", "0.3", "--weights", "none", "--out", str(out)]) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert (summary["status"] == "done").all()
    return summary


def assert_no_stack_metrics(columns) -> None:
    """Single-image stacks have no slice order: soft accuracy and the range metrics are left out, not zero."""
    stacky = [c for c in columns if c.startswith(("soft_", "range_", "boundary_", "n_stacks", "monotone"))]
    assert not stacky, stacky


@pytest.mark.slow
def test_benchmark_and_report_run_on_a_four_class_image_set(tree4, tmp_path, capsys):
    """Folder tree -> `data_prep images` -> `python -m benchmark` -> `benchmark.report` (model figures included),
    with the class list taken from the data throughout."""
    from benchmark import report
    classes = ("apical", "basal", "mid", "outside")
    assert run_cli("images", tree4, "--out", tmp_path / "ds", "--patient-regex", REGEX) == 0
    out = tmp_path / "results"
    summary = benchmark_run(tmp_path / "ds", out)
    assert list(summary["run"]) == ["mobilenet_d0"]
    assert {f"f1_{c}" for c in classes} | {f"support_{c}" for c in classes} <= set(summary.columns)
    assert not summary[[f"f1_{c}" for c in classes]].isna().any().any()
    assert_no_stack_metrics(summary.columns)
    run = out / "mobilenet_d0"
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert np.array(metrics["confusion"]).shape == (4, 4)
    assert_no_stack_metrics(metrics)
    assert json.loads((run / "config.json").read_text())["classes"] == list(classes)
    predictions = pd.read_csv(run / "test_predictions.csv")
    assert set(predictions["prediction"]) <= set(classes) and "monotone" not in predictions

    capsys.readouterr()
    assert report.main([str(out), "--out", str(tmp_path / "report"), "--n-boot", "20", "--smooth-samples", "2",
                        "--jobs", "1"]) == 0, capsys.readouterr().err
    table2 = pd.read_csv(tmp_path / "report" / "table2_test.csv")
    assert {f"f1_{c}" for c in classes} <= set(table2.columns)
    assert_no_stack_metrics(table2.columns)
    for figure in ("fig3_curves", "fig4_confusion", "fig5_tsne", "fig6_gradcam"):
        assert (tmp_path / "report" / f"{figure}.png").is_file(), figure
