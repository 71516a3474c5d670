"""`python -m data_prep SOURCE ...`: one subcommand per source, each writing one dataset directory.

Each source module exposes `configure_parser(parser)` (its arguments, always including --out) and
`run(args) -> Path` (writes the dataset directory, returns it). Bad input raises DataPrepError, which
becomes one message on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from . import lock
from .errors import DataPrepError

# subcommand -> (module, one-line help)
SOURCES = {
    "acdc": ("data_prep.acdc", "ACDC, official NIfTI layout or SSL4MIS HDF5 layout (detected automatically)"),
    "sunnybrook": ("data_prep.sunnybrook", "Sunnybrook Cardiac Data: DICOM cine + manual contours"),
    "dsb": ("data_prep.dsb", "Kaggle Data Science Bowl 2015 PNG slices with hand-drawn LV overlays (*_o.png)"),
    "cap": ("data_prep.cap", "Cardiac Atlas Project challenge DICOM (DETxxxxxxx_SAyy_phzz.dcm)"),
    "dicom": ("data_prep.dicom", "any short-axis cine DICOM study, unlabelled (for prediction)"),
    "synthetic": ("data_prep.synthetic", "the embedded procedural phantom (no download needed)"),
    "images": ("data_prep.images", "any labelled image set: folder per class, or a CSV (path, patient, label)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep",
        description="Turn a source of cardiac images into a dataset directory (manifest.csv + lossless images "
                    "+ dataset.json) for `python -m benchmark`.")
    sub = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    for name, (module, help_text) in SOURCES.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue  # a source whose module is absent is not offered
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip().splitlines()[0])
        mod.configure_parser(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # held from the check of --out to the rename of the new dataset into it: two imports to one --out would
        # both find it free, and one dataset would silently replace the other
        with lock.exclusive(lock.beside(args.out), "--out", args.out):
            out = args._run(args)
    except DataPrepError as exc:
        print(f"data_prep {args.source}: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
