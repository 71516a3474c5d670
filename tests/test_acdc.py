"""data_prep.acdc on hand-built stacks in both ACDC layouts, every bad input, and the real data when present."""
import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import label_volumes

from data_prep import synthetic
from data_prep.__main__ import main
from data_prep.acdc import read_acdc
from data_prep.manifest import load_image, load_mask, mask_structures, read_dataset_json, read_manifest

REPO = Path(__file__).resolve().parents[1]

# One hand-built stack, apex -> base: a myocardial cap, three cavity slices growing with the RV, then a slice
# beyond the base holding only RV. Cell values are LV-cavity, myocardium and RV pixel counts.
AREAS_APEX_TO_BASE = [(0, 6, 0), (4, 10, 0), (9, 14, 6), (16, 18, 12), (0, 0, 20)]
LABELS_APEX_TO_BASE = ["OAP", "IN", "IN", "IN", "OBS"]
CAVITY_APEX_TO_BASE = [0, 4, 9, 16, 0]
H, W = 12, 10  # not square, so a wrong transpose cannot go unnoticed


def mask_from_areas(areas):
    return label_volumes.mask_from_areas(areas, (H, W))


def stack_apex_to_base():
    """(image float32, mask uint8), each (slice, H, W), slices apex -> base; slice k's image is k + a ramp."""
    ramp = np.arange(H * W, dtype=np.float32).reshape(H, W) / 1000
    image = np.stack([np.full((H, W), k, dtype=np.float32) + ramp for k in range(len(AREAS_APEX_TO_BASE))])
    return image, mask_from_areas(AREAS_APEX_TO_BASE)


def in_file_order(apex_first):
    image, mask = stack_apex_to_base()
    return (image, mask) if apex_first else (image[::-1].copy(), mask[::-1].copy())


def write_nifti(path, volume, spacing=(1.5, 1.5)):
    """A (slice, H, W) volume as NIfTI (x, y, slice), the official ACDC axis order."""
    affine = np.diag([spacing[0], spacing[1], 10.0, 1.0])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(volume.transpose(2, 1, 0)), affine), str(path))


def nifti_patient(root, patient="patient001", ed=3, es=7, ed_apex_first=True, es_apex_first=False,
                  spacing=(1.5, 1.5), image_dtype=np.float32):
    folder = root / patient
    folder.mkdir(parents=True)
    (folder / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: NOR\nHeight: 180.0\nNbFrame: 30\nWeight: 75.0\n")
    for frame, first in ((ed, ed_apex_first), (es, es_apex_first)):
        image, mask = in_file_order(first)
        write_nifti(folder / f"{patient}_frame{frame:02d}.nii.gz", (image * 100).astype(image_dtype), spacing)
        write_nifti(folder / f"{patient}_frame{frame:02d}_gt.nii.gz", mask, spacing)
    return folder


def h5_whole(data_dir, name, image, mask):
    data_dir.mkdir(parents=True, exist_ok=True)
    with h5py.File(data_dir / f"{name}.h5", "w") as fh:
        fh.create_dataset("image", data=image, compression="gzip")
        fh.create_dataset("label", data=mask, compression="gzip")


def h5_slices(data_dir, name, image, mask):
    data_dir.mkdir(parents=True, exist_ok=True)
    for k in range(len(image)):
        with h5py.File(data_dir / f"{name}_slice_{k + 1}.h5", "w") as fh:
            fh.create_dataset("image", data=image[k])
            fh.create_dataset("label", data=mask[k])


def hdf5_tree(root):
    """patient001 as whole stacks (ED apex-last in the file, ES apex-first), patient002 as slice files."""
    data = root / "data"
    h5_whole(data, "patient001_frame01", *in_file_order(apex_first=False))
    h5_whole(data, "patient001_frame02", *in_file_order(apex_first=True))
    h5_slices(data, "patient002_frame01", *in_file_order(apex_first=True))
    h5_slices(data, "patient002_frame02", *in_file_order(apex_first=False))
    return root


def run_cli(*argv):
    return main(["acdc", *map(str, argv)])


def stack_rows(df, patient, frame):
    return df[(df.patient == patient) & (df.frame == frame)].sort_values("slice")


def assert_masks_are_the_source_labels(out, rows):
    """Each written mask is the hand-built label slice of its image (apex -> base, whatever the file order): its
    LV cavity, myocardium and RV pixel counts are AREAS_APEX_TO_BASE[k], laid out as mask_from_areas lays them."""
    want = mask_from_areas(AREAS_APEX_TO_BASE)
    assert rows["mask"].tolist() == [f"masks/{Path(name).stem}.png" for name in rows.image]
    for k, name in enumerate(rows["mask"]):
        mask = load_mask(out / name, (H, W))
        np.testing.assert_array_equal(mask, want[k])
        assert tuple(np.bincount(mask.ravel(), minlength=4)[[3, 2, 1]]) == AREAS_APEX_TO_BASE[k]
        assert rows.lv_cavity_px.iat[k] == int((mask == 3).sum())


# --- hand-built stacks ---------------------------------------------------------------------------------------

def test_hdf5_layout_orders_labels_and_counts_cavity(tmp_path, capsys):
    src = hdf5_tree(tmp_path / "acdc")
    assert run_cli(src, "--out", tmp_path / "out") == 0
    assert "4 stacks, 20 slices: OAP 4, IN 12, OBS 4; 0 stack(s) with ambiguous" in capsys.readouterr().out
    df = read_manifest(tmp_path / "out")
    image, _ = stack_apex_to_base()
    for patient, frame, sources in [
        ("patient001", "ED", [f"patient001_frame01.h5[{k}]" for k in (4, 3, 2, 1, 0)]),
        ("patient001", "ES", [f"patient001_frame02.h5[{k}]" for k in range(5)]),
        ("patient002", "ED", [f"patient002_frame01_slice_{k}.h5" for k in (1, 2, 3, 4, 5)]),
        ("patient002", "ES", [f"patient002_frame02_slice_{k}.h5" for k in (5, 4, 3, 2, 1)]),
    ]:
        rows = stack_rows(df, patient, frame)
        assert rows.label.tolist() == LABELS_APEX_TO_BASE
        assert rows.lv_cavity_px.tolist() == CAVITY_APEX_TO_BASE
        assert rows.source.tolist() == sources
        assert rows.n_slices.tolist() == [5] * 5
        for k, name in enumerate(rows.image):
            np.testing.assert_array_equal(load_image(tmp_path / "out" / name), image[k])
        assert_masks_are_the_source_labels(tmp_path / "out", rows)
    assert set(df.dataset) == {"acdc"} and (df.pixel_spacing_mm.astype(str) == "").all()
    assert "split" not in df.columns
    meta = read_dataset_json(tmp_path / "out")
    assert meta["options"] == {"layout": "hdf5"}
    # each stack is oriented on its own, so the hand-built frames in opposite file orders are reported
    assert [w.split(":")[0] for w in meta["warnings"]] == ["patient001", "patient002"]
    assert all("ED and ES share slice positions but were oriented differently" in w for w in meta["warnings"])
    assert {(o["patient"], o["frame"], o["apex_first"]) for o in meta["orientation"]} == {
        ("patient001", "ED", False), ("patient001", "ES", True), ("patient002", "ED", True),
        ("patient002", "ES", False)}


def test_nifti_layout_reads_frames_from_info_cfg(tmp_path):
    nifti_patient(tmp_path / "training", ed=3, es=7, image_dtype=np.int16)
    assert run_cli(tmp_path / "training", "--out", tmp_path / "out") == 0
    df = read_manifest(tmp_path / "out")
    image, _ = stack_apex_to_base()
    ed, es = stack_rows(df, "patient001", "ED"), stack_rows(df, "patient001", "ES")
    assert ed.source.tolist() == [f"patient001/patient001_frame03.nii.gz[{k}]" for k in range(5)]
    assert es.source.tolist() == [f"patient001/patient001_frame07.nii.gz[{k}]" for k in (4, 3, 2, 1, 0)]
    for rows in (ed, es):
        assert rows.label.tolist() == LABELS_APEX_TO_BASE
        assert rows.lv_cavity_px.tolist() == CAVITY_APEX_TO_BASE
        assert rows.pixel_spacing_mm.tolist() == [1.5] * 5
        for k, name in enumerate(rows.image):
            assert name.endswith(".png")  # int16 >= 0 stays integer, losslessly
            np.testing.assert_array_equal(load_image(tmp_path / "out" / name), (image[k] * 100).astype(np.int16))
        assert_masks_are_the_source_labels(tmp_path / "out", rows)
    assert mask_structures(tmp_path / "out") == ("rv_cavity", "lv_myocardium", "lv_cavity")


@pytest.mark.parametrize("where", ["patient", "training", "parent"])
def test_nifti_src_may_be_one_patient_training_or_its_parent(tmp_path, where):
    folder = nifti_patient(tmp_path / "acdc_nifti" / "training")
    src = {"patient": folder, "training": folder.parent, "parent": folder.parent.parent}[where]
    layout, _, stacks, _ = read_acdc(src)
    assert layout == "nifti" and [(s.patient, s.frame) for s in stacks] == [("patient001", "ED"),
                                                                           ("patient001", "ES")]


def test_hdf5_src_may_be_the_data_folder_itself(tmp_path):
    hdf5_tree(tmp_path)
    layout, root, stacks, _ = read_acdc(tmp_path / "data")
    assert layout == "hdf5" and root == tmp_path / "data" and len(stacks) == 4


def test_the_same_stack_in_every_layout_gives_the_same_slices(tmp_path):
    image, mask = in_file_order(apex_first=False)
    h5_whole(tmp_path / "whole" / "data", "patient001_frame01", image, mask)
    h5_slices(tmp_path / "slices" / "data", "patient001_frame01", image, mask)
    folder = tmp_path / "nifti" / "patient001"
    folder.mkdir(parents=True)
    (folder / "Info.cfg").write_text("ED: 1\nES: 2\n")
    write_nifti(folder / "patient001_frame01.nii.gz", image)
    write_nifti(folder / "patient001_frame01_gt.nii.gz", mask)
    write_nifti(folder / "patient001_frame02.nii.gz", image)
    write_nifti(folder / "patient001_frame02_gt.nii.gz", mask)
    results = [read_acdc(tmp_path / name)[2][0] for name in ("whole", "slices", "nifti")]
    for stack in results:
        assert (stack.patient, stack.frame) == ("patient001", "ED")
        assert stack.labels == LABELS_APEX_TO_BASE
        assert stack.extra == {"lv_cavity_px": CAVITY_APEX_TO_BASE}
        for got, want in zip(stack.images, results[0].images):
            np.testing.assert_array_equal(got, want)
        for got, want in zip(stack.masks, mask_from_areas(AREAS_APEX_TO_BASE)):
            assert got.dtype == np.uint8
            np.testing.assert_array_equal(got, want)
    assert results[2].pixel_spacing_mm == 1.5 and results[0].pixel_spacing_mm is None


def test_ambiguous_and_disagreeing_frames_are_warned(tmp_path, capsys):
    # ES as an apical aneurysm: the cavity grows along the file while myocardium and RV shrink
    image, mask = in_file_order(apex_first=True)
    h5_whole(tmp_path / "acdc" / "data", "patient001_frame01", image, mask)
    h5_whole(tmp_path / "acdc" / "data", "patient001_frame02", image[:3],
             mask_from_areas([(10, 30, 30), (20, 20, 15), (30, 10, 0)]))
    assert run_cli(tmp_path / "acdc", "--out", tmp_path / "out") == 0
    captured = capsys.readouterr()
    warnings = read_dataset_json(tmp_path / "out")["warnings"]
    assert len(warnings) == 2
    assert warnings[0].startswith("patient001_frame02.h5: apex/base cues disagree")
    assert warnings[1].startswith("patient001: ED and ES share slice positions but were oriented differently")
    assert all(w in captured.err for w in warnings)
    assert "1 stack(s) with ambiguous apex/base" in captured.out


def test_anisotropic_pixels_are_averaged_with_a_warning(tmp_path):
    nifti_patient(tmp_path, ed_apex_first=False, spacing=(1.4, 1.6))
    _, _, stacks, warnings = read_acdc(tmp_path)
    assert [s.pixel_spacing_mm for s in stacks] == [pytest.approx(1.5)] * 2
    assert len(warnings) == 2 and "anisotropic pixels 1.4 x 1.6 mm" in warnings[0]


def test_help_states_the_failure_policy(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["acdc", "--help"])
    assert exc.value.code == 0
    assert "stops the import with an error naming the file" in " ".join(capsys.readouterr().out.split())


# --- bad input: one message naming the file, exit code 2, nothing written ------------------------------------

def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _nifti(tmp_path):
    return nifti_patient(tmp_path / "training").parent


def _break_missing_src(tmp_path):
    return tmp_path / "nowhere", "nowhere"


def _break_empty_src(tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty", "empty"


def _break_neither_layout(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not ACDC")
    return tmp_path / "other", "neither ACDC layout"


def _break_truncated_nifti(tmp_path):
    src = _nifti(tmp_path)
    return src, _truncate(src / "patient001" / "patient001_frame07.nii.gz").name


def _break_truncated_h5(tmp_path):
    src = hdf5_tree(tmp_path / "acdc")
    return src, _truncate(src / "data" / "patient001_frame02.h5").name


def _break_missing_gt(tmp_path):
    src = _nifti(tmp_path)
    (src / "patient001" / "patient001_frame03_gt.nii.gz").unlink()
    return src, "patient001_frame03_gt.nii.gz"


def _break_missing_label_dataset(tmp_path):
    src = hdf5_tree(tmp_path / "acdc")
    with h5py.File(src / "data" / "patient002_frame01_slice_3.h5", "a") as fh:
        del fh["label"]
    return src, "patient002_frame01_slice_3.h5: no 'label' dataset"


def _break_nifti_mask_shape(tmp_path):
    src = _nifti(tmp_path)
    write_nifti(src / "patient001" / "patient001_frame03_gt.nii.gz", np.zeros((5, H, W + 1), dtype=np.uint8))
    return src, "patient001_frame03_gt.nii.gz: mask shape"


def _break_h5_mask_shape(tmp_path):
    src = tmp_path / "acdc"
    image, mask = in_file_order(apex_first=True)
    h5_whole(src / "data", "patient001_frame01", image, mask[:4])
    return src, "patient001_frame01.h5: mask shape"


def _break_slice_gap(tmp_path):
    src = hdf5_tree(tmp_path / "acdc")
    (src / "data" / "patient002_frame02_slice_3.h5").unlink()
    return src, "patient002_frame02_slice_3.h5 not found"


def _break_missing_info(tmp_path):
    src = _nifti(tmp_path)
    (src / "patient001" / "Info.cfg").write_text("Group: NOR\n")
    return src, "Info.cfg: no integer 'ED:' line"


def _break_missing_image(tmp_path):
    src = _nifti(tmp_path)
    (src / "patient001" / "patient001_frame07.nii.gz").unlink()
    return src, "patient001_frame07.nii.gz not found"


def _break_no_cavity(tmp_path):
    src = tmp_path / "acdc"
    image, mask = in_file_order(apex_first=True)
    mask[mask == 3] = 2
    h5_whole(src / "data", "patient001_frame01", image, mask)
    return src, "patient001_frame01.h5: no slice contains LV cavity"


def _break_foreign_mask_values(tmp_path):
    src = tmp_path / "acdc"
    image, mask = in_file_order(apex_first=True)
    mask[0, 0, 0] = 7
    h5_whole(src / "data", "patient001_frame01", image, mask)
    return src, "patient001_frame01.h5: mask values [7]"


def _break_unknown_frame(tmp_path):
    src = hdf5_tree(tmp_path / "acdc")
    h5_whole(src / "data", "patient003_frame05", *in_file_order(apex_first=True))
    return src, "patient003_frame05.h5: the SSL4MIS layout has only frame01 (ED) and frame02 (ES)"


# the NaN/inf breakers orient ED and ES alike, so that no warning precedes the one error line
def _break_nan_in_nifti(tmp_path):
    src = nifti_patient(tmp_path / "training", es_apex_first=True).parent
    image, _ = in_file_order(apex_first=True)
    image[2, 3, 4] = np.nan
    write_nifti(src / "patient001" / "patient001_frame07.nii.gz", image * 100)
    return src, "patient001/patient001_frame07.nii.gz[2] (patient patient001, frame ES, slice 2): 1 NaN"


def _break_inf_in_h5_slice(tmp_path):
    src = tmp_path / "acdc"
    image, mask = in_file_order(apex_first=True)
    h5_slices(src / "data", "patient002_frame02", image, mask)
    image[2, 0, 0] = np.inf
    h5_slices(src / "data", "patient002_frame01", image, mask)
    return src, "patient002_frame01_slice_3.h5 (patient patient002, frame ED, slice 2): 1 NaN or infinite"


def _break_whole_and_slices(tmp_path):
    src = hdf5_tree(tmp_path / "acdc")
    h5_whole(src / "data", "patient002_frame01", *in_file_order(apex_first=True))
    return src, "is both a whole-stack file and slice files"


@pytest.mark.parametrize("breaker", [
    _break_missing_src, _break_empty_src, _break_neither_layout, _break_truncated_nifti, _break_truncated_h5,
    _break_missing_gt, _break_missing_label_dataset, _break_nifti_mask_shape, _break_h5_mask_shape,
    _break_slice_gap, _break_missing_info, _break_missing_image, _break_no_cavity, _break_foreign_mask_values,
    _break_unknown_frame, _break_whole_and_slices, _break_nan_in_nifti, _break_inf_in_h5_slice,
], ids=lambda f: f.__name__.removeprefix("_break_"))
def test_bad_input_exits_2_naming_the_file(tmp_path, capsys, breaker):
    src, named = breaker(tmp_path)
    out = tmp_path / "out"
    assert run_cli(src, "--out", out) == 2
    err = capsys.readouterr().err
    assert err.startswith("data_prep acdc: error: ") and named in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_out_holding_another_dataset_needs_overwrite(tmp_path, capsys):
    src = hdf5_tree(tmp_path / "acdc")
    out = synthetic.generate(tmp_path / "out", patients=1)
    assert run_cli(src, "--out", out) == 2
    assert f"--out {out} already holds a dataset" in capsys.readouterr().err
    assert set(read_manifest(out).dataset) == {"synthetic"}
    assert run_cli(src, "--out", out, "--overwrite") == 0
    assert set(read_manifest(out).dataset) == {"acdc"}


def test_overwrite_refuses_a_folder_that_only_looks_like_a_dataset(tmp_path, capsys):
    src = hdf5_tree(tmp_path / "acdc")
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.csv").write_text("image,dataset\nx.png,sunnybrook\n")
    assert run_cli(src, "--out", out, "--overwrite") == 2
    err = capsys.readouterr().err
    assert f"--out {out} holds files but is not a dataset made by data_prep" in err
    assert (out / "manifest.csv").read_text().endswith("sunnybrook\n")


def test_out_inside_the_source_is_refused(tmp_path, capsys):
    src = hdf5_tree(tmp_path / "acdc")
    assert run_cli(src, "--out", src, "--overwrite") == 2
    assert f"--out {src} is the source {src}" in capsys.readouterr().err
    assert run_cli(src, "--out", src / "data" / "ds") == 2
    assert "lies inside the source" in capsys.readouterr().err
    assert not (src / "data" / "ds").exists() and len(list((src / "data").iterdir())) == 2 + 2 * len(AREAS_APEX_TO_BASE)


def test_cli_subprocess_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "data_prep", "acdc", str(tmp_path / "missing"),
                           "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"data_prep acdc: error: SRC {tmp_path / 'missing'} not found"


# --- real data ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_imports(shared_data, tmp_path_factory):
    """Both real ACDC copies imported once through the CLI: {"hdf5": manifest, "nifti": manifest, dirs...}."""
    out = tmp_path_factory.mktemp("acdc_real")
    result = {}
    for layout, src in (("hdf5", shared_data / "acdc"), ("nifti", shared_data / "acdc_nifti" / "training")):
        if not src.is_dir():
            pytest.skip(f"real ACDC folder {src} not found")
        assert main(["acdc", str(src), "--out", str(out / layout)]) == 0
        result[layout] = read_manifest(out / layout)
        result[layout + "_dir"] = out / layout
    return result


@pytest.mark.slow
@pytest.mark.realdata
def test_real_hdf5_counts_and_order(real_imports):
    df = real_imports["hdf5"]
    assert len(df) == 1522 and df.groupby(["patient", "frame"]).ngroups == 160 and df.patient.nunique() == 80
    assert df.label.value_counts().to_dict() == {"IN": 1445, "OAP": 53, "OBS": 24}
    for _, rows in df.groupby(["patient", "frame"]):
        rows = rows.sort_values("slice")
        inside = rows.slice[rows.label == "IN"]
        assert (rows.slice[rows.label == "OAP"] < inside.min()).all()
        assert (rows.slice[rows.label == "OBS"] > inside.max()).all()
        assert (rows.lv_cavity_px[rows.label != "IN"] == 0).all()
    meta = read_dataset_json(real_imports["hdf5_dir"])
    assert len(meta["orientation"]) == 160
    assert all(o["apex_first"] is False for o in meta["orientation"])  # every ACDC file runs base -> apex
    json.dumps(meta)


@pytest.mark.slow
@pytest.mark.realdata
def test_real_nifti_matches_the_hdf5_import(real_imports):
    nifti, hdf5 = real_imports["nifti"], real_imports["hdf5"]
    assert len(nifti) == 594 and nifti.groupby(["patient", "frame"]).ngroups == 62
    spacing = pd.to_numeric(nifti.pixel_spacing_mm)
    assert spacing.between(1.2, 2.0).all()
    both = nifti.merge(hdf5, on=["patient", "frame", "slice"], suffixes=("_nii", "_h5"), validate="1:1")
    assert len(both) == 594
    assert (both.label_nii == both.label_h5).all()
    assert (both.lv_cavity_px_nii == both.lv_cavity_px_h5).all()

    def file_index(source):  # index in the file's own order: [k] in a volume, slice_K (from 1) in slice files
        m = re.search(r"\[(\d+)\]$", source) or re.search(r"_slice_(\d+)\.h5$", source)
        return int(m.group(1)) - (0 if source.endswith("]") else 1)
    assert (both.source_nii.map(file_index) == both.source_h5.map(file_index)).all()
    # pixel for pixel: the NIfTI stack min-max scaled is the HDF5 stack
    for (patient, frame), rows in both.groupby(["patient", "frame"]):
        nii = np.stack([load_image(real_imports["nifti_dir"] / p) for p in rows.image_nii]).astype(np.float64)
        h5 = np.stack([load_image(real_imports["hdf5_dir"] / p) for p in rows.image_h5])
        np.testing.assert_allclose((nii - nii.min()) / (nii.max() - nii.min()), h5, atol=1e-6,
                                   err_msg=f"{patient} {frame}")


def _file_index(source):
    """(file, index) of a manifest source: "f.h5[k]" / "p/f.nii.gz[k]" (index k), "f_slice_K.h5" (K counts from 1)."""
    m = re.fullmatch(r"(.+)\[(\d+)\]", source)
    if m:
        return m.group(1), int(m.group(2))
    return source, None


@pytest.mark.realdata
def test_real_masks_are_the_source_labels(shared_data, tmp_path):
    """patient002 (whole-stack HDF5 files and its NIfTI folder) and patient003 (HDF5 slice files), read in place:
    every written mask is the label array of its image's file and index, and the NIfTI import's masks are the
    HDF5 import's, slice for slice."""
    h5_dir, nifti = shared_data / "acdc" / "data", shared_data / "acdc_nifti" / "training" / "patient002"
    if not h5_dir.is_dir() or not nifti.is_dir():
        pytest.skip(f"real ACDC folders {h5_dir} and {nifti} not found")
    few = tmp_path / "few" / "data"  # links to the real files, so that only two patients are read
    few.mkdir(parents=True)
    for path in [*h5_dir.glob("patient002_*.h5"), *h5_dir.glob("patient003_*.h5")]:
        (few / path.name).symlink_to(path)
    assert run_cli(few.parent, "--out", tmp_path / "h5") == 0
    assert run_cli(nifti, "--out", tmp_path / "nii") == 0
    h5, nii = read_manifest(tmp_path / "h5"), read_manifest(tmp_path / "nii")
    assert h5.patient.unique().tolist() == ["patient002", "patient003"] and (h5["mask"] != "").all()
    for row in h5.itertuples():
        name, k = _file_index(row.source)
        with h5py.File(h5_dir / name, "r") as fh:
            label = fh["label"][()] if k is None else fh["label"][k]
        mask = load_mask(tmp_path / "h5" / row.mask, load_image(tmp_path / "h5" / row.image).shape)
        np.testing.assert_array_equal(mask, label, err_msg=row.source)
        assert row.lv_cavity_px == int((label == 3).sum())
    for row in nii.itertuples():
        name, k = _file_index(row.source)
        label = np.asanyarray(nib.load(str(nifti.parent / name.replace(".nii.gz", "_gt.nii.gz"))).dataobj)
        np.testing.assert_array_equal(load_mask(tmp_path / "nii" / row.mask), label[:, :, k].T, err_msg=row.source)
    both = nii.merge(h5, on=["patient", "frame", "slice"], suffixes=("_nii", "_h5"), validate="1:1")
    assert len(both) == len(nii) > 0
    for row in both.itertuples():
        np.testing.assert_array_equal(load_mask(tmp_path / "nii" / row.mask_nii),
                                      load_mask(tmp_path / "h5" / row.mask_h5), err_msg=row.source_nii)
