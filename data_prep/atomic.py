"""Write-then-rename helpers: a reader never sees a half-written file or directory (datasets, results, figures)."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call write(tmp_path) on a temporary name in the target's directory, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name ends as the target does, two suffixes deep: Keras picks a format by `.keras` and insists on
    # `.weights.h5`
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial" + "".join(path.suffixes[-2:]),
                               dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; on success it replaces `path` (and whatever was there).

    The old directory is renamed aside before the new one is renamed in and only deleted afterwards (a symbolic link
    there is removed as a link, its target kept), so at every moment `path` is either the complete old directory or the complete new one (or, after a crash between
    the two renames, absent with both kept beside it under clearly named temporary names)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        aside = _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if aside is not None and aside.is_symlink():  # the link goes, never what it points at
        target = os.readlink(aside)
        aside.unlink()
        print(f"note: {path} was a symbolic link to {target}; the link is replaced by the new directory and "
              f"{target} is left as it was", file=sys.stderr)
    elif aside is not None:
        try:
            shutil.rmtree(aside)
        except OSError as exc:
            print(f"warning: {path} was replaced, but its old contents could not be deleted "
                  f"({exc.strerror or exc}); they are left in {aside}", file=sys.stderr)


def _swap_in(new: Path, path: Path) -> Path | None:
    """Rename `new` to `path`; an existing `path` is first renamed aside. Returns the aside name (or None)."""
    if not path.exists():
        os.replace(new, path)
        return None
    # a name that does not exist yet: renaming onto an existing directory is not portable
    aside = path.with_name(f".{path.name}.old-{secrets.token_hex(6)}")
    os.replace(path, aside)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(aside, path)
        raise
    return aside


def write_text(path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def write_json(path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def write_csv(path, df: pd.DataFrame) -> Path:
    return atomic_write(path, lambda p: df.to_csv(p, index=False, lineterminator="\n", float_format="%.6g"))


def read_json(path) -> Any:
    return json.loads(Path(path).read_text())


def damage(path: str | os.PathLike) -> str | None:
    """Why a file of a kind these helpers write does not read back whole, or None: a JSON file that does not parse,
    a zip archive (.keras, .npz) without its central directory, a .npy shorter than its header says. A file is
    renamed into place complete, but a crash before the data reached the disk, a full disk under a copy, or a cut
    copy can still leave it short. Other kinds are not checked."""
    path = Path(path)
    try:
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix in (".keras", ".npz"):
            with zipfile.ZipFile(path):
                pass
        elif path.suffix == ".npy":
            np.load(path, mmap_mode="r")
    except (ValueError, zipfile.BadZipFile, EOFError) as exc:  # JSONDecodeError and UnicodeDecodeError included
        kind = {".json": "not valid JSON", ".npy": "not a whole .npy array"}.get(path.suffix, "not a whole zip archive")
        return f"{kind}: {exc}"
    return None


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
