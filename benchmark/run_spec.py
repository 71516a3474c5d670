"""What one model run is, fixed when it is made (RunSpec, recorded as the run's config.json), its seeds, and the
check that a folder on disk holds a run of the same settings before its results are reused."""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_prep import atomic
from data_prep.provenance import code_version, package_versions

from .cache import weights_fingerprint
from .errors import BenchmarkInputError
from .infer import FeaturePass, feature_pass
from .layout import (CONFIG, DONE, ERROR, JOBS, MODEL_DIR, RESULTS_FORMAT, SELECTION, check_format, job_dir,
                     job_dir_name, run_name)
from .log import get as get_log
from .preprocess import Preprocessing
from .profiles import Profile
from .registry import BackboneSpec, choose_weights

if TYPE_CHECKING:
    from .protocol import Experiment
    from .task import Task


def job_seed(*parts: Any) -> int:
    """A job's seed depends only on what the job is, never on the order jobs ran in."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little") % (2**31 - 1)


def learning_rates(exp: Experiment, backbone: BackboneSpec, depth: int) -> tuple[float, ...]:
    """The LR grid a run's CV sweeps (the profile's, for this backbone, depth and task)."""
    return exp.profile.for_backbone(backbone).lrs(depth, backbone.pretrained, exp.task.has_target)


@dataclass(frozen=True, eq=False)
class RunSpec:
    """One backbone at one depth (or one CBR baseline) under an Experiment: everything that says what the run is,
    nothing it computes. Made by `of`; every field is fixed from then on."""

    exp: Experiment
    backbone: BackboneSpec
    depth: int
    name: str
    dir: Path
    profile: Profile                  # the experiment's profile for this backbone
    prep: Preprocessing
    weights_choice: str               # what config.json records (auto resolved)
    weights_path: str | None          # what the Keras constructor gets
    lrs: tuple[float, ...]

    @classmethod
    def of(cls, exp: Experiment, backbone: BackboneSpec, depth: int) -> RunSpec:
        if not backbone.pretrained and depth != 0:
            raise BenchmarkInputError(f"{backbone.key} is trained from scratch: it has no depth {depth}")
        profile = exp.profile.for_backbone(backbone)
        prep = Preprocessing(profile.input_size(backbone), backbone.preprocess_mode, input_kind=exp.input_kind)
        choice, path = choose_weights(backbone, exp.weights, prep.input_size)
        name = run_name(backbone.key, depth)
        return cls(exp, backbone, depth, name, exp.out / name, profile, prep, choice, path,
                   learning_rates(exp, backbone, depth))

    @property
    def task(self) -> Task:
        return self.exp.task

    @property
    def classes(self) -> tuple[str, ...]:
        return self.exp.ds.classes

    def seed(self, *parts: Any) -> int:
        """The seed of one of this run's draws, named by `parts` (job_seed)."""
        return job_seed(self.exp.seed, self.name, *parts)

    def job_dir(self, job: str) -> Path:
        return job_dir(self.dir, job)

    def config(self) -> dict[str, Any]:
        return {
            "results_format": RESULTS_FORMAT,
            "run": self.name,
            "backbone": self.backbone.key,
            "backbone_name": self.backbone.name,
            "depth": self.depth if self.backbone.pretrained else "scratch",
            "weights": self.weights_choice,
            "weights_file": weights_fingerprint(self.weights_path),
            "preprocessing": self.prep.key(),
            "profile": self.profile.to_dict(),
            "seed": self.exp.seed,
            "data": self.exp.data_desc,
            **self.task.describe(),
            "classes": list(self.classes),
            "learning_rates": list(self.lrs),
            "cached_path": self.exp.use_cache,
            **({"feature_pass": asdict(self.feature_pass())}
               if self.backbone.pretrained and self.exp.use_cache else {}),
            "code_version": code_version(),
            "versions": package_versions(),
        }

    def feature_pass(self) -> FeaturePass:
        """The precision and batch size the frozen part runs at over the cached views on this device."""
        p = self.profile
        return feature_pass(p.feature_precision, p.feature_batch, cpu_bf16=self.backbone.cpu_bf16)

    def check_dir(self, force: bool) -> bool:
        """True if this run is already complete (check_run_dir)."""
        return check_run_dir(self.dir, self.config(), force)

    def prepare(self, force: bool) -> bool:
        """True if this run is already complete; else its folder is started (prepare_run_dir)."""
        return prepare_run_dir(self.dir, self.config(), self.exp, force)


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a config.json that must match for results on disk to be reused."""
    c = json.loads(json.dumps(config, default=str))  # as it reads back from config.json
    data = {k: v for k, v in c.get("data", {}).items() if k != "path"}  # the same data may live elsewhere
    if data.get("test_data"):
        data["test_data"] = {k: data["test_data"].get(k) for k in ("manifest_sha256", "content_sha256")}
    return {**{k: c.get(k) for k in ("results_format", "run", "weights", "weights_file", "preprocessing",
                                     "profile", "seed", "classes", "cached_path", "target", "stack_model")},
            "task": c.get("task", "classification"), "data": data}  # results made before tasks classified


def check_run_dir(directory: Path, config: dict[str, Any], force: bool) -> bool:
    """True if the run in `directory` is complete. Refuses a directory made with other settings unless forced
    (then it is removed and redone)."""
    cfg_path = directory / CONFIG
    if force and directory.exists():
        shutil.rmtree(directory)
    if cfg_path.is_file():
        why = atomic.damage(cfg_path)
        if why:
            raise BenchmarkInputError(f"{cfg_path} is damaged ({why}), so the run's settings cannot be checked; "
                                      f"use another --out, or --force to redo it")
        old = atomic.read_json(cfg_path)
        check_format(cfg_path, old, fix="use another --out, or --force to redo it")
        mine, theirs = _identity(config), _identity(old)
        diff = [k for k in mine if theirs[k] != mine[k]]
        if diff:
            raise BenchmarkInputError(f"{directory} holds a run made with other settings ({', '.join(diff)}); "
                                      f"use another --out, or --force to redo it")
    return (directory / DONE).is_file()


def _redo_damaged(directory: Path) -> None:
    """A file of the run that does not read back whole (atomic.damage: a crash or a full disk cut it) is never used:
    the marker of the job that wrote it goes, and with it the run's DONE, so that job and the test after it are
    redone. A damaged file stays until that job rewrites it (a damaged selection.json, the selection job's own
    marker, goes)."""
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        why = atomic.damage(path)
        if why is None:
            continue
        part = path.relative_to(directory).parts
        stale = [directory / DONE]
        if part[0] == JOBS and len(part) > 2:
            stale.append(directory / JOBS / part[1] / DONE)
        elif part[0] == MODEL_DIR:  # the final fit exports the model
            stale.append(job_dir(directory, job_dir_name("final")) / DONE)
        elif part == (SELECTION,):  # the selection job's marker is its output
            stale.append(path)
        for marker in stale:
            marker.unlink(missing_ok=True)
        get_log("run_spec").warning(f"{path} is damaged ({why}): redoing the job that wrote it")


def prepare_run_dir(directory: Path, config: dict[str, Any], exp: Experiment, force: bool) -> bool:
    """True if the run in `directory` is complete (check_run_dir); else it is started: config.json, folds.csv."""
    check_run_dir(directory, config, force)
    if directory.is_dir():
        _redo_damaged(directory)
    if (directory / DONE).is_file():
        return True
    directory.mkdir(parents=True, exist_ok=True)
    atomic.write_json(directory / CONFIG, config)
    exp.write_folds(directory)
    (directory / ERROR).unlink(missing_ok=True)  # from an earlier attempt; this one starts afresh
    return False
