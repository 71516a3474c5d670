"""data_prep: nothing the user did not ask to delete is deleted, and nothing wrong is imported
silently. One test (or a few) per fault class; docs/reliability.md lists them."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dicom_factory import orientation_for, write_dicom
from pydicom.uid import JPEGLosslessSV1, JPEGLSLossless

from data_prep import atomic, dicom_io, images, manifest, synthetic
from data_prep.__main__ import main
from data_prep.errors import DataPrepError
from data_prep.manifest import load_image, read_dataset_json, read_manifest

APEX = np.array([1.0, -1.0, -1.0]) / np.sqrt(3.0)
CODECS = 'pip install "cardiac-slice-benchmark[dicom-codecs]"'


def write_study(folder: Path, n_pos: int = 3, value=lambda k: 100 * k + 7, **fields) -> list[Path]:
    """One single-phase short-axis series of 16x16 images, position k holding value(k) everywhere."""
    return [write_dicom(folder / f"IM{k:04d}.dcm", np.full((16, 16), value(k)), PatientID="P", StudyInstanceUID="1.2",
                        SeriesInstanceUID="1.2.3", SeriesNumber=1, InstanceNumber=k + 1, TriggerTime=0.0,
                        ImagePositionPatient=[float(x) for x in 8.0 * k * APEX],
                        ImageOrientationPatient=orientation_for(APEX), PixelSpacing=[1.5, 1.5], **fields)
            for k in range(n_pos)]


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def _no_progress_bars(monkeypatch):
    """So that stderr is exactly what the user is told."""
    for module in (synthetic, images):
        monkeypatch.setattr(module, "tqdm", lambda iterable, **kw: iterable)


def one_error(capsys, source: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"data_prep {source}: error: ") and len(err.strip().splitlines()) == 1, err
    return err


# ------------------------------------------------------------------ 1. --overwrite deletes only a dataset

def test_overwrite_never_deletes_the_source_study(tmp_path, capsys):
    study = tmp_path / "study"
    write_study(study)
    before = files_under(study)
    assert main(["dicom", str(study), "--out", str(study), "--overwrite"]) == 2
    assert f"--out {study} is the source {study}; write the dataset elsewhere" in one_error(capsys, "dicom")
    assert main(["dicom", str(study), "--out", str(tmp_path), "--overwrite"]) == 2
    assert f"--out {tmp_path} contains the source {study}" in one_error(capsys, "dicom")
    assert main(["dicom", str(study), "--out", str(study / "ds")]) == 2
    assert "lies inside the source" in one_error(capsys, "dicom")
    assert files_under(study) == before


def test_overwrite_never_deletes_the_current_directory(tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work / "sub")
    assert main(["synthetic", "--out", ".", "--patients", "1", "--overwrite"]) == 2
    assert "--out . is the current directory" in one_error(capsys, "synthetic")
    assert main(["synthetic", "--out", "..", "--patients", "1", "--overwrite"]) == 2
    assert "--out .. contains the current directory" in one_error(capsys, "synthetic")
    assert (work / "notes.txt").read_text() == "mine" and (work / "sub").is_dir()


def test_overwrite_replaces_only_a_data_prep_dataset(tmp_path, capsys):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("precious")
    (folder / "manifest.csv").write_text("image,dataset\nx.png,a\n")  # looks like a dataset, is not one
    assert main(["synthetic", "--out", str(folder), "--patients", "1"]) == 2
    err = one_error(capsys, "synthetic")
    assert f"--out {folder} holds files but is not a dataset made by data_prep" in err
    assert "--overwrite" not in err  # must not invite deleting it
    assert main(["synthetic", "--out", str(folder), "--patients", "1", "--overwrite"]) == 2
    assert "so --overwrite does not replace it" in one_error(capsys, "synthetic")
    assert (folder / "chapter1.tex").read_text() == "precious"

    ds = synthetic.generate(tmp_path / "ds", patients=1, seed=0)
    assert main(["synthetic", "--out", str(ds), "--patients", "1", "--seed", "1"]) == 2
    assert "pass --overwrite to replace it" in one_error(capsys, "synthetic")
    assert main(["synthetic", "--out", str(ds), "--patients", "1", "--seed", "1", "--overwrite"]) == 0
    assert read_dataset_json(ds)["options"]["seed"] == 1


@pytest.mark.parametrize("relation, out", [("is", "src"), ("contains", "."), ("lies inside", "src/sub"),
                                           ("is", "labels.csv")])
def test_check_out_dir_refuses_every_overlap_with_an_input(tmp_path, relation, out):
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "labels.csv").write_text("x")
    inputs = [tmp_path / "src", tmp_path / "labels.csv"]
    with pytest.raises(DataPrepError, match=f"{relation} the source"):
        manifest.check_out_dir(tmp_path / out, overwrite=True, inputs=inputs)


# ------------------------------------------------------------------ 2. the old dataset stays until the new one is in

def test_replacement_renames_aside_and_warns_when_the_old_copy_cannot_be_deleted(tmp_path, capsys, monkeypatch):
    ds = synthetic.generate(tmp_path / "ds", patients=1, seed=0)
    old = files_under(ds)
    seen = []

    def failing_rmtree(path, *args, **kw):
        if not kw.get("ignore_errors"):
            # by now the new dataset is complete and in place, the old one is whole beside it
            seen.append((read_dataset_json(ds)["options"]["seed"], files_under(Path(path)) == old))
            raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(atomic.shutil, "rmtree", failing_rmtree)
    assert main(["synthetic", "--out", str(ds), "--patients", "1", "--seed", "1", "--overwrite"]) == 0
    assert seen == [(1, True)]
    err = capsys.readouterr().err
    leftover = [p for p in tmp_path.iterdir() if p.name.startswith(".ds.old-")]
    assert len(leftover) == 1 and f"they are left in {leftover[0]}" in err
    assert files_under(leftover[0]) == old
    assert len(read_manifest(ds)) > 0 and read_dataset_json(ds)["options"]["seed"] == 1


def test_overwrite_through_a_symbolic_link_replaces_the_link_and_keeps_its_target(tmp_path, capsys):
    real = synthetic.generate(tmp_path / "real", patients=1, seed=0)
    old = files_under(real)
    link = tmp_path / "LINK"
    link.symlink_to("real")
    capsys.readouterr()
    assert main(["synthetic", "--out", str(link), "--patients", "1", "--seed", "1", "--overwrite"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"note: {link} was a symbolic link to real; the link is replaced by the new directory and real "
                   f"is left as it was"], err
    assert link.is_dir() and not link.is_symlink() and read_dataset_json(link)["options"]["seed"] == 1
    assert files_under(real) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LINK", "real"]  # no .LINK.old-* left


def test_a_failed_swap_puts_the_old_dataset_back(tmp_path, monkeypatch):
    ds = synthetic.generate(tmp_path / "ds", patients=1, seed=0)
    old = files_under(ds)
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".ds.partial-"):
            raise OSError(errno.EIO, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(DataPrepError, match=r"Input/output error.*the dataset already there is unchanged"):
        synthetic.generate(ds, patients=1, seed=1, overwrite=True)
    assert files_under(ds) == old
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


# ------------------------------------------------------------------ 3. PhotometricInterpretation, multi-frame

@pytest.mark.parametrize("bits", [16, 12])
def test_monochrome1_is_inverted_to_monochrome2(tmp_path, bits):
    path = write_dicom(tmp_path / "m1.dcm", np.arange(16 * 16).reshape(16, 16), PhotometricInterpretation="MONOCHROME1",
                       BitsStored=bits, HighBit=bits - 1)
    got = dicom_io.read_dicom(path, "m1.dcm").pixels
    assert got.dtype == np.uint16
    assert np.array_equal(got, (2 ** bits - 1) - np.arange(16 * 16).reshape(16, 16))


def test_monochrome1_study_imports_with_monochrome2_polarity(tmp_path):
    write_study(tmp_path / "m1", value=lambda k: 1000 + k, PhotometricInterpretation="MONOCHROME1")
    write_study(tmp_path / "m2", value=lambda k: 65535 - 1000 - k)
    for name in ("m1", "m2"):
        assert main(["dicom", str(tmp_path / name), "--out", str(tmp_path / f"ds_{name}"), "--patient", "p"]) == 0
    pixels = {name: [load_image(tmp_path / f"ds_{name}" / img) for img in read_manifest(tmp_path / f"ds_{name}").image]
              for name in ("m1", "m2")}
    assert all(np.array_equal(a, b) for a, b in zip(pixels["m1"], pixels["m2"]))


def test_colour_and_unknown_photometric_interpretations(tmp_path, capsys):
    study = tmp_path / "study"
    write_study(study)
    write_dicom(study / "palette.dcm", np.zeros((16, 16)), PhotometricInterpretation="PALETTE COLOR")
    assert main(["dicom", str(study), "--out", str(tmp_path / "ds")]) == 0
    assert read_dataset_json(tmp_path / "ds")["options"]["study"]["skipped_files"] == {"colour DICOM images": 1}
    assert len(read_manifest(tmp_path / "ds")) == 3
    capsys.readouterr()
    write_dicom(study / "odd.dcm", np.zeros((16, 16)), PhotometricInterpretation="MONOCHROME3")
    assert main(["dicom", str(study), "--out", str(tmp_path / "ds2")]) == 2
    assert "odd.dcm: PhotometricInterpretation 'MONOCHROME3' is not a greyscale image" in one_error(capsys, "dicom")


def test_multi_frame_dicom_is_refused_naming_the_file(tmp_path, capsys):
    study = tmp_path / "study"
    write_study(study)
    write_dicom(study / "cine.dcm", np.zeros((4, 16, 16)))
    assert main(["dicom", str(study), "--out", str(tmp_path / "ds")]) == 2
    assert "cine.dcm: multi-frame (enhanced) DICOM is not supported" in one_error(capsys, "dicom")
    assert not (tmp_path / "ds").exists()


# ------------------------------------------------------------------ 4. non-finite pixels (any source)

def test_non_finite_pixels_are_refused_for_every_source(tmp_path, capsys):
    src = tmp_path / "imgs"
    for k in range(2):
        for label in ("a", "b"):
            (src / label).mkdir(parents=True, exist_ok=True)
            np.save(src / label / f"p{k}_{label}.npy", np.ones((8, 8), np.float32))
    bad = np.ones((8, 8), np.float32)
    bad[1, 1] = np.nan
    np.save(src / "b" / "p1_b.npy", bad)
    assert main(["images", str(src), "--out", str(tmp_path / "ds"), "--patient-regex", "^(p\\d)_"]) == 2
    assert "p1_b.npy (patient p1, frame" in one_error(capsys, "images")
    assert not (tmp_path / "ds").exists() and [p.name for p in tmp_path.iterdir()] == ["imgs"]


# ------------------------------------------------------------------ 5. compressed DICOM without its codec

@pytest.mark.parametrize("syntax", [JPEGLSLossless, JPEGLosslessSV1], ids=["jpeg-ls", "jpeg-lossless"])
def test_missing_codec_names_what_to_install(tmp_path, capsys, monkeypatch, syntax):
    from pydicom.pixels import get_decoder
    if get_decoder(syntax).is_available:  # a codec is installed here: take it away for this test
        monkeypatch.setattr(type(get_decoder(syntax)), "is_available", property(lambda self: False))
    study = tmp_path / "study"
    write_study(study, transfer_syntax=syntax)
    assert main(["dicom", str(study), "--out", str(tmp_path / "ds")]) == 2
    err = one_error(capsys, "dicom")
    assert f"IM0000.dcm: pixel data is compressed ({syntax.name}) and no installed decoder reads it" in err
    assert CODECS in err and "corrupt" not in err


# ------------------------------------------------------------------ 6. full disk

@pytest.mark.parametrize("failing", ["image", "manifest"])
def test_full_disk_is_one_message_and_leaves_no_dataset(tmp_path, capsys, monkeypatch, failing):
    def full(*args, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if failing == "image":
        real_save, calls = manifest.save_image, []

        def save_image(path, img):  # a few images fit, then the disk is full
            calls.append(path)
            return real_save(path, img) if len(calls) < 4 else full()
        monkeypatch.setattr(manifest, "save_image", save_image)
    else:
        monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    out = tmp_path / "out"
    assert main(["synthetic", "--out", str(out), "--patients", "1"]) == 2
    err = one_error(capsys, "synthetic")
    assert f"--out {out}: writing the dataset failed (No space left on device); nothing was written" in err
    assert list(tmp_path.iterdir()) == []


def test_full_disk_while_replacing_keeps_the_old_dataset(tmp_path, capsys, monkeypatch):
    ds = synthetic.generate(tmp_path / "ds", patients=1, seed=0)
    old = files_under(ds)

    def full(*args, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    assert main(["synthetic", "--out", str(ds), "--patients", "1", "--seed", "1", "--overwrite"]) == 2
    assert "the dataset already there is unchanged" in one_error(capsys, "synthetic")
    assert files_under(ds) == old and [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_a_second_writer_of_one_out_is_refused_naming_the_lock_and_its_owner(tmp_path, capsys):
    from data_prep import lock
    out = tmp_path / "ds"
    with lock.exclusive(lock.beside(out), "--out", out):
        held = lock.beside(out).read_text().strip()
        assert held.startswith(f"pid {os.getpid()} on host ")
        assert main(["synthetic", "--patients", "1", "--out", str(out)]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"data_prep synthetic: error: --out {out} is in use by {held} (lock file {lock.beside(out)}); wait for "
            f"it to end, or use another --out"]
        assert not out.exists()
    assert not lock.beside(out).exists()  # removed by its holder
    assert main(["synthetic", "--patients", "1", "--out", str(out)]) == 0 and not lock.beside(out).exists()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, capsys):
    import subprocess
    import sys
    from data_prep import lock
    out = tmp_path / "ds"
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; from data_prep import lock; "
                              "c = lock.exclusive(lock.beside(sys.argv[1]), '--out', sys.argv[1]); c.__enter__(); "
                              "print('held', flush=True); time.sleep(60)", str(out)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "held\n"
    left = lock.beside(out).read_text().strip()
    child.kill()
    child.wait()
    assert lock.beside(out).read_text().strip() == left  # the file stays, its flock went with the process
    capsys.readouterr()
    assert main(["synthetic", "--patients", "1", "--out", str(out)]) == 0
    assert (f"note: {lock.beside(out)} was left by {left}, which is no longer running; taken over"
            in capsys.readouterr().err)
    assert not lock.beside(out).exists() and len(read_manifest(out)) > 0
