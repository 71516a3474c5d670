"""TensorFlow imported without its C++ start-up lines.

TensorFlow 2.21 prints its CPU-feature and oneDNN notices from C++ when it is imported and runs its first op, where
TF_CPP_MIN_LOG_LEVEL no longer reaches them; they bury the first lines a user should read. Every entry point imports TensorFlow through
`quiet_tensorflow` first, with file descriptor 2 pointed at /dev/null for the import and one op alone (an import error is still
raised, and shown, once the descriptor is restored). CARDIAC_BENCH_TF_LOGS=1 shows the lines again.
"""
from __future__ import annotations

import importlib.util
import os
import sys

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
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
