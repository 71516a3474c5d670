"""The grid as a job graph: dependencies, resume after kill -9 at random moments, SIGTERM, parallel and Ray
executors giving the same summary, retries, failed runs and a full disk."""
from __future__ import annotations

import errno
import random
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from benchmark import jobs
from benchmark.errors import BenchmarkInputError
from benchmark.grid import make_experiment
from benchmark.jobs import InProcess, Job, build_graph, run_jobs
from benchmark.profiles import get_profile

from conftest import cli

TIMES = ["cv_seconds", "total_seconds"]


def same_results(a: Path, b: Path) -> None:
    """Everything but the seconds: summary, and each run's test predictions and CV history byte for byte."""
    pd.testing.assert_frame_equal(pd.read_csv(a / "summary.csv").drop(columns=TIMES),
                                  pd.read_csv(b / "summary.csv").drop(columns=TIMES))
    for run in pd.read_csv(a / "summary.csv").run:
        if not (a / run).is_dir():  # a baseline row: scored inside every run's test_metrics.json
            continue
        for name in ("test_predictions.csv", "test_metrics.json", "cv_history.csv", "selection.json"):
            assert (a / run / name).read_bytes() == (b / run / name).read_bytes(), (run, name)


def markers(out: Path) -> int:
    return len(list(out.glob("*/jobs/*/DONE"))) + len(list(out.glob("*/selection.json")))


@pytest.fixture()
def tiny_exp(tiny_synthetic, tmp_path):
    profile = get_profile("quick").with_overrides(epochs=1, n_folds=2, input_sizes={"mobilenet": 32, "mobilenetv2": 32})
    return make_experiment(tiny_synthetic, profile, 0, tmp_path / "out", "none", use_cache=True, test_fraction=0.25)


def test_graph_dependencies(tiny_exp):
    graph = build_graph(tiny_exp, [("mobilenet", 1)])  # depth 1 alone brings depth 0 along
    assert Job("mobilenet", 0, "test") in graph
    assert graph[Job("mobilenet", 1, "cv", 1e-3, 1)] == (Job("mobilenet", 1, "features"),
                                                          Job("mobilenet", 0, "foldinit", fold=1))
    assert graph[Job("mobilenet", 0, "foldinit", fold=0)] == (Job("mobilenet", 0, "select"),)
    assert set(graph[Job("mobilenet", 1, "final")]) == {Job("mobilenet", 1, "select"), Job("mobilenet", 0, "final")}
    assert set(graph[Job("mobilenet", 0, "select")]) == {Job("mobilenet", 0, "cv", lr, k)
                                                         for lr in (1e-2, 1e-3) for k in (0, 1)}
    order = list(graph)  # the single-process order respects every dependency
    assert all(order.index(d) < order.index(j) for j, deps in graph.items() for d in deps)
    # a depth-0 run's stack model reads its features and, for predict, its final model
    assert graph[Job("mobilenet", 0, "stack")] == (Job("mobilenet", 0, "features"), Job("mobilenet", 0, "final"))
    assert Job("mobilenet", 0, "stack").run == "mobilenet_d0+stack"
    # without depth 1 there are no fold models to rebuild, and no run depends on another but a stack model on its base
    graph0 = build_graph(tiny_exp, [("mobilenet", 0), ("mobilenetv2", 0)])
    assert not any(j.step == "foldinit" for j in graph0)
    assert all(d.run == j.run or j.run == d.run + "+stack" for j, deps in graph0.items() for d in deps)


@pytest.mark.slow
def test_kill9_at_three_random_moments_then_resume_equals_uninterrupted(tiny_grid, tmp_path):
    """A SIGTERM, kill -9 at three random moments (a random number of finished jobs, plus a random fraction of a
    second so the kill lands inside a job), then a full resume: the results equal the uninterrupted run's. The SIGTERM
    comes first, once the process has finished a job of its own (its handler is set), while most of the grid is
    still to run: sent near the grid's end it could find the process already finished."""
    args, reference, _ = tiny_grid
    out = tmp_path / "killed"
    total = markers(reference)
    proc = cli([*args, "--out", str(out)])
    while markers(out) < 1 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "finished jobs are kept" in stdout, stdout
    rng = random.Random(7)
    targets = sorted(rng.sample(range(1, total - 1), 3))
    for target in targets:
        proc = cli([*args, "--out", str(out)])
        deadline = time.time() + 300
        while markers(out) < target and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert markers(out) < total and not (out / "cbr_tiny" / "DONE").exists(), "killed too late to test"
    proc = cli([*args, "--out", str(out)])
    stdout, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, stdout
    same_results(reference, out)


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_two_workers_give_the_uninterrupted_results(executor, tiny_grid, tmp_path):
    if executor == "ray":
        pytest.importorskip("ray", reason="the ray executor needs `pip install '.[ray]'`")
    args, reference, ref_out = tiny_grid
    out = tmp_path / executor
    t0 = time.perf_counter()
    proc = cli([*args, "--out", str(out), "--executor", executor, "--workers", "2"])
    stdout, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, stdout
    print(f"{executor} --workers 2: {time.perf_counter() - t0:.0f} s")
    same_results(reference, out)


def failing(step: str, times: int, exc: Exception):
    """A STEPS entry that raises `exc` on its first `times` calls, then runs the real step."""
    real, calls = jobs.STEPS[step], []

    def step_fn(run, job):
        calls.append(job)
        if len(calls) <= times:
            raise exc
        return real(run, job)
    return step_fn, calls


@pytest.mark.slow
def test_a_failing_job_is_retried_once(tiny_exp, monkeypatch, capsys):
    fn, calls = failing("final", 1, RuntimeError("flaky"))
    monkeypatch.setitem(jobs.STEPS, "final", fn)
    assert run_jobs(tiny_exp, [("mobilenet", 0)], InProcess()) == []
    assert len(calls) == 2 and "FAILED (flaky); retrying" in capsys.readouterr().err
    assert (tiny_exp.out / "mobilenet_d0" / "DONE").is_file()


@pytest.mark.slow
def test_a_job_failing_twice_fails_its_run_and_dependents_only(tiny_exp, monkeypatch):
    fn, calls = failing("final", 2, RuntimeError("broken final"))
    monkeypatch.setitem(jobs.STEPS, "final", fn)
    failed = run_jobs(tiny_exp, [("mobilenet", 1), ("mobilenetv2", 0)], InProcess())
    out = tiny_exp.out
    # mobilenet_d0's final failed twice; mobilenet_d1 and its stack model need it; mobilenetv2_d0's final ran (3rd
    # call) and finished
    assert failed == ["mobilenet_d0", "mobilenet_d0+stack", "mobilenet_d1"]
    assert "needs mobilenet_d0, which failed" in (out / "mobilenet_d0+stack" / "error.txt").read_text()
    assert "broken final" in (out / "mobilenet_d0" / "error.txt").read_text()
    assert "needs mobilenet_d0, which failed" in (out / "mobilenet_d1" / "error.txt").read_text()
    assert (out / "mobilenetv2_d0" / "DONE").is_file() and not (out / "mobilenet_d0" / "DONE").exists()
    assert [j.run for j in calls] == ["mobilenet_d0", "mobilenet_d0", "mobilenetv2_d0"]
    # finished CV jobs are kept; a re-run (the fault gone) redoes only what is missing and clears the error
    monkeypatch.setitem(jobs.STEPS, "final", failing("final", 0, RuntimeError())[0])
    monkeypatch.setitem(jobs.STEPS, "cv", failing("cv", 99, RuntimeError("cv must not rerun"))[0])
    assert run_jobs(tiny_exp, [("mobilenet", 0)], InProcess()) == []
    assert (out / "mobilenet_d0" / "DONE").is_file() and not (out / "mobilenet_d0" / "error.txt").exists()


def test_a_full_disk_stops_the_grid_with_one_message(tiny_exp, monkeypatch):
    fn, calls = failing("cv", 99, OSError(errno.ENOSPC, "No space left on device", "history.csv"))
    monkeypatch.setitem(jobs.STEPS, "cv", fn)
    with pytest.raises(BenchmarkInputError, match=r"cannot write results \(No space left on device: history.csv"):
        run_jobs(tiny_exp, [("mobilenet", 0)], InProcess())
    assert len(calls) == 1  # not retried
    assert not list(tiny_exp.out.glob("*/DONE"))
