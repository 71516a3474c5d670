"""Nothing lost, nothing silently wrong in the benchmark: what is recorded and what is matched (the refusals, one
message and exit code 2 each, are cases of test_bad_inputs.py)."""
from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from benchmark import jobs, profiles
from benchmark.__main__ import main as benchmark_main
from benchmark.data import Dataset, holdout_patients, train_test_split
from benchmark.errors import BenchmarkInputError
from benchmark.grid import make_experiment
from benchmark.predict import REPORT_PREFIX, report_names
from benchmark.layout import DONE
from benchmark.protocol import ModelRun
from benchmark.run_spec import RunSpec
from benchmark.registry import get_spec
from data_prep import atomic
from data_prep.errors import DataPrepError
from data_prep.manifest import load_image
from test_bad_inputs import copy_dataset, edit_manifest

QUICK = ["--profile", "quick", "--epochs", "1", "--folds", "2", "--weights", "none"]


def quick(**kw) -> profiles.Profile:
    # the profile `--epochs 1` makes: the segmentation head's epochs too
    return profiles.get_profile("quick").with_overrides(epochs=1, segment_epochs=1, n_folds=2, **kw)


def test_reimported_images_under_the_same_manifest_are_other_data(tiny_synthetic, tmp_path, capsys):
    """A finished run on A is not taken for a run on B, whose manifest is A's byte for byte but whose pixels are
    not (a re-import with --overwrite): the rerun is refused naming `data`, instead of "finished earlier, skipped"
    with A's predictions."""
    b = copy_dataset(tiny_synthetic, tmp_path / "b")
    for png in (b / "images").glob("*.png"):
        img = load_image(png)
        cv2.imwrite(str(png), (img.max() - img).astype(np.uint16))
    assert (b / "manifest.csv").read_bytes() == (tiny_synthetic / "manifest.csv").read_bytes()
    out = tmp_path / "out"
    exp = make_experiment(tiny_synthetic, quick(), 0, out, "none", use_cache=True, test_fraction=0.25)
    run = RunSpec.of(exp, get_spec("cbr_tiny"), 0)
    run.dir.mkdir(parents=True)
    atomic.write_json(run.dir / "config.json", run.config())
    (run.dir / DONE).write_text("")
    assert run.check_dir(force=False)  # the same data: finished
    assert run.config()["data"]["content_sha256"] == Dataset.load(tiny_synthetic).content_sha256

    capsys.readouterr()
    rc = benchmark_main(["--backbone", "cbr_tiny", *QUICK, "--test-fraction", "0.25", "--data", str(b),
                         "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"benchmark: error: {run.dir} holds a run made with other settings (data); use "
                               f"another --out, or --force to redo it"], err


def test_test_data_content_is_part_of_the_identity(tiny_synthetic, tmp_path):
    """--test-data is matched by its images too: the same manifest over other pixels is another test set."""
    train = edit_manifest(copy_dataset(tiny_synthetic, tmp_path / "train"),
                          lambda df: df[df.patient.isin(sorted(set(df.patient))[:6])])
    test = edit_manifest(copy_dataset(tiny_synthetic, tmp_path / "test"),
                         lambda df: df[df.patient.isin(sorted(set(df.patient))[6:])])
    exp = make_experiment(train, quick(), 0, tmp_path / "out", "none", use_cache=True, test_data=test)
    desc = exp.data_desc
    assert desc["test_data"]["content_sha256"] == Dataset.load(test).content_sha256
    assert desc["n_test_patients"] == 2 and desc["test_fraction_realised"] == 0.25
    run = RunSpec.of(exp, get_spec("cbr_tiny"), 0)
    run.dir.mkdir(parents=True)
    atomic.write_json(run.dir / "config.json", run.config())
    for png in (test / "images").glob("*.png"):
        cv2.imwrite(str(png), (255 - load_image(png)).astype(np.uint16))
    again = make_experiment(train, quick(), 0, tmp_path / "out", "none", use_cache=True, test_data=test)
    with pytest.raises(BenchmarkInputError, match=r"other settings \(data\)"):
        RunSpec.of(again, get_spec("cbr_tiny"), 0).check_dir(force=False)


@pytest.mark.parametrize("fraction, n, expected", [(0.3, 30, 9), (0.9, 30, 27), (0.25, 8, 2), (0.2, 8, 2),
                                                   (0.1, 70, 7), (0.5, 5, 3)])
def test_test_fraction_holds_out_what_it_says(fraction, n, expected):
    """round(F * n) patients (halves up), not 1 / round(1 / F) of them (0.3 -> 1/3, 0.9 -> 1/2 before); each
    class signature in proportion; seeded."""
    patients = np.repeat([f"p{i:02d}" for i in range(n)], 3)
    # a third of the patients have an OBS (2) slice, the others OAP (0) and IN (1) only
    y = np.array([c for i in range(n) for c in ((0, 1, 2) if i % 3 == 0 else (0, 1, 1))])
    held = holdout_patients(patients, y, fraction, seed=4, n_folds=2)
    assert len(held) == expected == len(set(held))
    with_obs = {f"p{i:02d}" for i in range(0, n, 3)}
    share = len(with_obs) / n * expected
    assert np.floor(share) <= len(set(held) & with_obs) <= np.ceil(share)
    np.testing.assert_array_equal(held, holdout_patients(patients, y, fraction, seed=4, n_folds=2))


def test_realised_test_fraction_is_recorded(tiny_synthetic, tmp_path):
    exp = make_experiment(tiny_synthetic, quick(), 0, tmp_path, "none", use_cache=True, test_fraction=0.3)
    patients = exp.ds.rows.patient
    assert exp.data_desc["test_fraction"] == 0.3
    assert exp.data_desc["n_test_patients"] == patients.iloc[exp.test].nunique() == 2  # round(0.3 * 8) = 2
    assert exp.data_desc["test_fraction_realised"] == 0.25
    assert not set(patients.iloc[exp.test]) & set(patients.iloc[exp.pool])


def test_split_column_matches_any_case(tiny_synthetic, tmp_path):
    """`Test` and ` TEST ` hold their patients out as `test` does (before: ignored, a random split made and the
    designated test patients trained on)."""
    names = sorted(pd.read_csv(tiny_synthetic / "manifest.csv").patient.unique())
    data = edit_manifest(copy_dataset(tiny_synthetic, tmp_path / "data"), lambda df: df.assign(
        split=df.patient.map({names[0]: "Test", names[1]: " TEST "}).fillna("Train")))
    ds = Dataset.load(data)
    pool, test = train_test_split(ds, None, seed=0)
    assert set(ds.rows.patient.iloc[test]) == {names[0], names[1]}
    assert set(ds.rows.split) == {"test", "train"}


@pytest.mark.parametrize("error", [BenchmarkInputError, DataPrepError])
def test_a_user_error_inside_a_job_is_not_retried(error, tiny_synthetic, tmp_path, monkeypatch, capsys):
    """Bad input found by a job fails every retry and every model alike: one message, exit 2, at once; no summary
    claims results."""
    calls = []

    def bad_features(self):
        calls.append(self.spec.name)
        raise error(f"image file {tiny_synthetic / 'images' / 'x.png'}: unreadable")

    monkeypatch.setattr(ModelRun, "features", bad_features)
    out = tmp_path / "out"
    capsys.readouterr()
    rc = benchmark_main(["--backbone", "cbr_tiny", *QUICK, "--test-fraction", "0.25", "--data", str(tiny_synthetic),
                         "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and calls == ["cbr_tiny"], (rc, calls)
    assert err == [f"benchmark: error: image file {tiny_synthetic / 'images' / 'x.png'}: unreadable"], err
    assert not (out / "summary.csv").exists() and not list(out.rglob(DONE))


def test_predict_report_names_are_unique_per_stack():
    """`a b` and `a_b` (and `C` and `c`, on a case-insensitive disk) sanitise to one file name: each gets a
    hash of its real ids, so four stacks give four reports; a name without a clash stays as it was."""
    keys = [("a b", "ED"), ("a_b", "ED"), ("C", "0"), ("c", "0"), ("d", "ES")]
    names = report_names(keys)
    assert len({n.lower() for n in names.values()}) == len(keys)
    assert names[("d", "ES")] == f"{REPORT_PREFIX}d_ES.png"
    assert all(names[k].startswith(f"{REPORT_PREFIX}a_b_ED_") for k in keys[:2])
    assert names == report_names(list(reversed(keys)))  # a stack's name does not depend on the others' order


def test_regression_cbr_learning_rates_do_not_diverge_by_default(tiny_synthetic, tmp_path):
    """The quick profile's only CBR LR, 1e-2, diverges for a target on the phantom ("every learning rate
    diverged"); a regression or multi-task CBR run takes lr_cbr_target (1e-3) instead, in the job graph as in the
    run (a classification keeps 1e-2). Checked by running: see docs/reliability.md."""
    for task, lrs in (("classification", (1e-2,)), ("regression", (1e-3,)), ("multi", (1e-3,))):
        target = None if task == "classification" else "lv_cavity_px"
        exp = make_experiment(tiny_synthetic, profiles.get_profile("quick"), 0, tmp_path / task, "none",
                              use_cache=True, test_fraction=0.25, task=task, target=target)
        assert RunSpec.of(exp, get_spec("cbr_tiny"), 0).lrs == lrs, task
        cv = {j.lr for j in jobs.build_graph(exp, [("cbr_tiny", 0)]) if j.step == "cv"}
        assert cv == set(lrs), task
        assert RunSpec.of(exp, get_spec("mobilenet"), 0).lrs == (1e-2, 1e-3)  # pretrained grids are task-blind


def _cut(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


@pytest.mark.slow
def test_files_cut_by_a_crash_are_redone_or_refused_by_name(tiny_synthetic, tmp_path, capsys):
    """A finished run whose test_metrics.json, model.keras, a CV job.json and cached features were cut short: the
    resume names each file and redoes the jobs that wrote them, to the same results; a cut config.json is refused by name; export of a
    cut model names the file instead of Keras's "File not found"."""
    from benchmark.export import main as export_main
    args = ["--backbone", "cbr_tiny", *QUICK, "--test-fraction", "0.25", "--data", str(tiny_synthetic),
            "--out", str(tmp_path / "out")]
    assert benchmark_main(args) == 0
    run = tmp_path / "out" / "cbr_tiny"
    metrics = (run / "test_metrics.json").read_bytes()
    cut = [run / "test_metrics.json", run / "model" / "model.keras", run / "jobs" / "cv_lr0.01_f1" / "job.json"]
    for path in cut:
        _cut(path)
    features = next((tmp_path / "out" / "cache").glob("*/out0.npy"))
    _cut(features)
    capsys.readouterr()
    assert benchmark_main(args) == 0
    out = capsys.readouterr()
    for path in cut:
        assert f"{path} is damaged (" in out.err
    assert f"cache {features.parent} is incomplete or corrupt: rebuilding" in out.err  # checked by sha256
    assert "cbr_tiny cv lr 0.01 fold 1" in out.out and "cbr_tiny final" in out.out and "cbr_tiny test" in out.out
    assert (run / "test_metrics.json").read_bytes() == metrics
    assert all(atomic.damage(path) is None for path in cut)

    _cut(run / "model" / "model.keras")
    assert export_main([str(run)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"benchmark export: error: {run / 'model' / 'model.keras'} is damaged (not a whole zip archive: File is not "
        f"a zip file); a run's model is rebuilt by running `python -m benchmark` again with the --out that made it")
    _cut(run / "config.json")
    assert benchmark_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"benchmark: error: {run / 'config.json'} is damaged (not valid JSON")


def test_export_of_a_run_without_a_model_says_what_export_needs(results_small, capsys):
    from benchmark.export import main as export_main
    run = next(p for p in sorted(results_small.iterdir()) if (p / "config.json").is_file())
    assert export_main([str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "export takes a run directory" in err and "--model" not in err and "reference" not in err, err


def test_an_unwritable_cache_dir_is_refused_naming_the_option():
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from benchmark.__main__ import check_cache_dir
    base = Path(tempfile.mkdtemp())
    base.chmod(0o755)  # reachable by the other user below
    locked = base / "locked"
    locked.mkdir(mode=0o555)
    root = os.geteuid() == 0
    try:
        if root:  # root writes anywhere: be someone else for the probe
            os.seteuid(65534)
        with pytest.raises(BenchmarkInputError) as err:
            check_cache_dir(locked / "cache")
    finally:
        if root:
            os.seteuid(0)
        shutil.rmtree(base)
    assert str(err.value) == f"--cache-dir {locked / 'cache'}: {locked} is not writable (Permission denied)"


def test_a_memory_limit_too_small_for_tensorflow_is_one_line(tmp_path):
    import resource
    import subprocess
    import sys
    limit = 2**30
    proc = subprocess.run([sys.executable, "-m", "benchmark", "--backbone", "cbr_tiny", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"benchmark: error: TensorFlow cannot be loaded ({proc.stderr.split('(', 1)[1].split(')', 1)[0]}); this "
        f"process may map at most 1 GiB of memory (ulimit -v 1048576), too little for TensorFlow: raise or lift the "
        f"limit"], proc.stderr


def test_more_workers_than_jobs_that_can_run_at_once_start_no_more(tiny_synthetic, tmp_path, capsys):
    from benchmark.log import setup
    exp = make_experiment(tiny_synthetic, quick(), 0, tmp_path / "out", "none", use_cache=True, test_fraction=0.25)
    graph = jobs.build_graph(exp, [("cbr_tiny", 0)], fit_threads=False)
    assert jobs._widest(graph, list(graph)) == 2  # its 2 CV folds; features, select, final and test one at a time
    assert jobs._widest(graph, [j for j in graph if j.step in ("final", "test")]) == 1
    pool = jobs.ProcessPool(8)
    setup(0)
    pool.use_at_most(2)
    assert pool.slots == 2 and pool.pool is None  # nothing started before the first submit
    assert "--workers 8: at most 2 job(s) can run at once here, so 2 worker process(es) start" in capsys.readouterr().out
    pool.close()


def test_a_second_benchmark_on_one_out_is_refused_naming_the_lock_and_its_owner(tiny_synthetic, tmp_path, capsys):
    from data_prep.lock import exclusive
    out = tmp_path / "out"
    out.mkdir()
    with exclusive(out / ".lock", "--out", out):
        held = (out / ".lock").read_text().strip()
        rc = benchmark_main(["--backbone", "cbr_tiny", *QUICK, "--test-fraction", "0.25", "--data",
                             str(tiny_synthetic), "--out", str(out)])
    assert rc == 2 and capsys.readouterr().err.strip().splitlines() == [
        f"benchmark: error: --out {out} is in use by {held} (lock file {out / '.lock'}); wait for it to end, or use "
        f"another --out"]
    assert sorted(p.name for p in out.iterdir()) == []  # nothing read or written, the lock removed by its holder


@pytest.mark.slow
def test_another_models_unfinished_run_in_out_does_not_fail_this_command(tiny_synthetic, tmp_path):
    """OUT holds mobilenet_d0, started by another command and not finished: a cbr_tiny run there ends with exit 0,
    the summary listing mobilenet_d0 as not finished."""
    out = tmp_path / "out"
    exp = make_experiment(tiny_synthetic, quick(), 0, out, "none", use_cache=True, test_fraction=0.25)
    other = RunSpec.of(exp, get_spec("mobilenet"), 0)
    other.dir.mkdir(parents=True)
    atomic.write_json(other.dir / "config.json", other.config())
    assert benchmark_main(["--backbone", "cbr_tiny", *QUICK, "--test-fraction", "0.25", "--data", str(tiny_synthetic),
                           "--out", str(out)]) == 0
    summary = pd.read_csv(out / "summary.csv").set_index("run")["status"]
    assert summary["cbr_tiny"] == "done" and summary["mobilenet_d0"] != "done"


@pytest.mark.slow
def test_sigterm_and_ctrl_c_stop_within_seconds_and_say_how_to_resume(tiny_synthetic, tmp_path):
    """SIGTERM (exit 143) and SIGINT (Ctrl-C, exit 130) during training end the command within seconds with a line
    naming the job cut short and the command that resumes; the resume's results are an uninterrupted run's."""
    import signal
    import time

    from conftest import cli
    args = ["--backbone", "cbr_tiny", *QUICK, "--test-fraction", "0.25", "--data", str(tiny_synthetic)]
    assert benchmark_main([*args, "--out", str(tmp_path / "reference")]) == 0
    out = tmp_path / "out"
    run = out / "cbr_tiny"
    for signum, wait_for in ((signal.SIGTERM, run / "jobs" / "cv_lr0.01_f0" / "DONE"),
                             (signal.SIGINT, run / "jobs" / "cv_lr0.01_f1" / "DONE")):
        proc = cli([*args, "--out", str(out)])
        deadline = time.time() + 300
        while not wait_for.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        t0 = time.perf_counter()
        proc.send_signal(signum)
        output, _ = proc.communicate(timeout=60)
        assert time.perf_counter() - t0 < 15 and proc.returncode == 128 + signum, output
        last = output.strip().splitlines()[-1]
        assert last.startswith(f"benchmark: stopped by {signal.Signals(signum).name} during cbr_tiny "), last
        assert last.endswith(f"finished jobs are kept, and the same command resumes: python -m benchmark "
                             f"{' '.join(args)} --out {out}"), last
        assert not (run / "DONE").exists() and not (out / ".lock").exists()
    assert benchmark_main([*args, "--out", str(out)]) == 0
    for name in ("test_metrics.json", "test_predictions.csv", "selection.json"):
        assert (run / name).read_bytes() == (tmp_path / "reference" / "cbr_tiny" / name).read_bytes(), name
