"""What setup.cfg promises: console commands that reach the right mains, a [gpu] extra that cannot clash with the
default TensorFlow, a quick `--help` (no TensorFlow import), and a CPU count that works without
os.sched_getaffinity (macOS)."""
from __future__ import annotations

import configparser
import importlib
import os
import subprocess
import sys

from packaging.requirements import Requirement

from conftest import REPO


def setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg


def requirements(text: str) -> dict[str, Requirement]:
    reqs = [Requirement(line) for line in text.strip().splitlines() if line.strip()]
    return {r.name: r for r in reqs}


def test_console_scripts_reach_the_module_mains(capsys):
    scripts = dict(line.split(" = ") for line in
                   setup_cfg()["options.entry_points"]["console_scripts"].strip().splitlines())
    assert scripts == {"cardiac-bench": "benchmark.__main__:main", "cardiac-prep": "data_prep.__main__:main"}
    mains = {name: getattr(importlib.import_module(target.split(":")[0]), target.split(":")[1])
             for name, target in scripts.items()}
    # subcommands are dispatched by cardiac-bench's main, e.g. `cardiac-bench weights`
    assert mains["cardiac-bench"](["weights"]) == 0
    assert "mobilenet_2_5_224_tf_no_top.h5" in capsys.readouterr().out


def test_gpu_extra_uses_the_default_tensorflow_distribution():
    """tensorflow-cpu and tensorflow install the same package: [gpu] must add CUDA to the default's distribution."""
    cfg = setup_cfg()
    base = requirements(cfg["options"]["install_requires"])
    gpu = requirements(cfg["options.extras_require"]["gpu"])
    assert "tensorflow-cpu" not in base
    assert gpu["tensorflow"].extras == {"and-cuda"}
    assert gpu["tensorflow"].specifier == base["tensorflow"].specifier
    for name, req in base.items():  # ranges, not pins, and every one capped
        assert req.specifier and all(s.operator != "==" for s in req.specifier), name
        assert any(s.operator == "<" for s in req.specifier), name
    assert set(requirements(cfg["options.extras_require"]["dicom-codecs"])) == {
        "pylibjpeg", "pylibjpeg-libjpeg", "python-gdcm"}


def imported_modules(*args: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "benchmark", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}


def test_help_and_weights_listing_import_no_tensorflow():
    for args in (["--help"], ["weights"]):
        modules = imported_modules(*args)
        assert "benchmark.catalog" in modules
        heavy = sorted(m for m in modules if m.split(".")[0] in ("tensorflow", "keras"))
        assert not heavy, (args, heavy[:5])


def test_usable_cpus_without_sched_getaffinity(monkeypatch):
    from benchmark.cpus import usable_cpus
    if hasattr(os, "sched_getaffinity"):
        assert usable_cpus() == len(os.sched_getaffinity(0))
        monkeypatch.delattr(os, "sched_getaffinity")
    assert usable_cpus() == (os.cpu_count() or 1)
