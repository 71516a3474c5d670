"""data_prep.synthetic: deterministic, correctly labelled phantom stacks whose labels can be read from the image."""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from data_prep import __main__ as cli
from data_prep import synthetic
from data_prep.errors import DataPrepError
from data_prep.manifest import MASK_CODES, load_image, load_mask, mask_structures, read_dataset_json, read_manifest

LABEL_ORDER = re.compile(r"^(OAP)*(IN)+(OBS)*$")


@pytest.fixture(scope="module")
def patients():
    """Six rendered patients (anatomy, {frame: PhantomStack})."""
    return [synthetic.make_patient(0, k) for k in range(6)]


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_runs_are_byte_identical(tmp_path):
    a = synthetic.generate(tmp_path / "a", patients=2, seed=5)
    b = synthetic.generate(tmp_path / "b", patients=2, seed=5)
    fa, fb = _files(a), _files(b)
    assert fa.keys() == fb.keys() and len(fa) > 10
    assert all(fa[k] == fb[k] for k in fa)


def test_patient_depends_only_on_seed_and_index(tmp_path):
    one = _files(synthetic.generate(tmp_path / "one", patients=1, seed=5))
    three = _files(synthetic.generate(tmp_path / "three", patients=3, seed=5))
    images = [k for k in one if k.suffix == ".png"]
    assert images and all(one[k] == three[k] for k in images)
    other = _files(synthetic.generate(tmp_path / "other", patients=1, seed=6))
    shared = [k for k in images if k in other]
    assert shared and all(one[k] != other[k] for k in shared)


def test_dataset_directory_contents(tmp_path):
    out = synthetic.generate(tmp_path / "syn", patients=2, seed=0)
    df = read_manifest(out)
    assert set(df["dataset"]) == {"synthetic"}
    assert set(df["patient"]) == {"syn000", "syn001"}
    assert set(df["frame"]) == {"ED", "ES"}
    assert df["pixel_spacing_mm"].between(1.2, 1.9).all()
    assert (df["lv_cavity_px"] > 0).eq(df["label"] == "IN").all()
    row = df.iloc[3]
    assert row["source"] == f"synthetic(seed=0,patient={int(row['patient'][3:])},frame={row['frame']},slice=3)"
    img = load_image(out / row["image"])
    assert img.dtype == np.uint16 and 128 <= min(img.shape) and max(img.shape) <= 192
    assert 200 < np.percentile(img, 99.5) < 4000  # scanner-like range
    meta = read_dataset_json(out)
    assert meta["options"] == {"patients": 2, "seed": 0}
    assert meta["counts"]["n_stacks"] == 4


def test_masks_written_beside_their_images(tmp_path):
    out = synthetic.generate(tmp_path / "syn", patients=1, seed=0)
    df = read_manifest(out)
    assert mask_structures(out) == ("rv_cavity", "lv_myocardium", "lv_cavity")
    _, frames = synthetic.make_patient(0, 0)
    codes = set()
    for frame, ph in frames.items():
        rows = df[df["frame"] == frame].sort_values("slice")
        assert len(rows) == len(ph.masks)
        for row, want in zip(rows.itertuples(), ph.masks):
            img = load_image(out / row.image).astype(float)
            mask = load_mask(out / row.mask, img.shape)
            np.testing.assert_array_equal(mask, want)
            assert row.lv_cavity_px == np.count_nonzero(mask == MASK_CODES["lv_cavity"])
            codes |= set(np.unique(mask).tolist())
            if row.label == "IN":  # registered on disk: the bright pool under the cavity code, in its dark ring
                assert img[mask == 3].mean() > 1.8 * img[mask == 2].mean()
    assert codes == {0, 1, 2, 3}


def test_labels_ordered_and_outer_share_rare_but_present():
    counts = {"OAP": 0, "IN": 0, "OBS": 0}
    for k in range(120):
        anat = synthetic.sample_anatomy(synthetic.patient_rng(0, k))
        assert 8 <= len(anat.z) <= 16 and np.all(np.diff(anat.z) > 0)
        for frame in synthetic.FRAMES:
            labels = [synthetic.label_at(anat, frame, z) for z in anat.z]
            assert LABEL_ORDER.match("".join(labels)), labels
            assert labels.count("OAP") <= 2 and labels.count("OBS") <= 2
            a, b = synthetic.cavity_bounds(anat, frame)
            assert np.all(np.abs(anat.z - a) >= synthetic.MARGIN_MM)
            assert np.all(np.abs(anat.z - b) >= synthetic.MARGIN_MM)
            for lab in labels:
                counts[lab] += 1
    outer = (counts["OAP"] + counts["OBS"]) / sum(counts.values())
    assert 0.08 <= outer <= 0.18, counts
    assert counts["OAP"] > 0.03 * sum(counts.values()) and counts["OBS"] > 0.03 * sum(counts.values())


def test_cavity_radius_hand_computed():
    anat = dataclasses.replace(synthetic.sample_anatomy(synthetic.patient_rng(0, 0)),
                               cavity_radius=20.0, cavity_length=80.0, es_radius=0.5, es_apex_shift=4.0,
                               es_base_shift=6.0, cap=8.0, wall=10.0)
    assert synthetic.cavity_radius(anat, "ED", 40.0) == pytest.approx(20 * np.sqrt(0.75))
    assert synthetic.cavity_radius(anat, "ED", 79.0) == pytest.approx(20 * np.sqrt(1 - (1 / 80) ** 2))
    assert synthetic.cavity_radius(anat, "ED", -1.0) == 0 and synthetic.cavity_radius(anat, "ED", 81.0) == 0
    # ES: cavity from z = 4 to 74, radius 10 at the base
    assert synthetic.cavity_radius(anat, "ES", 39.0) == pytest.approx(10 * np.sqrt(0.75))
    # epicardium: ED radius 30 at the base; ES ring keeps the ED ring's area: sqrt(10^2 + 30^2 - 20^2)
    assert synthetic.outer_radius(anat, "ED", 80.0 - 1e-9) == pytest.approx(30.0)
    assert synthetic.outer_radius(anat, "ES", 74.0 - 1e-9) == pytest.approx(np.sqrt(600.0))
    assert synthetic.outer_radius(anat, "ED", -7.0) > 0 and synthetic.outer_radius(anat, "ED", -9.0) == 0
    assert [synthetic.label_at(anat, "ES", z) for z in (3.0, 5.0, 73.0, 75.0)] == ["OAP", "IN", "IN", "OBS"]


def test_cavity_visible_exactly_in_IN_slices(patients):
    seen = set()
    for _, frames in patients:
        for ph in frames.values():
            first_in = ph.labels.index("IN")
            last_in = len(ph.labels) - 1 - ph.labels[::-1].index("IN")
            for i, (img, mask, label) in enumerate(zip(ph.images, ph.masks, ph.labels)):
                img = img.astype(float)
                seen.add(label)
                if label == "IN":
                    assert ph.cavity_px[i] == np.count_nonzero(mask == 3) > 0
                    assert img[mask == 3].mean() > 1.8 * img[mask == 2].mean()
                    continue
                assert ph.cavity_px[i] == 0 and not (mask == 3).any()
                if label == "OAP":
                    # where the first cavity shows, beyond the apex there is no blood pool
                    where = ph.masks[first_in] == 3
                    near = ph.images[first_in].astype(float)[where].mean()
                    assert img[where].mean() < 0.7 * near
                else:
                    # above the base only an open, thinner crescent of LV myocardium is left
                    assert np.count_nonzero(mask == 2) < 0.6 * np.count_nonzero(ph.masks[last_in] == 2)
    assert seen == {"OAP", "IN", "OBS"}


def test_end_diastole_cavity_larger_than_end_systole(patients):
    for anat, frames in patients:
        ed, es = frames["ED"], frames["ES"]
        assert sum(ed.cavity_px) > 1.5 * sum(es.cavity_px)
        assert all(e >= s for e, s in zip(ed.cavity_px, es.cavity_px))
        mid = len(anat.z) // 2
        wall_ed = np.count_nonzero(ed.masks[mid] == 2) / max(ed.cavity_px[mid], 1)
        wall_es = np.count_nonzero(es.masks[mid] == 2) / max(es.cavity_px[mid], 1)
        assert wall_es > wall_ed


@pytest.mark.parametrize("patients_arg", [0, -3])
def test_bad_patient_count(tmp_path, patients_arg, capsys):
    with pytest.raises(DataPrepError, match="--patients"):
        synthetic.generate(tmp_path / "x", patients=patients_arg)
    rc = cli.main(["synthetic", "--out", str(tmp_path / "x"), "--patients", str(patients_arg)])
    assert rc == 2
    assert "--patients" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_bad_seed(tmp_path):
    with pytest.raises(DataPrepError, match="--seed"):
        synthetic.generate(tmp_path / "x", patients=1, seed=-1)


def test_out_holding_another_dataset(tmp_path, capsys):
    out = synthetic.generate(tmp_path / "d", patients=1, seed=0)
    before = _files(out)
    with pytest.raises(DataPrepError, match="--out"):
        synthetic.generate(out, patients=1, seed=1)
    assert cli.main(["synthetic", "--out", str(out), "--patients", "1", "--seed", "1"]) == 2
    assert "--out" in capsys.readouterr().err
    assert _files(out) == before
    assert cli.main(["synthetic", "--out", str(out), "--patients", "1", "--seed", "1", "--overwrite"]) == 0
    assert read_dataset_json(out)["options"]["seed"] == 1
