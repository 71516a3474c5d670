"""Sunnybrook Cardiac Data: the ED and ES stacks of a cine study, labelled from the expert's endocardial contours.

SRC is one study: DICOM under SRC/dicom (else anywhere under SRC) and contour text files under SRC/contours
(or --contours DIR), named `IM-0001-NNNN-icontour-manual.txt` / `-ocontour-manual.txt`, one `x y` point (pixel
coordinates, x = column) per line, belonging to the image with InstanceNumber NNNN. Other contour kinds (p1/p2,
papillary muscles) are ignored.

- Slice positions, cine phases and apex -> base order come from the DICOM geometry (data_prep.dicom_io;
  --apex-first / --base-first override). Cross-check: the ED cavity area should grow from apex to base over the
  contoured slices; a disagreement is a warning, recorded in dataset.json.
- The contoured phases are ED and ES (exactly two are required): the one with the larger total i-contour area is
  ED. `frame` is ED / ES; the `phase` column keeps the cine phase number.
- Labels: `label_from_cavity` with IN = the slice has an i-contour. `lv_cavity_px` counts the pixels of the
  i-contour filled with cv2.fillPoly (1/8-pixel vertices; pixels the outline touches count, so it runs about half
  a perimeter above the geometric area), 0 without one.
- Masks (MASK_CODES), rasterised as lv_cavity_px is: LV cavity inside the i-contour, LV myocardium inside the
  o-contour and outside the i-contour; mask_structures lv_myocardium and lv_cavity (lv_cavity alone for a study
  without o-contours). A contoured phase marks its uncontoured slices as holding neither structure (their mask is
  all zero, as their label says no cavity), but Sunnybrook traces the epicardium at ED only: a phase without any
  o-contour gets no masks (its myocardium is unknown; lv_cavity_px still holds its cavity), and a slice with an
  i-contour but no o-contour in a phase that has them gets none either (a warning).

The labels trust the expert's choice of slices. In the Sunnybrook protocol the endocardium is traced on every
slice where the LV cavity is surrounded by myocardium; the basal slices past the last contour show the LV outflow
tract / mitral valve plane and atria rather than a closed LV cavity, and the apical slice past the first contour
shows at most a sliver of cavity. So OBS / OAP here mean "beyond the contoured LV range", which is how the
labels were defined for this benchmark, not "no blood at all". See docs/sunnybrook_montage.png.

`render_contour_montage(src, out_png)` (or --montage PNG) draws both stacks with the contours, apex on the left.
The patient id is --patient, else the SRC folder name (Sunnybrook's public study id, e.g. SCD0000101).
"""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from . import dicom_io
from .atomic import atomic_write
from .errors import DataPrepError
from .manifest import MASK_CODES, OVERWRITE_HELP, Stack, write_dataset
from .stacks import label_from_cavity

DATASET = "sunnybrook"
CONTOUR_RE = re.compile(r"^IM-\d+-(\d+)-([io])contour-manual\.txt$", re.IGNORECASE)
FILL_SHIFT = 3  # fillPoly's fixed-point bits: contour points are given to 0.5 px
WITH_MYOCARDIUM = ("lv_myocardium", "lv_cavity")  # mask_structures of a study with o-contours
CAVITY_ONLY = ("lv_cavity",)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="one Sunnybrook study: dicom/ and contours/ (e.g. SCD0000101)")
    parser.add_argument("--out", required=True, help="dataset directory to write")
    parser.add_argument("--contours", help="folder of the contour text files (default: SRC/contours)")
    parser.add_argument("--patient", help="patient id for the manifest (default: the SRC folder name)")
    dicom_io.add_apex_arguments(parser)
    parser.add_argument("--allow-gaps", action="store_true",
                        help="import a stack with a missing slice position with a warning instead of an error")
    parser.add_argument("--montage", metavar="PNG", help="also draw the ED and ES stacks with their contours")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.epilog = ("ED = the contoured phase with the larger total i-contour area; IN = slices with an i-contour. "
                     "A corrupt or truncated DICOM file is an error.")


def read_contour(path: Path) -> np.ndarray:
    """The (N, 2) x, y points of one contour file; DataPrepError when it is not a polygon."""
    try:
        pts = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (ValueError, OSError) as exc:
        raise DataPrepError(f"{path}: not a contour file of 'x y' lines ({exc})") from exc
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3 or not np.all(np.isfinite(pts)):
        raise DataPrepError(f"{path}: a contour needs at least 3 'x y' points, got shape {pts.shape}")
    return pts


def fill_contour(mask: np.ndarray, points: np.ndarray, value: int) -> None:
    """Set the pixels of `mask` inside the polygon (x = column, y = row; pixels the outline touches included)."""
    cv2.fillPoly(mask, [np.round(points * (1 << FILL_SHIFT)).astype(np.int32)], value, shift=FILL_SHIFT)


def contour_area_px(points: np.ndarray, shape: tuple[int, int]) -> int:
    """Pixels of an image of this shape inside the polygon: the cavity of `contour_mask` for an i-contour."""
    mask = np.zeros(shape, dtype=np.uint8)
    fill_contour(mask, points, 1)
    return int(mask.sum())


def contour_mask(contours: dict[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """One slice's mask from its contours (kind -> points): myocardium inside the o-contour, then the cavity inside
    the i-contour over it, so the cavity has exactly `contour_area_px` pixels."""
    mask = np.zeros(shape, dtype=np.uint8)
    for kind, structure in (("o", "lv_myocardium"), ("i", "lv_cavity")):
        if kind in contours:
            fill_contour(mask, contours[kind], MASK_CODES[structure])
    return mask


def stack_masks(contours: list[dict[str, np.ndarray]], shapes: list[tuple[int, int]], structures: tuple[str, ...],
                where: str) -> tuple[list[np.ndarray | None] | None, list[str]]:
    """(masks, warnings) of one contoured phase's slices; see the module docstring for which slices get none."""
    if structures == CAVITY_ONLY:
        return [contour_mask(c, shape) for c, shape in zip(contours, shapes)], []
    if not any("o" in c for c in contours):
        return None, []
    untraced = [k for k, c in enumerate(contours) if "i" in c and "o" not in c]
    masks = [None if k in untraced else contour_mask(c, shape) for k, (c, shape) in enumerate(zip(contours, shapes))]
    notes = [f"{where}: slices {untraced} have an i-contour but no o-contour; no mask (myocardium unknown)"
             ] if untraced else []
    return masks, notes


def find_contours(folder: Path) -> dict[int, dict[str, tuple[Path, np.ndarray]]]:
    """Contours by instance number, then kind ('i' / 'o')."""
    if not folder.is_dir():
        raise DataPrepError(f"contour folder {folder} not found (pass --contours DIR)")
    out: dict[int, dict[str, tuple[Path, np.ndarray]]] = {}
    for path in sorted(folder.rglob("*.txt")):
        m = CONTOUR_RE.match(path.name)
        if not m:
            continue
        instance, kind = int(m.group(1)), m.group(2).lower()
        if kind in out.get(instance, {}):
            raise DataPrepError(f"{path}: a second {kind}-contour for instance {instance} "
                                f"(also {out[instance][kind][0]})")
        out.setdefault(instance, {})[kind] = (path, read_contour(path))
    if not any("i" in c for c in out.values()):
        raise DataPrepError(f"{folder}: no endocardial contour files (IM-0001-NNNN-icontour-manual.txt)")
    return out


@dataclass
class SunnybrookStudy:
    stacks: list[Stack]                              # ED, ES
    contours: list[list[dict[str, np.ndarray]]]      # per stack, per slice: kind -> points
    warnings: list[str]
    mask_structures: tuple[str, ...]
    evidence: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)


def _match_contours(images: list[dicom_io.DicomImage], contours: dict[int, dict[str, tuple[Path, np.ndarray]]]
                    ) -> dict[int, dicom_io.DicomImage]:
    by_instance: dict[int, list[dicom_io.DicomImage]] = {}
    for im in images:
        if im.instance is not None:
            by_instance.setdefault(im.instance, []).append(im)
    out = {}
    for instance, kinds in contours.items():
        path = next(iter(kinds.values()))[0]
        found = by_instance.get(instance, [])
        if len(found) != 1:
            what = "no DICOM image has" if not found else f"{len(found)} DICOM images have"
            raise DataPrepError(f"{path}: {what} InstanceNumber {instance}")
        im = found[0]
        for kind, (cpath, pts) in kinds.items():
            h, w = im.pixels.shape
            if pts[:, 0].min() < -1 or pts[:, 1].min() < -1 or pts[:, 0].max() > w or pts[:, 1].max() > h:
                raise DataPrepError(f"{cpath}: points outside the {w}x{h} image {im.name}")
        out[instance] = im
    return out


def build_study(src: str | Path, contours_dir: str | Path | None = None, patient: str | None = None,
                override: str | None = None, allow_gaps: bool = False) -> SunnybrookStudy:
    src = Path(src)
    if not src.exists():
        raise DataPrepError(f"SRC {src} not found")
    dicom_dir = src / "dicom" if (src / "dicom").is_dir() else src
    contours_dir = Path(contours_dir) if contours_dir else src / "contours"
    scan = dicom_io.scan_dicom(dicom_dir)
    contours = find_contours(contours_dir)
    images = _match_contours(scan.images, contours)
    study = dicom_io.group_cine(scan.images, str(src), override, allow_gaps)
    patient = dicom_io.check_patient_id(patient) if patient is not None else src.resolve().name
    notes = list(study.warnings)

    phase_of = {id(im): (k, phase) for k, pos in enumerate(study.positions) for phase, im in pos.frames.items()}
    area: dict[tuple[int, int], int] = {}  # (position, phase) -> i-contour area
    for instance, kinds in contours.items():
        im = images[instance]
        if "i" in kinds:
            area[phase_of[id(im)]] = contour_area_px(kinds["i"][1], im.pixels.shape)
    phases = sorted({phase for _, phase in area})
    if len(phases) != 2:
        raise DataPrepError(f"{contours_dir}: endocardial contours lie on {len(phases)} cine phase(s) {phases}; "
                            f"expected two (ED and ES)")
    total = {p: sum(a for (_, ph), a in area.items() if ph == p) for p in phases}
    ed, es = sorted(phases, key=lambda p: -total[p])
    evidence: dict[str, Any] = {
        "ed_phase": ed, "es_phase": es,
        "total_icontour_area_px": {"ED": total[ed], "ES": total[es]},
        "rule": "ED = the contoured phase with the larger total i-contour area",
    }
    ed_areas = [area[(k, ed)] for k in range(len(study.positions)) if (k, ed) in area]
    slope = float(np.polyfit(np.arange(len(ed_areas)), ed_areas, 1)[0]) if len(ed_areas) > 1 else 0.0
    agrees = slope > 0
    evidence["contour_check"] = {"ed_icontour_area_px_apex_to_base": ed_areas,
                                 "area_slope_px_per_slice": round(slope, 1),
                                 "agrees_with_order": agrees}
    if not agrees:
        notes.append(f"{src}: the ED cavity area does not grow from apex to base in the chosen order "
                     f"(slope {slope:.1f} px/slice); check the montage, or pass --apex-first/--base-first")

    contour_at = {id(images[i]): {k: pts for k, (_, pts) in kinds.items()} for i, kinds in contours.items()}
    structures = WITH_MYOCARDIUM if any("o" in kinds for kinds in contours.values()) else CAVITY_ONLY
    stacks, stack_contours = [], []
    for frame, phase in (("ED", ed), ("ES", es)):
        positions = study.stack_positions(phase)
        frames = [p.frames[phase] for p in positions]
        where = f"{patient}/{frame}"
        has_cavity = [(k, phase) in area for k, p in enumerate(study.positions) if phase in p.frames]
        labels, label_notes = label_from_cavity(has_cavity, where)
        spacing, spacing_notes = dicom_io.stack_pixel_spacing(frames, where)
        notes.extend(label_notes + spacing_notes)
        cavity_px = [area.get((k, phase), 0) for k, p in enumerate(study.positions) if phase in p.frames]
        slice_contours = [contour_at.get(id(im), {}) for im in frames]
        masks, mask_notes = stack_masks(slice_contours, [im.pixels.shape for im in frames], structures, where)
        notes.extend(mask_notes)
        stacks.append(Stack(
            patient=patient, frame=frame, images=[im.pixels for im in frames], labels=labels,
            sources=[im.name for im in frames], pixel_spacing_mm=spacing,
            extra={"phase": [phase] * len(frames), "lv_cavity_px": cavity_px,
                   "position_mm": [round(p.s_mm, 2) for p in positions]},
            orientation={**study.orientation, "positions_mm": [round(p.s_mm, 2) for p in positions],
                         **evidence},
            masks=masks,
        ))
        stack_contours.append(slice_contours)
    return SunnybrookStudy(stacks, stack_contours, notes, structures, evidence, scan.skipped)


def render_contour_montage(src: str | Path, out_png: str | os.PathLike, contours_dir: str | Path | None = None,
                           override: str | None = None, study: SunnybrookStudy | None = None) -> Path:
    """Draw the ED (top) and ES (bottom) stacks apex (left) -> base with the i-contours (red) and o-contours
    (green), each tile titled with its slice index, label and cavity pixels. Returns out_png."""
    # Imported here, not at the top: matplotlib would slow every CLI start. .montage selects the Agg backend.
    from .montage import window
    import matplotlib.pyplot as plt

    study = study or build_study(src, contours_dir, override=override)
    all_pts = np.concatenate([pts for stack in study.contours for c in stack for pts in c.values()])
    h, w = study.stacks[0].images[0].shape
    margin = 30  # px of context around the contoured heart
    x0, y0 = np.maximum(all_pts.min(0).astype(int) - margin, 0)
    x1, y1 = np.minimum(all_pts.max(0).astype(int) + margin, [w, h])
    ncols = max(len(s.images) for s in study.stacks)
    fig, axes = plt.subplots(len(study.stacks), ncols, figsize=(1.6 * ncols, 2.0 * len(study.stacks)),
                             squeeze=False)
    for r, (stack, contours) in enumerate(zip(study.stacks, study.contours)):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(stack.images):
                ax.set_axis_off()
                continue
            # pixel centres at integer coordinates, as the contour points are given
            ax.imshow(window(stack.images[c][y0:y1, x0:x1]), cmap="gray",
                      extent=(x0 - 0.5, x1 - 0.5, y1 - 0.5, y0 - 0.5))
            for kind, colour in (("i", "red"), ("o", "lime")):
                if kind in contours[c]:
                    pts = np.vstack([contours[c][kind], contours[c][kind][:1]])
                    ax.plot(pts[:, 0], pts[:, 1], color=colour, linewidth=0.8)
            ax.set_title(f"{c} {stack.labels[c]}\n{stack.extra['lv_cavity_px'][c]} px", fontsize=8)
        axes[r][0].set_ylabel(f"{stack.frame} (phase {stack.extra['phase'][0]})", fontsize=9)
    fig.suptitle(f"{study.stacks[0].patient}: apex (left) -> base (right); red i-contour, green o-contour",
                 fontsize=10)
    fig.tight_layout()
    try:
        return atomic_write(out_png, lambda p: fig.savefig(p, dpi=100, format="png"))
    finally:
        plt.close(fig)


def run(args: argparse.Namespace) -> Path:
    study = build_study(args.src, args.contours, args.patient, args.apex, args.allow_gaps)
    ed, es = study.stacks
    print(f"ED = phase {study.evidence['ed_phase']}, ES = phase {study.evidence['es_phase']}; "
          f"{len(ed.images)} + {len(es.images)} slices; labels ED {' '.join(ed.labels)}; ES {' '.join(es.labels)}")
    print(f"masks ({', '.join(study.mask_structures)}): "
          + "; ".join(f"{s.frame} {sum(m is not None for m in s.masks or [])} of {len(s.images)}"
                      for s in study.stacks))
    dicom_io.print_warnings(DATASET, study.warnings)
    options = {"apex": args.apex or "geometry", "allow_gaps": bool(args.allow_gaps),
               "contours": str(args.contours or Path(args.src) / "contours"),
               "study": {"skipped_files": study.skipped, **study.evidence}}
    out = write_dataset(args.out, DATASET, study.stacks, source=str(args.src), options=options,
                        warnings=study.warnings, overwrite=args.overwrite,
                        inputs=[p for p in (args.src, args.contours) if p is not None],
                        mask_structures=study.mask_structures)
    if args.montage:
        print(f"montage: {render_contour_montage(args.src, args.montage, study=study)}")
    return out
