"""Kaggle Data Science Bowl 2015 short-axis PNG slices with hand-drawn LV overlays (juliandewit/kaggle_ndsb2).

SRC is the repository's `data_segmenter_trainset/` folder (or the folder holding it): 8-bit greyscale PNGs named
`PPPP_00000sax_FF_LLLLL_IM-SSSS-NNNN.png` (patient PPPP, cine frame FF, slice-location code LLLLL, DICOM series
SSSS and instance NNNN), each beside its overlay `..._o.png` of the same size, white where the LV blood pool was
drawn. Multi-frame names `IM-SSSS-NNNN-KKKK.png` are read the same way. The preprocessing of that repository
rescaled every image to 1.0 mm per pixel, so pixel_spacing_mm is 1.0.

- Stacks: one per patient and cine frame, slices ordered by the location code. A location imaged more than once
  (a repeated series) keeps the image of the highest series number, the later acquisition; each such choice is
  a warning and is listed in the stack's orientation evidence (`repeated_locations`). Two images of one series
  at one location (e.g. two frames of a multi-frame file) cannot be told apart and stop the import.
- Apex and base: which end of the location order is the apex differs between patients, so it is decided from
  the overlays with data_prep.orientation.apex_first, as for ACDC. The overlays draw only the cavity, so its
  cavity trend is the one cue. The frames of one patient are slices of one cine at the same locations, so one
  decision orders them all: the patient's longest stacks (frames 01 and 12 in the released set) vote with their
  own apex_first decision, a tie goes to the sign of their summed trend scores, and the few-slice stacks of
  other frames follow. Every stack's evidence keeps its own decision (`own_apex_first`); `ambiguous` is set, and
  warned about, when the deciding stacks disagree or none of them has a cavity trend of at least WEAK_TREND.
  Two location codes of a patient much closer than its usual step are warned about too: probably one position
  imaged twice under two codes, which no rule here can resolve.
- Labels: a slice is LV cavity where its overlay is >= 128; `label_from_cavity` makes the slices from the first
  to the last cavity slice IN and the empty ones beyond them OAP (apex side) or OBS (base side). The thresholded
  overlay is kept as the slice's mask (MASK_CODES["lv_cavity"]; mask_structures ["lv_cavity"]), its pixel count
  as column lv_cavity_px, and the location code as column location_code.

A folder without such files, an image without its overlay or an overlay without its image, an overlay of another
size than its image, an unreadable PNG or a PNG whose name does not parse stops the import with an error naming
the file; nothing is written. So does a stack whose overlays are all empty: without a cavity slice, its empty
slices are neither OAP nor OBS.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .errors import DataPrepError
from .manifest import MASK_CODES, OVERWRITE_HELP, SLICE_LABELS, Stack, write_dataset
from .orientation import TREND_CUES, WEAK_TREND, apex_first
from .stacks import label_from_cavity

DATASET = "dsb"
SUBFOLDER = "data_segmenter_trainset"
PIXEL_SPACING_MM = 1.0
OVERLAY_THRESHOLD = 128  # the overlays' edges are anti-aliased: half intensity is the drawn outline
OVERLAY_SUFFIX = "_o"
NAME_RE = re.compile(r"(?P<patient>\d+)_\d+sax_(?P<frame>\d+)_(?P<location>\d+)"
                     r"_IM-(?P<series>\d+)-(?P<instance>\d+)(?:-(?P<part>\d+))?(?P<overlay>_o)?\.png")
NAME_PATTERN = "PPPP_00000sax_FF_LLLLL_IM-SSSS-NNNN[-KKKK].png"
CLOSE_STEP = 0.5  # two location codes nearer than this fraction of the patient's median step
FAILURE_POLICY = ("A folder without such files, an image without its overlay (or the reverse), an overlay of "
                  "another size than its image, an unreadable PNG or a PNG whose name does not parse stops the "
                  "import with an error naming the file and exit code 2; nothing is written.")


@dataclass(frozen=True)
class SliceFile:
    """One image file (its overlay is the same name with OVERLAY_SUFFIX) and what its name says."""

    name: str
    patient: str
    frame: str
    location: int
    series: int
    instance: int
    part: int | None

    @property
    def overlay(self) -> str:
        return self.name[:-len(".png")] + OVERLAY_SUFFIX + ".png"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", type=Path,
                        help=f"the folder of {NAME_PATTERN} images and their _o.png LV overlays "
                             f"({SUBFOLDER}/ of juliandewit/kaggle_ndsb2, or the folder holding it)")
    parser.add_argument("--out", required=True, type=Path, help="dataset directory to write")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.epilog = (f"One stack per patient and cine frame, slices in location-code order; a repeated location "
                     f"keeps its highest series (the later acquisition). Apex and base from the overlays' "
                     f"cavity trend, decided once per patient. IN = overlay >= {OVERLAY_THRESHOLD} anywhere; "
                     f"empty slices beyond the apex are OAP, beyond the base OBS. The overlay is kept as the LV "
                     f"cavity mask; pixel spacing {PIXEL_SPACING_MM:g} mm. " + FAILURE_POLICY)


def run(args: argparse.Namespace) -> Path:
    folder, stacks, warnings = read_dsb(args.src)
    for message in warnings:
        print(f"warning: {message}", file=sys.stderr)
    out = write_dataset(args.out, DATASET, stacks, source=str(folder.resolve()),
                        options={"pixel_spacing_mm": PIXEL_SPACING_MM, "overlay_threshold": OVERLAY_THRESHOLD},
                        warnings=warnings, overwrite=args.overwrite, inputs=[args.src],
                        mask_structures=["lv_cavity"])
    labels = [lab for s in stacks for lab in s.labels]
    empty = sum(px == 0 for s in stacks for px in s.extra["lv_cavity_px"])
    repeats = [r for s in stacks for r in s.orientation["repeated_locations"]]
    dropped = sum(len(r["dropped"]) for r in repeats)
    ambiguous = {s.patient for s in stacks if s.orientation["ambiguous"]}
    print(f"dsb: {len({s.patient for s in stacks})} patients, {len(stacks)} stacks, {len(labels)} slices: "
          + ", ".join(f"{name} {labels.count(name)}" for name in SLICE_LABELS)
          + f"; {empty} empty overlay(s); {len(repeats)} repeated location(s), {dropped} earlier image(s) "
            f"dropped; {len(ambiguous)} patient(s) with ambiguous apex/base")
    return out


def read_dsb(src: str | Path) -> tuple[Path, list[Stack], list[str]]:
    """(the folder read, stacks ordered apex -> base, warnings) of a DSB overlay folder."""
    folder = find_folder(Path(src))
    by_stack: dict[tuple[str, str], list[SliceFile]] = {}
    for f in scan(folder):
        by_stack.setdefault((f.patient, f.frame), []).append(f)
    stacks, warnings = [], []
    for patient in sorted({p for p, _ in by_stack}):
        frames = {frame: files for (p, frame), files in sorted(by_stack.items()) if p == patient}
        patient_stacks, patient_warnings = read_patient(folder, patient, frames)
        stacks.extend(patient_stacks)
        warnings.extend(patient_warnings)
    return folder, stacks, warnings


def find_folder(src: Path) -> Path:
    if not src.exists():
        raise DataPrepError(f"SRC {src} not found")
    if not src.is_dir():
        raise DataPrepError(f"SRC {src} is not a folder")
    return src / SUBFOLDER if (src / SUBFOLDER).is_dir() else src


def scan(folder: Path) -> list[SliceFile]:
    """Every image of the folder, each checked to have its overlay; other files than PNGs are ignored."""
    images: dict[str, SliceFile] = {}
    overlays: set[str] = set()
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() != ".png" or not path.is_file():
            continue
        m = NAME_RE.fullmatch(path.name)
        if not m:
            raise DataPrepError(f"{path.name}: not a DSB slice name ({NAME_PATTERN}, overlays ending _o.png)")
        if m["overlay"]:
            overlays.add(path.name)
        else:
            images[path.name] = SliceFile(path.name, m["patient"], m["frame"], int(m["location"]),
                                          int(m["series"]), int(m["instance"]),
                                          None if m["part"] is None else int(m["part"]))
    if not images and not overlays:
        raise DataPrepError(f"SRC {folder} holds no DSB slice files ({NAME_PATTERN} with their _o.png overlays)")
    for f in images.values():
        if f.overlay not in overlays:
            raise DataPrepError(f"{f.name}: its overlay {f.overlay} is missing")
    orphans = sorted(overlays - {f.overlay for f in images.values()})
    if orphans:
        image = orphans[0].replace(OVERLAY_SUFFIX + ".png", ".png")
        raise DataPrepError(f"{orphans[0]}: an overlay without its image {image}")
    return list(images.values())


def keep_latest(files: list[SliceFile]) -> tuple[list[SliceFile], list[dict[str, Any]]]:
    """One file per location, in location order: the highest series where a location was imaged more than once.

    Returns (kept files, one record per repeated location: location, series in order, kept, dropped)."""
    by_location: dict[int, list[SliceFile]] = {}
    for f in files:
        by_location.setdefault(f.location, []).append(f)
    kept, repeats = [], []
    for location in sorted(by_location):
        found = sorted(by_location[location], key=lambda f: f.series)
        latest = [f for f in found if f.series == found[-1].series]
        if len(latest) > 1:
            raise DataPrepError(f"{latest[0].name}, {latest[1].name}: two images of series {latest[0].series} at "
                                f"location {location}; cannot tell which one is the later acquisition")
        kept.append(found[-1])
        if len(found) > 1:
            repeats.append({"location": location, "series": [f.series for f in found], "kept": found[-1].name,
                            "dropped": [f.name for f in found[:-1]]})
    return kept, repeats


def read_png(path: Path, what: str) -> np.ndarray:
    """A greyscale PNG as a 2-D array; DataPrepError naming the file when it is not one."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataPrepError(f"{path.name}: unreadable {what} ({exc.strerror})") from exc
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise DataPrepError(f"{path.name}: unreadable or truncated PNG ({what})")
    if img.ndim != 2:
        raise DataPrepError(f"{path.name}: expected a greyscale {what}, got shape {img.shape}")
    return img


def read_slice(folder: Path, f: SliceFile) -> tuple[np.ndarray, np.ndarray]:
    """(image, LV cavity mask coded by MASK_CODES) of one slice file and its overlay."""
    image = read_png(folder / f.name, "image")
    overlay = read_png(folder / f.overlay, "overlay")
    if overlay.shape != image.shape:
        raise DataPrepError(f"{f.overlay}: overlay of {overlay.shape[1]}x{overlay.shape[0]} px for an image of "
                            f"{image.shape[1]}x{image.shape[0]} px ({f.name})")
    if overlay.dtype != np.uint8:
        raise DataPrepError(f"{f.overlay}: expected an 8-bit overlay, got {overlay.dtype}")
    mask = np.where(overlay >= OVERLAY_THRESHOLD, MASK_CODES["lv_cavity"], 0).astype(np.uint8)
    return image, mask


def decide_patient(own: dict[str, dict[str, Any]], deciding: list[str]) -> tuple[bool, bool]:
    """(apex_first, ambiguous) of a patient from the deciding stacks' own apex_first evidence, by frame.

    The same rule apex_first applies to its cues, one level up: each deciding stack with a vote votes its own
    decision, a tie goes to the sign of the summed trend scores (exactly 0: location order)."""
    votes = [1 if own[fr]["apex_first"] else -1 for fr in deciding if any(own[fr]["votes"].values())]
    n_for, n_against = votes.count(1), votes.count(-1)
    if n_for != n_against:
        first = n_for > n_against
    else:
        first = sum(own[fr][cue] for fr in deciding for cue in TREND_CUES) >= 0
    strong = any(abs(own[fr]["lv_cavity_trend"]) >= WEAK_TREND for fr in deciding)
    return first, (n_for > 0 and n_against > 0) or not strong


def close_locations(locations: list[int]) -> list[tuple[int, int]]:
    """Neighbouring location codes nearer than CLOSE_STEP of the median step between them."""
    ordered = sorted(set(locations))
    steps = np.diff(ordered)
    if steps.size < 2:
        return []
    limit = CLOSE_STEP * float(np.median(steps))
    return [(ordered[i], ordered[i + 1]) for i, step in enumerate(steps) if step < limit]


def read_patient(folder: Path, patient: str, frames: dict[str, list[SliceFile]]) -> tuple[list[Stack], list[str]]:
    """The stacks of one patient (one per frame) ordered apex -> base by one decision, and their warnings."""
    warnings: list[str] = []
    read: dict[str, tuple[list[SliceFile], list[dict[str, Any]], list[np.ndarray], list[np.ndarray]]] = {}
    own: dict[str, dict[str, Any]] = {}
    for frame, files in frames.items():
        kept, repeats = keep_latest(files)
        for r in repeats:
            warnings.append(f"patient {patient} frame {frame}: location {r['location']} imaged in series "
                            f"{', '.join(map(str, r['series']))}; kept {r['kept']} (the later acquisition)")
        pairs = [read_slice(folder, f) for f in kept]
        shapes = sorted({img.shape for img, _ in pairs})
        if len(shapes) > 1:
            odd = next(f for f, (img, _) in zip(kept, pairs) if img.shape != pairs[0][0].shape)
            raise DataPrepError(f"{odd.name}: image size differs from the other slices of patient {patient} "
                                f"frame {frame} {shapes}")
        masks = [m for _, m in pairs]
        own[frame] = apex_first(np.stack(masks))[1]
        read[frame] = (kept, repeats, [img for img, _ in pairs], masks)
    longest = max(len(r[0]) for r in read.values())
    deciding = [frame for frame, r in read.items() if len(r[0]) == longest]
    first, ambiguous = decide_patient(own, deciding)
    if ambiguous:
        trends = ", ".join(f"frame {fr} {own[fr]['lv_cavity_trend']:+.2f}" for fr in deciding)
        warnings.append(f"patient {patient}: the cavity trends of the longest stacks disagree or are weak "
                        f"({trends}); apex taken at the {'lowest' if first else 'highest'} location code")
    for a, b in close_locations([f.location for r in read.values() for f in r[0]]):
        warnings.append(f"patient {patient}: locations {a} and {b} are much closer than the usual step; "
                        f"probably one position imaged twice under two codes, both kept")
    stacks = []
    for frame, (kept, repeats, images, masks) in read.items():
        order = list(range(len(kept))) if first else list(range(len(kept)))[::-1]
        cavity_px = [int(np.count_nonzero(masks[i])) for i in order]
        labels, label_warnings = label_from_cavity([px > 0 for px in cavity_px],
                                                   where=f"patient {patient} frame {frame}")
        warnings.extend(label_warnings)
        stacks.append(Stack(
            patient=patient, frame=frame, images=[images[i] for i in order], labels=labels,
            sources=[kept[i].name for i in order], pixel_spacing_mm=PIXEL_SPACING_MM,
            extra={"lv_cavity_px": cavity_px, "location_code": [kept[i].location for i in order]},
            orientation={**own[frame], "own_apex_first": own[frame]["apex_first"], "apex_first": first,
                         "ambiguous": ambiguous, "decided_by_frames": deciding,
                         "location_codes": [kept[i].location for i in order], "repeated_locations": repeats},
            masks=[masks[i] for i in order]))
    return stacks, warnings
