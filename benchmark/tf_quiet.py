"""TensorFlow imported without its C++ start-up lines.

TensorFlow 2.21 prints its CPU-feature and oneDNN notices from C++ when it is imported and runs its first op, where
TF_CPP_MIN_LOG_LEVEL no longer reaches them; they bury the first lines a user should read. Every entry point imports TensorFlow through
`quiet_tensorflow` first, with file descriptor 2 pointed at /dev/null for the import and one op alone (a failed import is a
BenchmarkInputError, shown once the descriptor is restored). CARDIAC_BENCH_TF_LOGS=1 shows the lines again.
"""
from __future__ import annotations

import importlib.util
import os
import sys

from .errors import BenchmarkInputError

SHOW_ENV = "CARDIAC_BENCH_TF_LOGS"


def quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if os.environ.get(SHOW_ENV) or "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is None \
            or os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return  # another Keras backend (perf on a machine without TensorFlow) or nothing to silence
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        import tensorflow as tf
        tf.matmul(tf.ones((1, 1)), tf.ones((1, 1)))  # the oneDNN notice comes with the first op, not the import
    except (ImportError, MemoryError) as exc:
        raise BenchmarkInputError(f"TensorFlow cannot be loaded ({exc or type(exc).__name__}){_why_not()}") from None
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _why_not() -> str:
    """An address-space limit (ulimit -v) is the cause a user can most easily put right: TensorFlow maps ~1.5 GiB of
    libraries and allocators before its first op."""
    import resource
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return "; reinstall it: pip install --force-reinstall tensorflow"
    return (f"; this process may map at most {limit / 2**30:.2g} GiB of memory (ulimit -v {limit // 1024}), too "
            f"little for TensorFlow: raise or lift the limit")
