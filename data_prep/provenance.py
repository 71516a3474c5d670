"""What made a file: code version and package versions, recorded in every dataset.json and config.json."""
from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """`git describe` of the checkout (with -dirty when it has uncommitted changes), else the package version."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        try:
            return metadata.version("cardiac-slice-benchmark")
        except metadata.PackageNotFoundError:
            return "unknown"


def package_versions(names: tuple[str, ...] = ("numpy", "pandas", "scikit-learn", "tensorflow", "tensorflow-cpu",
                                                 "keras", "h5py", "nibabel", "pydicom", "opencv-python-headless")
                     ) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
