"""ImageNet weight files: where they live, whether they are sound, and fetching them the way Keras does.

A file that is missing from $KERAS_HOME/models (default ~/.keras/models, where Keras itself looks), or that fails
Keras' hash, is downloaded with `keras.utils.get_file` from Keras Applications' URL and checked against Keras' hash
(see catalog.py). Downloads are off with `python -m benchmark --offline` or CARDIAC_BENCH_OFFLINE=1; then a missing
file stops the run with one message naming the file, its URL and where to put it. CARDIAC_BENCH_WEIGHTS_URL
replaces Keras' base URL (a mirror with Keras' folder layout, or a local server in the tests).

`python -m benchmark weights` lists the nine files and checks their hashes; it imports no TensorFlow.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import os
import sys
import tempfile
from pathlib import Path

from .catalog import IMAGENET, KERAS_APPLICATIONS_URL, ImagenetFile
from .errors import WeightsMissing

OFFLINE_ENV = "CARDIAC_BENCH_OFFLINE"
BASE_URL_ENV = "CARDIAC_BENCH_WEIGHTS_URL"
USABLE = ("ok", "unpinned")   # the states a run loads as they are


def cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def url(f: ImagenetFile) -> str:
    return (os.environ.get(BASE_URL_ENV) or KERAS_APPLICATIONS_URL).rstrip("/") + "/" + f.path


@functools.lru_cache(maxsize=None)
def _md5(path: str, size: int, mtime_ns: int) -> str:
    """Keyed on the file's size and mtime too: a run checks each file several times (the up-front check, then each
    model), and InceptionResNetV2's 219 MB take ~0.4 s to hash."""
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def status(f: ImagenetFile) -> str:
    """missing; ok or mismatch (Keras' md5); unpinned: present, but Keras pins no hash for it (MobileNet, V2)."""
    path = cache_dir() / f.name
    if not path.is_file():
        return "missing"
    if f.md5 is None:
        return "unpinned"
    st = path.stat()
    return "ok" if _md5(str(path), st.st_size, st.st_mtime_ns) == f.md5 else "mismatch"


def available(key: str) -> bool:
    return status(IMAGENET[key]) in USABLE


def imagenet_path(key: str) -> Path:
    """The cached no-top file of backbone `key`, downloaded first where it is missing or fails Keras' hash."""
    f = IMAGENET[key]
    target = cache_dir() / f.name
    state = status(f)
    if state in USABLE:
        return target
    problem = f"{target} is missing" if state == "missing" else f"{target} does not match Keras' md5 {f.md5}"
    if offline():
        raise WeightsMissing(_advice(key, f, f"{problem} and downloads are off (--offline or {OFFLINE_ENV})"))
    try:
        _download(f, target)
    except Exception as exc:  # get_file raises a bare Exception for URL failures, ValueError for a wrong hash
        raise WeightsMissing(_advice(key, f, f"{problem} and the download failed: {exc}")) from None
    return target


def _advice(key: str, f: ImagenetFile, problem: str) -> str:
    return (f"ImageNet weights for {key}: {problem}. Download {url(f)} and save it as {cache_dir() / f.name} "
            f"(the folder is $KERAS_HOME/models), or pass --weights PATH, or --weights none to train from random "
            f"initialisation")


def _download(f: ImagenetFile, target: Path) -> None:
    """get_file into a temporary folder beside the cache, moved in only after Keras' hash check: get_file leaves a
    file that fails the check where it downloaded it, and the cache must never hold a wrong or partial file under
    Keras' name (Keras would then trust it for unpinned files)."""
    from keras.utils import get_file  # loads TensorFlow: only when something is downloaded
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=target.parent) as tmp:
        os.replace(get_file(f.name, url(f), file_hash=f.md5, cache_dir=tmp, cache_subdir=""), target)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmark weights",
        description="The ImageNet (no-top) weight files of the nine pretrained backbones in the Keras cache "
                    "($KERAS_HOME/models): present or not, and whether Keras' md5 matches.")
    p.add_argument("--download", metavar="KEY[,KEY...]|all",
                   help="fetch these backbones' files now where missing or mismatched (e.g. before going offline)")
    args = p.parse_args(argv)
    if args.download:
        keys = list(IMAGENET) if args.download == "all" else [k.strip() for k in args.download.split(",") if k.strip()]
        unknown = [k for k in keys if k not in IMAGENET]
        if unknown:
            print(f"benchmark weights: error: --download {','.join(unknown)}: not a pretrained backbone; valid: "
                  f"{', '.join(IMAGENET)}", file=sys.stderr)
            return 2
        try:
            for key in keys:
                imagenet_path(key)
        except WeightsMissing as exc:
            print(f"benchmark weights: error: {exc}", file=sys.stderr)
            return 2
    print(f"Keras cache: {cache_dir()}; downloads: "
          + ("off" if offline() else f"from {(os.environ.get(BASE_URL_ENV) or KERAS_APPLICATIONS_URL)}"))
    width = max(len(f.name) for f in IMAGENET.values())
    print(f"{'backbone':<18} {'file':<{width}} {'present':<8} hash")
    for key, f in IMAGENET.items():
        state = status(f)
        hash_text = {"unpinned": "unpinned (Keras pins no hash)"}.get(state, state)
        print(f"{key:<18} {f.name:<{width}} {'no' if state == 'missing' else 'yes':<8} {hash_text}")
    return 0
