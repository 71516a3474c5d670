"""The run grid as an explicit job graph, and the executors that run it.

Jobs of one model run (protocol.ModelRun), with what each needs first; the graph owns every dependency, and a job
that reads another job's output is handed it (`start_head`):

    features          the frozen part's outputs for the augmentation bank (cached path only)
    cv lr k           features; at depth 1 also <backbone>_d0 foldinit k, whose head it starts from
    cv_sweep          instead of the cv jobs, where the executor lets a job run fits in threads and the run's fits
                      gain from it (fits.parallel_fits): features; every CV fit of the run, several at a time
    select            every cv job (or the cv_sweep) of the run
    foldinit k        depth 0, when depth 1 of the backbone is planned: select
    final             select; at depth 1 also <backbone>_d0 final, whose head it starts from
    test              final; writes test metrics, timing.json and the run's DONE marker
    stack             (depth 0 of a pretrained backbone, cached path, slice-range data) features and final: the
                      whole stack-context run <backbone>_d0+stack (stack.py), seconds of work
    segment           (with --head segment or both) nothing: the whole segmentation-head run <run>+seg
                      (segment.py), its CV and final fits each resumable from its own marker

Every job writes its output atomically with a completion marker (`markers`), so a re-run skips what is done and
redoes what is not, and a job's result depends only on its inputs and seed (run_spec.job_seed): which executor ran
it, in which process and in which order, does not enter. Executors:

    local, --workers 1   in this process, in the paper's order (progress bars shown)
    local, --workers N   N spawned worker processes
    ray                  Ray tasks on a local instance or a cluster (--address); results on shared storage

A job that raises is retried once; if it fails again its run is marked failed (<run>/error.txt) and the jobs that
need it are skipped, while the rest of the grid goes on. Bad input and an unwritable or full disk stop the grid.
"""
from __future__ import annotations

import errno
import functools
import os
import queue
import signal
import sys
import time
import traceback
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from tqdm.auto import tqdm

from data_prep import atomic
from .errors import USER_ERRORS, BenchmarkInputError
from .fits import Head, load_head, parallel_fits
from .layout import (DONE, ERROR, SELECTION, TEST_METRICS, job_dir, job_dir_name, run_name, segment_run_name,
                     stack_run_name)
from .protocol import Experiment, ModelRun
from .registry import get_spec
from .run_spec import RunSpec, learning_rates
from .segment import SegmentRun
from .stack import StackRun
from .log import get as get_log
from .tf_quiet import quiet_tensorflow

LOG = get_log("jobs")

RETRIES = 1
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


@dataclass(frozen=True, order=True)
class Job:
    backbone: str
    depth: int
    step: str                # features | cv | cv_sweep | select | foldinit | final | test | stack | segment
    lr: float | None = None
    fold: int | None = None

    @property
    def run(self) -> str:
        name = run_name(self.backbone, self.depth)
        return {"stack": stack_run_name, "segment": segment_run_name}.get(self.step, str)(name)

    def folder(self, out: Path) -> Path:
        """Where a features, cv, foldinit or final job writes its outputs."""
        return job_dir(out / self.run, job_dir_name(self.step, self.lr, self.fold))

    def __str__(self) -> str:
        detail = (f" lr {self.lr:g}" if self.lr is not None else "") + (f" fold {self.fold}"
                                                                        if self.fold is not None else "")
        return f"{self.run} {self.step}{detail}"


def start_of(job: Job) -> Job | None:
    """The depth-0 job whose head a depth-1 fit starts from: the fold model of its fold, or the final model."""
    if job.depth != 1 or job.step not in ("cv", "final"):
        return None
    return Job(job.backbone, 0, "foldinit" if job.step == "cv" else "final", fold=job.fold)


def start_head(exp: Experiment, job: Job) -> Head | None:
    """What `start_of(job)` wrote for the job to start from (None: the job starts from its own seed)."""
    source = start_of(job)
    return None if source is None else load_head(source.folder(exp.out))


def sweep_fits(exp: Experiment, sweep: Job) -> list[Job]:
    """The CV fits a cv_sweep job runs: every (LR, fold) of its run."""
    lrs = learning_rates(exp, get_spec(sweep.backbone), sweep.depth)
    return [Job(sweep.backbone, sweep.depth, "cv", lr, k) for lr in lrs for k in range(len(exp.folds))]


def markers(exp: Experiment, job: Job) -> list[Path]:
    """The files whose presence says a job is complete, each written last, after the job's outputs."""
    if job.step == "cv_sweep":
        return [m for fit in sweep_fits(exp, job) for m in markers(exp, fit)]
    if job.step == "select":
        return [exp.out / job.run / SELECTION]
    if job.step in ("test", "stack", "segment"):
        return [exp.out / job.run / DONE]
    return [job.folder(exp.out) / DONE]


def is_done(exp: Experiment, job: Job) -> bool:
    return all(m.is_file() for m in markers(exp, job))


def with_dependencies(pairs: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Depth-1 runs start from depth-0 models, so a planned depth 1 brings its depth 0 along (before it)."""
    out: list[tuple[str, int]] = []
    for key, depth in pairs:
        if depth == 1 and (key, 0) not in pairs and (key, 0) not in out:
            out.append((key, 0))
        out.append((key, depth))
    return out


def build_graph(exp: Experiment, pairs: list[tuple[str, int]],
                fit_threads: bool = False) -> "OrderedDict[Job, tuple[Job, ...]]":
    """Job -> the jobs it needs, in the order a single process runs them (the paper's model order).
    `fit_threads`: whether the executor lets one job run fits in threads (Executor.fit_threads)."""
    graph: OrderedDict[Job, tuple[Job, ...]] = OrderedDict()
    if "segment" in exp.heads:
        for key, depth in pairs:
            graph[Job(key, depth, "segment")] = ()
    if "classify" not in exp.heads:
        return graph
    pairs = with_dependencies(pairs)
    for key, depth in pairs:
        spec = get_spec(key)
        features = (Job(key, depth, "features"),) if exp.use_cache else ()
        for job in features:
            graph[job] = ()
        if parallel_fits(exp, spec, depth, fit_threads) > 1:
            cv = [Job(key, depth, "cv_sweep")]
            graph[cv[0]] = features
        else:
            cv = [Job(key, depth, "cv", lr, k) for lr in learning_rates(exp, spec, depth)
                  for k in range(len(exp.folds))]
            for job in cv:
                graph[job] = features + _start(job)
        select = Job(key, depth, "select")
        graph[select] = tuple(cv)
        if depth == 0 and (key, 1) in pairs:
            for k in range(len(exp.folds)):
                graph[Job(key, 0, "foldinit", fold=k)] = (select,)
        final = Job(key, depth, "final")
        graph[final] = (select,) + _start(final)
        graph[Job(key, depth, "test")] = (final,)
        if depth == 0 and spec.pretrained and exp.stack_models:
            graph[Job(key, 0, "stack")] = features + (final,)
    return graph


def _start(job: Job) -> tuple[Job, ...]:
    source = start_of(job)
    return () if source is None else (source,)


# ---- running one job (in whichever process the executor chose) -----------------------------------------------------
STEPS: dict[str, Callable[[ModelRun, Job], Any]] = {
    "features": lambda run, job: run.features(),
    "cv": lambda run, job: run.cv_job(job.lr, job.fold, start=start_head(run.spec.exp, job)),
    # the graph has a sweep only where its executor allows threads
    "cv_sweep": lambda run, job: run.cv_sweep(parallel_fits(run.spec.exp, run.spec.backbone, job.depth, True)),
    "select": lambda run, job: run.selection(),
    "foldinit": lambda run, job: run.foldinit(job.fold),
    "final": lambda run, job: run.final(start=start_head(run.spec.exp, job)),
    "test": lambda run, job: run.test(),
    "stack": lambda run, job: StackRun(run.spec).run(run),
    "segment": lambda run, job: SegmentRun(run.spec).run(),
}


class Worker:
    """The experiments and model runs of one process, kept between jobs so that images are read and a model is built
    and compiled once per process, not once per job. An experiment is known by its output directory (one per grid).

    Only the most recent runs are kept: a model run holds its network and cached tensors in memory."""

    keep_runs = 3

    def __init__(self) -> None:
        self.experiments: dict[str, Experiment] = {}
        self.runs: OrderedDict[tuple[str, str, int], ModelRun] = OrderedDict()

    def run_for(self, exp: Experiment, job: Job) -> ModelRun:
        exp = self.experiments.setdefault(str(exp.out), exp)
        key = (str(exp.out), job.backbone, job.depth)
        if key not in self.runs:
            self.runs[key] = ModelRun(exp, get_spec(job.backbone), job.depth)
            while len(self.runs) > self.keep_runs:
                self.runs.popitem(last=False)
        self.runs.move_to_end(key)
        return self.runs[key]

    def execute(self, exp: Experiment, job: Job) -> float:
        """Run one job unless its markers say it is done; returns the seconds it took (0 when skipped).

        Worker processes receive the Experiment pickled: the dataset's rows and the split, not its images."""
        run = self.run_for(exp, job)
        if is_done(run.spec.exp, job):
            return 0.0
        t0 = time.perf_counter()
        STEPS[job.step](run, job)
        return time.perf_counter() - t0


@functools.cache
def process_worker() -> Worker:
    """The Worker of a worker process, which serves jobs for as long as the process lives."""
    return Worker()


def _quiet_worker() -> None:
    """Worker processes print no progress bars (they would interleave); the driver prints one line per job."""
    os.environ["TQDM_DISABLE"] = "1"
    quiet_tensorflow()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when workers stop


def _pool_execute(exp: Experiment, job: Job) -> float:
    return process_worker().execute(exp, job)


def _remote_execute(exp: Experiment, job: Job) -> float:
    _quiet_worker()
    return process_worker().execute(exp, job)


# ---- executors: where jobs run ------------------------------------------------------------------------------------
class Executor:
    """Runs jobs asynchronously: submit() starts one, completed() yields (job, seconds or exception) as they end.
    `fit_threads`: whether one job may run several fits in threads (build_graph then plans CV sweeps)."""

    slots = 1
    fit_threads = False

    def submit(self, exp: Experiment, job: Job) -> None:
        raise NotImplementedError

    def completed(self) -> Iterator[tuple[Job, float | BaseException]]:
        raise NotImplementedError

    def close(self, cancel: bool = False) -> None:
        """Release workers; with cancel, jobs in flight are abandoned (their markers were never written)."""

    def use_at_most(self, jobs: int) -> None:
        """Told, before a grid's first submit, how many of its jobs can ever run at once."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, kind, value, tb) -> None:
        self.close(cancel=kind is not None)


class InProcess(Executor):
    """Jobs one after another in this process, whose cores are otherwise idle: a cached depth-0 run's CV fits may
    then run in threads (one cv_sweep job)."""

    fit_threads = True

    def __init__(self) -> None:
        self.pending: list[tuple[Experiment, Job]] = []
        self.worker = Worker()

    def submit(self, exp, job):
        self.pending.append((exp, job))

    def completed(self):
        exp, job = self.pending.pop(0)
        try:
            yield job, self.worker.execute(exp, job)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001  the scheduler records, retries or stops on it
            yield job, exc


class ProcessPool(Executor):
    """Worker processes, started at the first submit: each loads TensorFlow, so no more start than can work."""

    def __init__(self, workers: int) -> None:
        self.slots = workers
        self.pool = None
        self.done: queue.Queue = queue.Queue()

    def use_at_most(self, jobs: int) -> None:
        if self.pool is None and jobs < self.slots:
            LOG.info(f"--workers {self.slots}: at most {jobs} job(s) can run at once here, so {max(1, jobs)} worker "
                     f"process(es) start")
            self.slots = max(1, jobs)

    def submit(self, exp, job):
        if self.pool is None:
            import multiprocessing
            # spawn, not fork: TensorFlow's thread pools do not survive a fork
            self.pool = multiprocessing.get_context("spawn").Pool(self.slots, initializer=_quiet_worker)
        self.pool.apply_async(_pool_execute, (exp, job), callback=lambda s: self.done.put((job, s)),
                              error_callback=lambda e: self.done.put((job, e)))

    def completed(self):
        yield self.done.get()

    def close(self, cancel=False):
        if self.pool is None:
            return
        if cancel:
            self.pool.terminate()
        else:
            self.pool.close()
        self.pool.join()


class RayExecutor(Executor):
    def __init__(self, address: str | None, workers: int | None) -> None:
        try:
            import ray
        except ImportError:
            raise BenchmarkInputError("--executor ray needs Ray: pip install '.[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            if address:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            else:  # a private local instance, reachable from this machine only
                ray.init(include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
        resources = ray.cluster_resources()
        # one GPU per job where the cluster has GPUs, else one CPU per job (TensorFlow threads within it)
        options = {"num_gpus": 1, "num_cpus": 1} if resources.get("GPU", 0) >= 1 else {"num_cpus": 1}
        self.remote = ray.remote(max_retries=0, **options)(_remote_execute)
        self.slots = workers or max(1, int(resources.get("GPU", 0) or resources.get("CPU", 1)))
        self.inflight: dict[Any, Job] = {}

    def submit(self, exp, job):
        self.inflight[self.remote.remote(exp, job)] = job

    def completed(self):
        ready, _ = self.ray.wait(list(self.inflight), num_returns=1)
        job = self.inflight.pop(ready[0])
        try:
            yield job, self.ray.get(ready[0])
        except self.ray.exceptions.RayError as exc:
            yield job, exc.as_instanceof_cause() if isinstance(exc, self.ray.exceptions.RayTaskError) else exc

    def close(self, cancel=False):
        if cancel:
            for ref in self.inflight:
                self.ray.cancel(ref, force=True)


def make_executor(name: str, workers: int, address: str | None) -> Executor:
    if workers < 1:
        raise BenchmarkInputError(f"--workers must be >= 1, got {workers}")
    if name == "ray":
        return RayExecutor(address, workers if workers > 1 else None)
    if address:
        raise BenchmarkInputError("--address is for --executor ray")
    return InProcess() if workers == 1 else ProcessPool(workers)


# ---- the scheduler ---------------------------------------------------------------------------------------------------
def run_jobs(exp: Experiment, pairs: list[tuple[str, int]], executor: Executor, force: bool = False) -> list[str]:
    """Run every job of the grid on the executor, each once its needs are done. Returns the names of failed runs.

    The caller closes the executor (it may serve several experiments, e.g. the points of a label-efficiency curve);
    on an exception, closing it with cancel abandons the jobs in flight."""
    graph = build_graph(exp, pairs, executor.fit_threads)
    runs = _runs(exp, graph)
    if not force:  # a run directory of other settings or an older format is refused before OUT changes at all
        for run in runs:
            run.check_dir(force=False)
    exp.write_folds(exp.out)
    finished = {run.name: run.prepare(force) for run in runs}
    # a finished run's jobs are done, except the fold models a depth 1 planned since then starts from: a depth-0
    # run finished without depth 1 never made them
    done = {j for j in graph if is_done(exp, j) or (finished[j.run] and j.step != "foldinit")}
    failed: dict[str, str] = {}
    attempts: dict[Job, int] = {}
    inflight: set[Job] = set()
    todo = [j for j in graph if j not in done]
    total, n_done = len(todo), 0
    executor.use_at_most(_widest(graph, todo))
    for name, complete in finished.items():
        if complete:
            LOG.info(f"{name}: finished earlier ({_scores(exp, name)}), skipped")
    # a bar with the ETA over the whole graph on a terminal (tqdm leaves it out when stderr is not one)
    bar = tqdm(total=total, desc=f"{exp.out.name}: jobs", unit="job", leave=False, file=sys.stderr,
               disable=bool(os.environ.get("TQDM_DISABLE")) or None)
    previous = {signum: signal.signal(signum, _raise_interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        while todo or inflight:
            for job in [j for j in todo if j.run in failed or any(d.run in failed for d in graph[j])]:
                todo.remove(job)  # its run failed, or it needs a job of a failed run
                failed.setdefault(job.run, f"needs {next(d for d in graph[job] if d.run in failed).run}, which failed")
            ready = [j for j in todo if all(d in done for d in graph[j])]
            for job in ready[:max(0, executor.slots - len(inflight))]:
                todo.remove(job)
                inflight.add(job)
                executor.submit(exp, job)
            if not inflight:
                break
            for job, result in executor.completed():
                inflight.discard(job)
                if isinstance(result, BaseException):
                    _stop_on_fatal(result)
                    attempts[job] = attempts.get(job, 0) + 1
                    if attempts[job] <= RETRIES:
                        LOG.warning(f"{job}: FAILED ({result}); retrying")
                        todo.insert(0, job)
                    else:
                        failed[job.run] = f"{job}: " + "".join(traceback.format_exception(result))
                        LOG.warning(f"{job.run}: FAILED in {job.step}: {result} (see "
                                    f"{exp.out / job.run / 'error.txt'})")
                    continue
                done.add(job)
                n_done += 1
                line = f"[{n_done}/{total}] {job} ({result:.1f} s)"
                if job.step in ("test", "segment"):
                    line += f": {_scores(exp, job.run)}"
                bar.update()
                LOG.info(line)
    except KeyboardInterrupt as exc:  # what was cut short, for the line that says how to resume
        raise Interrupted(getattr(exc, "signum", signal.SIGINT), tuple(sorted(map(str, inflight))), n_done,
                          total) from None
    finally:
        bar.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for name, error in failed.items():
        atomic.write_text(exp.out / name / ERROR, error)
    return sorted(failed)


def run_names(exp: Experiment, pairs: list[tuple[str, int]]) -> list[str]:
    """The runs a grid of `pairs` makes (stack-context and segmentation runs included)."""
    return [run.name for run in _runs(exp, build_graph(exp, pairs, fit_threads=False))]


def _widest(graph: "OrderedDict[Job, tuple[Job, ...]]", todo: list[Job]) -> int:
    """The most of `todo` that can run at once: jobs started as soon as their needs are done, each taking one step
    (the graph lists a job after its needs)."""
    step: dict[Job, int] = {}
    pending = set(todo)
    for job in graph:
        if job in pending:
            step[job] = 1 + max((step[d] for d in graph[job] if d in step), default=0)
    return max(Counter(step.values()).values(), default=0)


def _runs(exp: Experiment, graph: "OrderedDict[Job, tuple[Job, ...]]") -> list[RunSpec | StackRun | SegmentRun]:
    """The runs whose jobs are in the graph, in its order."""
    pairs = dict.fromkeys((j.backbone, j.depth) for j in graph)
    specs = {pair: RunSpec.of(exp, get_spec(pair[0]), pair[1]) for pair in pairs}
    per_slice = [s for pair, s in specs.items() if any(j.step != "segment" and (j.backbone, j.depth) == pair
                                                       for j in graph)]
    return (per_slice + [StackRun(s) for s in per_slice if Job(s.backbone.key, s.depth, "stack") in graph]
            + [SegmentRun(s) for s in specs.values() if Job(s.backbone.key, s.depth, "segment") in graph])


def run_in_process(exp: Experiment, target: Job) -> None:
    """`target` and every job it needs that is not done yet, one after another in this process in the graph's
    order, without the scheduler's retries: a failing job raises."""
    backbone = get_spec(target.backbone)
    graph = build_graph(exp, [(target.backbone, 1 if backbone.pretrained else 0)])
    needed, todo = set(), [target]
    while todo:
        job = todo.pop()
        if job not in needed:
            needed.add(job)
            todo.extend(graph[job])
    jobs = OrderedDict((j, graph[j]) for j in graph if j in needed)
    finished = {run.name: run.prepare(force=False) for run in _runs(exp, jobs)}
    worker = Worker()
    for job in jobs:
        if not finished[job.run]:
            worker.execute(exp, job)


def _scores(exp: Experiment, run: str) -> str:
    return "test " + headline(atomic.read_json(exp.out / run / TEST_METRICS))


def headline(m: dict[str, Any]) -> str:
    """The test figures a progress line shows: the class ones and/or the regression ones beside the baseline."""
    parts = []
    if "macro_f1" in m:
        parts.append(f"macro-F1 {m['macro_f1']:.3f}, accuracy {m['accuracy']:.3f}")
    if "mae" in m:
        parts.append(f"MAE {m['mae']:.4g} (predicting the training mean: {m['mae_mean_baseline']:.4g}), "
                     f"RMSE {m['rmse']:.4g}, R² {m['r2']:.3f}")
    return "; ".join(parts)


class Interrupted(KeyboardInterrupt):
    """The grid stopped by Ctrl-C (SIGINT) or SIGTERM: which, the jobs it cut short, how many it had finished. The
    cut jobs wrote no marker, so a resume redoes them from their start."""

    def __init__(self, signum: int, stopped: tuple[str, ...] = (), done: int = 0, total: int = 0) -> None:
        super().__init__(signum)
        self.signum, self.stopped, self.done, self.total = signum, stopped, done, total

    def __str__(self) -> str:
        during = f" during {', '.join(self.stopped)}" if self.stopped else ""
        return (f"stopped by {signal.Signals(self.signum).name}{during}, {self.done} of {self.total} job(s) "
                f"finished")


def _raise_interrupt(signum, frame):
    raise Interrupted(signum)


def _stop_on_fatal(exc: BaseException) -> None:
    """Bad input is not retried (it would fail again, and every other model too) and stops the grid; so does a disk
    that cannot take results."""
    if isinstance(exc, USER_ERRORS):
        raise exc
    if isinstance(exc, OSError) and exc.errno in DISK_ERRORS:
        raise BenchmarkInputError(f"cannot write results ({exc.strerror}: {exc.filename or ''}); finished jobs "
                                  f"are kept and a re-run resumes") from exc
