"""How many CPU cores this process may use, and whether they compute in bfloat16."""
from __future__ import annotations

import functools
import os
from pathlib import Path

# CPU flags (Linux /proc/cpuinfo) of instructions that multiply bfloat16 natively; oneDNN then runs bfloat16
# convolutions faster than float32 ones (AMX tiles on Intel Sapphire Rapids, AVX512-BF16 on AMD Zen 4 and Intel)
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def usable_cpus() -> int:
    """The cores in this process's affinity mask (Linux: what taskset, cgroups-aware launchers and Slurm grant),
    else the machine's count where the OS has no os.sched_getaffinity (macOS, Windows)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@functools.cache
def has_bf16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (BF16_FLAGS); False where /proc/cpuinfo does not exist."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    return any(f in flags for f in BF16_FLAGS)
