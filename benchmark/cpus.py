"""How many CPU cores this process may use."""
from __future__ import annotations

import os


def usable_cpus() -> int:
    """The cores in this process's affinity mask (Linux: what taskset, cgroups-aware launchers and Slurm grant),
    else the machine's count where the OS has no os.sched_getaffinity (macOS, Windows)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
