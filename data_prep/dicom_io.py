"""Reading, grouping and ordering short-axis cine DICOM: the part shared by the dicom, sunnybrook and cap sources.

Reading (`scan_dicom`, `read_dicom`):
- a file is DICOM when it carries the 'DICM' marker; other files are skipped and counted, except files named
  *.dcm / *.dicom / *.ima, which are meant to be DICOM and are read as raw DICOM (no preamble) instead. A file
  meant to be DICOM that does not parse, an image header without pixel data, or short pixel data (truncated) is
  corrupt: DataPrepError naming the file. An import never goes on with part of a series silently missing.
- DICOM files without pixel data (DICOMDIR, reports, presentation states) and colour images (screenshots,
  secondary captures: SamplesPerPixel > 1 or a colour PhotometricInterpretation such as PALETTE COLOR) are
  skipped and counted. Multi-frame (enhanced) images and unknown PhotometricInterpretation values are refused.
  Compressed pixel data (JPEG-LS, JPEG Lossless, ...) whose decoder is not installed is refused with the
  install command, not reported as corrupt.
- Pixels are the stored values (`pixel_array`), lossless; no rescale or windowing. MONOCHROME1 images (low
  values white) are inverted within their BitsStored range so that all images read as MONOCHROME2.
- Identifying header fields are read only where a check needs them (PatientID, to refuse mixed patients; it
  and StudyInstanceUID feed `patient_hash`) and never appear in an error message, warning or output.

Geometry (`group_cine`, `apex_to_base`):
- the slice normal is the cross product of the two ImageOrientationPatient rows; a slice's position is its
  ImagePositionPatient projected on the normal (mm). Images within POSITION_TOL_MM are one slice position.
- the heart's long axis points from the base (posterior, superior, right) to the apex (anterior, inferior, left):
  in DICOM LPS patient coordinates roughly APEX_DIRECTION_LPS = (+x, -y, -z)/sqrt(3). The apex is the end of the
  stack that lies furthest along that direction, i.e. the +normal end when cos(normal, apex direction) > 0. When
  |cos| < AMBIGUOUS_COS the decision is reported as ambiguous; --apex-first / --base-first override it, counting
  "first" in acquisition order (SeriesNumber, then InstanceNumber; CAP: the SA number).
- a spacing between neighbouring positions above GAP_FACTOR x the median spacing is a missing slice: an error,
  or a warning with allow_gaps.
- cine phases: frames of one position are ordered by TriggerTime. P is the largest number of frames at any
  position; a position with all P frames numbers them 0..P-1 in that order (per position, since TriggerTime
  follows each position's own heart rate). A position with fewer frames is incomplete: each of its frames takes
  the phase whose median TriggerTime over the complete positions is nearest, and the position is reported.
- the same position in several series (a repeated acquisition): the series with the highest SeriesNumber (the
  later repeat) is kept, with a warning.
"""
from __future__ import annotations

import hashlib
import sys
import warnings
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from tqdm import tqdm

from .errors import DataPrepError

DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}
APEX_DIRECTION_LPS = np.array([1.0, -1.0, -1.0]) / np.sqrt(3.0)
AMBIGUOUS_COS = 0.5      # normal more than 60 degrees off the expected long axis: the geometry barely says
SAME_PLANE_COS = 0.999   # normals within ~2.6 degrees are one orientation (headers round to ~1e-6)
POSITION_TOL_MM = 0.5    # far below any real slice spacing, far above header rounding
GAP_FACTOR = 1.5
APEX_CHOICES = ("apex_first", "base_first")
COLOUR_PHOTOMETRIC = {"RGB", "PALETTE COLOR", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT",
                      "HSV", "ARGB", "CMYK"}
CODECS_INSTALL = 'pip install "cardiac-slice-benchmark[dicom-codecs]"'


@dataclass
class DicomImage:
    """One single-frame greyscale DICOM image with the header values the importers need.

    patient_key (PatientID) and study_uid are kept in memory for consistency checks and `patient_hash` only.
    """

    path: Path
    name: str                      # path relative to the scanned folder: the manifest's `source`
    pixels: np.ndarray
    patient_key: str
    study_uid: str
    series_uid: str
    series_number: int
    instance: int | None
    position: np.ndarray | None    # ImagePositionPatient (mm, LPS)
    normal: np.ndarray | None      # unit slice normal from ImageOrientationPatient
    trigger_time: float | None     # ms
    pixel_spacing: tuple[float, float] | None

    @property
    def acquisition_key(self) -> tuple[int, int, str]:
        return (self.series_number, self.instance if self.instance is not None else 0, self.name)


@dataclass
class ScanResult:
    images: list[DicomImage]
    skipped: dict[str, int]        # reason -> number of files

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in self.skipped.items() if n) or "none"
        return f"{len(self.images)} DICOM images read; skipped: {skipped}"


@dataclass
class CinePosition:
    """One slice position of a cine study: its frames by phase number."""

    s_mm: float                    # position along the study's slice normal
    frames: dict[int, DicomImage]

    @property
    def first(self) -> DicomImage:
        return min(self.frames.values(), key=lambda im: im.acquisition_key)


@dataclass
class CineStudy:
    """A short-axis cine study: positions ordered apex (0) -> base, each with its frames by phase."""

    positions: list[CinePosition]
    n_phases: int
    spacing_mm: float
    orientation: dict[str, Any]
    incomplete: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def stack_positions(self, phase: int) -> list[CinePosition]:
        """The positions that have this phase, apex -> base."""
        return [p for p in self.positions if phase in p.frames]


def _float_list(value: Any, n: int) -> list[float] | None:
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def _optional_float(ds: pydicom.Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _optional_int(ds: pydicom.Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _is_image_storage(ds: pydicom.Dataset) -> bool:
    uid = ds.get("SOPClassUID") or getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", None)
    return uid is not None and "Image Storage" in getattr(uid, "name", "")


@contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Header-value validation (over-long UIDs, odd date formats) does not affect what is read here, and its
    warnings and log lines would print header values. pydicom converts values lazily, so every access to a
    dataset happens inside this context."""
    settings = pydicom.config.settings
    saved = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        settings.reading_validation_mode = saved


def _set_transfer_syntax(ds: pydicom.Dataset) -> None:
    """Raw DICOM has no file meta; pixel decoding needs the transfer syntax the reader detected."""
    if "TransferSyntaxUID" in getattr(ds, "file_meta", {}):
        return
    encoding = getattr(ds, "original_encoding", None)  # pydicom 3; 2.x keeps the flags on the dataset
    implicit, little = encoding if encoding is not None else (ds.is_implicit_VR, ds.is_little_endian)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                      ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def read_dicom(path: Path, name: str) -> DicomImage | str:
    """One file as a DicomImage, or the reason it is skipped (a str); DataPrepError when it is corrupt."""
    meant_dicom = path.suffix.lower() in DICOM_SUFFIXES
    try:
        with _quiet_pydicom():
            try:
                return _read_dicom(path, name, force=False)
            except InvalidDicomError:
                if not meant_dicom:
                    return "non-DICOM files"
            # a *.dcm file without the 'DICM' marker may be raw DICOM (no preamble): read it as such
            return _read_dicom(path, name, force=True)
    except DataPrepError:
        raise
    except Exception as exc:  # pydicom raises many types (EOFError, ValueError, struct.error, ...) on bad files
        raise DataPrepError(f"{path}: corrupt or truncated DICOM ({type(exc).__name__}: {exc})") from exc


def _read_dicom(path: Path, name: str, force: bool) -> DicomImage | str:
    ds = pydicom.dcmread(path, force=force)
    if force:
        if "PixelData" not in ds:
            raise DataPrepError(f"{path}: corrupt or truncated DICOM (no DICOM header, no pixel data)")
        _set_transfer_syntax(ds)
    if "PixelData" not in ds:
        if "Rows" in ds or _is_image_storage(ds):
            raise DataPrepError(f"{path}: corrupt or truncated DICOM (image header without pixel data)")
        return "DICOM without pixel data"
    photometric = str(ds.get("PhotometricInterpretation", "") or "MONOCHROME2").strip().upper()
    if int(ds.get("SamplesPerPixel", 1)) != 1 or photometric in COLOUR_PHOTOMETRIC:
        return "colour DICOM images"
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DataPrepError(f"{path}: PhotometricInterpretation {photometric!r} is not a greyscale image "
                            f"(MONOCHROME1/MONOCHROME2); cannot import it")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise DataPrepError(f"{path}: multi-frame (enhanced) DICOM is not supported; export the series "
                            f"as single-frame images")
    _require_decoder(ds, path)
    pixels = ds.pixel_array
    if pixels.ndim != 2:
        raise DataPrepError(f"{path}: expected a 2-D image, got pixel data of shape {pixels.shape}")
    if photometric == "MONOCHROME1":
        pixels = _invert_monochrome1(pixels, ds)
    iop = _float_list(ds.get("ImageOrientationPatient"), 6)
    normal = None
    if iop is not None:
        n = np.cross(iop[:3], iop[3:])
        norm = np.linalg.norm(n)
        normal = n / norm if norm > 1e-6 else None
    ipp = _float_list(ds.get("ImagePositionPatient"), 3)
    spacing = _float_list(ds.get("PixelSpacing"), 2)
    trigger = _optional_float(ds, "TriggerTime")
    if trigger is None:
        trigger = _optional_float(ds, "NominalCardiacTriggerDelayTime")
    return DicomImage(
        path=path, name=name, pixels=np.asarray(pixels),
        patient_key=str(ds.get("PatientID", "") or ""),
        study_uid=str(ds.get("StudyInstanceUID", "") or ""),
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        series_number=_optional_int(ds, "SeriesNumber") or 0,
        instance=_optional_int(ds, "InstanceNumber"),
        position=None if ipp is None else np.array(ipp),
        normal=normal,
        trigger_time=trigger,
        pixel_spacing=None if spacing is None or min(spacing) <= 0 else (spacing[0], spacing[1]),
    )


def _require_decoder(ds: pydicom.Dataset, path: Path) -> None:
    """A compressed transfer syntax whose decoder plugin is not installed is a setup problem, not a corrupt file:
    say what to install instead of letting pixel_array's error read as corruption."""
    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if syntax is None or not syntax.is_compressed or _decoder_available(syntax):
        return
    raise DataPrepError(f"{path}: pixel data is compressed ({syntax.name}) and no installed decoder reads it; "
                        f"install one with: {CODECS_INSTALL}")


def _decoder_available(syntax: pydicom.uid.UID) -> bool:
    try:
        from pydicom.pixels import get_decoder  # pydicom 3
    except ImportError:  # pydicom 2.4
        return any(h.supports_transfer_syntax(syntax) and h.is_available()
                   for h in pydicom.config.pixel_data_handlers)
    try:
        return get_decoder(syntax).is_available
    except NotImplementedError:  # pydicom knows no decoder for this syntax at all
        return False


def _invert_monochrome1(pixels: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """MONOCHROME1 shows the lowest value as white: mirror the values within the BitsStored range, so every
    image of a series is inverted the same way and the result reads like MONOCHROME2."""
    bits = min(int(ds.get("BitsStored") or 64), pixels.dtype.itemsize * 8)
    if pixels.dtype.kind == "i":
        return np.invert(pixels)  # -1 - v maps [-2^(b-1), 2^(b-1) - 1] onto itself
    top = (1 << bits) - 1
    return (top - np.minimum(pixels, top)).astype(pixels.dtype)


def list_files(src: str | Path, what: str = "SRC") -> tuple[Path, list[Path]]:
    """The files under src (recursive, hidden files and folders left out), sorted; errors for a missing or
    empty src. src may also be a single file."""
    src = Path(src)
    if not src.exists():
        raise DataPrepError(f"{what} {src} not found")
    if src.is_file():
        return src.parent, [src]
    files = sorted(p for p in src.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(src).parts))
    if not files:
        raise DataPrepError(f"{what} {src} is empty")
    return src, files


def scan_dicom(src: str | Path, files: Iterable[Path] | None = None, what: str = "SRC") -> ScanResult:
    """Read every DICOM image under src (or the given files, named relative to src)."""
    root, found = list_files(src, what) if files is None else (Path(src), list(files))
    images: list[DicomImage] = []
    skipped: dict[str, int] = defaultdict(int)
    for path in tqdm(found, desc="reading DICOM", unit="file", disable=None):
        got = read_dicom(path, path.relative_to(root).as_posix() if path != root else path.name)
        if isinstance(got, str):
            skipped[got] += 1
        else:
            images.append(got)
    if not images:
        detail = ", ".join(f"{n} {why}" for why, n in skipped.items())
        raise DataPrepError(f"{what} {src}: no DICOM images found ({detail})")
    return ScanResult(images, dict(skipped))


def check_one_patient(images: Sequence[DicomImage], where: str) -> None:
    """Refuse images of several patients or studies; the message names files, never the header values."""
    by_series: dict[str, list[DicomImage]] = defaultdict(list)
    for im in images:
        by_series[im.series_uid].append(im)
    for group in by_series.values():
        ref = group[0]
        other = next((im for im in group if im.patient_key != ref.patient_key), None)
        if other is not None:
            raise DataPrepError(f"{where}: series {ref.series_number} mixes patients: {ref.path} and {other.path} "
                                f"have different PatientID")
    ref = images[0]
    for attr, what in (("patient_key", "patients (PatientID)"), ("study_uid", "studies (StudyInstanceUID)")):
        other = next((im for im in images if getattr(im, attr) != getattr(ref, attr)), None)
        if other is not None:
            raise DataPrepError(f"{where}: more than one of the {what}: {ref.path} and {other.path}; "
                                f"import one study at a time")


def patient_hash(images: Sequence[DicomImage]) -> str:
    """A short stable id from PatientID and StudyInstanceUID; the UID makes a guessed PatientID unverifiable."""
    ref = images[0]
    if not ref.patient_key and not ref.study_uid:
        raise DataPrepError(f"{ref.path}: no PatientID or StudyInstanceUID to derive a patient id; pass --patient")
    digest = hashlib.sha256(f"{ref.patient_key}\x00{ref.study_uid}".encode()).hexdigest()
    return f"dcm{digest[:10]}"


def require_geometry(images: Iterable[DicomImage]) -> None:
    for im in images:
        if im.position is None or im.normal is None:
            raise DataPrepError(f"{im.path}: no usable ImagePositionPatient / ImageOrientationPatient; cannot "
                                f"place the slice in a short-axis stack")


def common_normal(images: Sequence[DicomImage], where: str) -> np.ndarray:
    """The one slice normal of all images (sign of the first series); refuses mixed orientations."""
    require_geometry(images)
    by_series: dict[str, list[DicomImage]] = defaultdict(list)
    for im in images:
        by_series[im.series_uid].append(im)
    ref = images[0]
    for group in by_series.values():
        other = next((im for im in group if abs(float(im.normal @ group[0].normal)) < SAME_PLANE_COS), None)
        if other is not None:
            raise DataPrepError(f"{where}: series {group[0].series_number} is not short-axis-like: inconsistent "
                                f"ImageOrientationPatient ({group[0].path} vs {other.path})")
    other = next((im for im in images if abs(float(im.normal @ ref.normal)) < SAME_PLANE_COS), None)
    if other is not None:
        raise DataPrepError(f"{where}: series {ref.series_number} ({ref.path}) and series {other.series_number} "
                            f"({other.path}) have different slice orientations; point SRC at the short-axis "
                            f"series only")
    return ref.normal


def short_axis_series(images: Sequence[DicomImage], where: str) -> tuple[list[DicomImage], list[str]]:
    """The images of the short-axis stack in a folder that also holds series of other orientations (localisers,
    long-axis cines, as a scanner exports a whole exam), and a note per series left out.

    Series are grouped by the orientation of their first image; the group covering the most slice positions is the
    stack. With images lacking geometry, or two groups covering equally many positions, every image is returned, for
    `require_geometry` and `common_normal` to refuse."""
    if any(im.position is None or im.normal is None for im in images):
        return list(images), []
    by_series: dict[str, list[DicomImage]] = defaultdict(list)
    for im in images:
        by_series[im.series_uid].append(im)
    groups: list[list[list[DicomImage]]] = []  # series of one orientation
    for series in by_series.values():
        group = next((g for g in groups if abs(float(g[0][0].normal @ series[0].normal)) >= SAME_PLANE_COS), None)
        if group is None:
            groups.append([series])
        else:
            group.append(series)

    def positions(group: list[list[DicomImage]]) -> int:
        normal = group[0][0].normal
        return len(cluster_positions([float(im.position @ normal) for series in group for im in series]))

    counts = [positions(g) for g in groups]
    best = max(range(len(groups)), key=counts.__getitem__)
    if len(groups) == 1 or sorted(counts)[-2] == counts[best]:
        return list(images), []
    stack = ", ".join(str(series[0].series_number) for series in groups[best])
    notes = [f"{where}: skipped series {series[0].series_number} ({len(series)} image(s), {series[0].path.name}...): "
             f"another orientation than the short-axis stack (series {stack}, {counts[best]} slice positions)"
             for i, group in enumerate(groups) if i != best for series in group]
    return [im for series in groups[best] for im in series], notes


def cluster_positions(values: Sequence[float], tol: float = POSITION_TOL_MM) -> list[list[int]]:
    """Indices of values grouped into positions (sorted ascending), a new group after each jump above tol."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and values[i] - values[groups[-1][-1]] <= tol:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def check_spacing(s_sorted: Sequence[float], names: Sequence[str], where: str, allow_gaps: bool
                  ) -> tuple[float, list[str]]:
    """Median spacing of ascending positions; a jump above GAP_FACTOR x median is an error (warning with
    allow_gaps). names[i] identifies position i in the message."""
    diffs = np.diff(np.asarray(s_sorted, dtype=np.float64))
    if diffs.size == 0:
        return 0.0, []
    median = float(np.median(diffs))
    out = []
    for i, d in enumerate(diffs):
        if d > GAP_FACTOR * median:
            msg = (f"{where}: gap in slice positions between {names[i]} and {names[i + 1]}: {d:.2f} mm is "
                   f"{d / median:.1f}x the median spacing {median:.2f} mm (a slice is missing)")
            if not allow_gaps:
                raise DataPrepError(msg + "; pass --allow-gaps to import anyway")
            out.append(msg)
    return median, out


def apex_to_base(s_mm: Sequence[float], normal: np.ndarray, acquisition_rank: Sequence[int],
                 override: str | None, where: str) -> tuple[list[int], dict[str, Any], list[str]]:
    """Order of the positions apex -> base, the evidence and warnings.

    s_mm: each position along the normal. acquisition_rank: each position's rank in acquisition order, which
    override ('apex_first' / 'base_first') refers to.
    """
    if override not in (None, *APEX_CHOICES):
        raise DataPrepError(f"{where}: unknown apex override {override!r}")
    cos = float(normal @ APEX_DIRECTION_LPS)
    ascending = sorted(range(len(s_mm)), key=lambda i: s_mm[i])
    geometric = ascending[::-1] if cos > 0 else ascending  # apex = furthest along the apex direction
    by_acquisition = sorted(range(len(s_mm)), key=lambda i: acquisition_rank[i])
    acquired = "apex_first" if by_acquisition[0] == geometric[0] else "base_first"
    warnings_out = []
    if override is None:
        order = geometric
        if abs(cos) < AMBIGUOUS_COS:
            warnings_out.append(f"{where}: apex/base ambiguous: the slice normal is only |cos| = {abs(cos):.2f} "
                                f"along the expected long axis; check the montage or pass --apex-first/--base-first")
    else:
        order = by_acquisition if override == "apex_first" else by_acquisition[::-1]
        if override != acquired and abs(cos) >= AMBIGUOUS_COS:
            warnings_out.append(f"{where}: --{override.replace('_', '-')} contradicts the geometry "
                                f"(cos = {cos:.2f} says {acquired.replace('_', ' ')})")
    evidence = {
        "normal_lps": [round(float(x), 4) for x in normal],
        "apex_direction_lps": [round(float(x), 4) for x in APEX_DIRECTION_LPS],
        "cos_normal_apex": round(cos, 3),
        "ambiguous": abs(cos) < AMBIGUOUS_COS,
        "geometry_says": f"{acquired.replace('_', ' ')} in acquisition order",
        "decided_by": "geometry" if override is None else f"--{override.replace('_', '-')}",
        "positions_mm": [round(float(s_mm[i]), 2) for i in order],
    }
    return order, evidence, warnings_out


def _one_series_per_position(groups: list[list[DicomImage]], where: str) -> tuple[list[list[DicomImage]], list[str]]:
    kept, notes = [], []
    for group in groups:
        series = sorted({(im.series_number, im.series_uid) for im in group})
        if len(series) > 1:
            keep = series[-1]
            dropped = [number for number, _ in series[:-1]]
            notes.append(f"{where}: position of {group[0].name} was acquired in series {dropped} and "
                         f"{keep[0]}; kept series {keep[0]} (the later repeat)")
            group = [im for im in group if (im.series_number, im.series_uid) == keep]
        kept.append(group)
    return kept, notes


def _assign_phases(groups: list[list[DicomImage]], where: str) -> tuple[list[dict[int, DicomImage]], int]:
    """Frames of every position by phase number (see the module docstring)."""
    ordered = []
    for group in groups:
        if len(group) > 1:
            missing = next((im for im in group if im.trigger_time is None), None)
            if missing is not None:
                raise DataPrepError(f"{missing.path}: no TriggerTime; cannot order the cine frames of its position")
        group = sorted(group, key=lambda im: (im.trigger_time or 0.0, im.acquisition_key))
        for a, b in zip(group, group[1:]):
            if a.trigger_time == b.trigger_time:
                raise DataPrepError(f"{where}: {a.path} and {b.path} have the same slice position and TriggerTime; "
                                    f"not a single cine series (duplicates, or several images per frame)")
        ordered.append(group)
    n_phases = max(len(g) for g in ordered)
    complete = [g for g in ordered if len(g) == n_phases]
    grid = np.median(np.array([[im.trigger_time or 0.0 for im in g] for g in complete]), axis=0)
    out = []
    for group in ordered:
        if len(group) == n_phases:
            out.append(dict(enumerate(group)))
            continue
        frames: dict[int, DicomImage] = {}
        for im in group:
            phase = int(np.argmin(np.abs(grid - (im.trigger_time or 0.0))))
            if phase in frames:
                raise DataPrepError(f"{where}: {frames[phase].path} and {im.path} fall on the same cine phase "
                                    f"{phase}; cannot number the frames of this incomplete position")
            frames[phase] = im
        out.append(frames)
    return out, n_phases


def _phase_ranges(phases: Sequence[int]) -> str:
    parts, start = [], None
    seq = sorted(phases)
    for i, p in enumerate(seq):
        if start is None:
            start = p
        if i + 1 == len(seq) or seq[i + 1] != p + 1:
            parts.append(str(start) if start == p else f"{start}-{p}")
            start = None
    return ", ".join(parts)


def group_cine(images: Sequence[DicomImage], where: str, override: str | None = None,
               allow_gaps: bool = False) -> CineStudy:
    """Group the images of one study into slice positions and cine phases, positions ordered apex -> base.

    Leaves out series of another orientation than the short-axis stack (`short_axis_series`), with a warning each.
    Refuses mixed patients or studies, mixed orientations within the stack, a single position, and (unless
    allow_gaps) gaps.
    Incomplete positions are kept for the phases they have and reported in `incomplete` and `warnings`.
    """
    if not images:
        raise DataPrepError(f"{where}: no images")
    check_one_patient(images, where)
    images, skipped = short_axis_series(images, where)
    normal = common_normal(images, where)
    s_all = [float(im.position @ normal) for im in images]
    groups = [[images[i] for i in idx] for idx in cluster_positions(s_all)]
    groups, notes = _one_series_per_position(groups, where)
    notes = skipped + notes
    if len(groups) < 2:
        raise DataPrepError(f"{where}: not short-axis-like: all {len(images)} images are at one slice position "
                            f"(a short-axis stack needs several)")
    frames, n_phases = _assign_phases(groups, where)
    positions = [CinePosition(float(np.mean([im.position @ normal for im in g])), f) for g, f in zip(groups, frames)]
    spacing, gap_notes = check_spacing([p.s_mm for p in positions], [p.first.name for p in positions], where,
                                       allow_gaps)
    acq_rank = _ranks([p.first.acquisition_key for p in positions])
    order, orientation, apex_notes = apex_to_base([p.s_mm for p in positions], normal, acq_rank, override, where)
    positions = [positions[i] for i in order]
    orientation["spacing_mm"] = round(spacing, 3)
    incomplete = []
    for idx, pos in enumerate(positions):
        if len(pos.frames) < n_phases:
            incomplete.append({
                "position": idx, "s_mm": round(pos.s_mm, 2), "phases": sorted(pos.frames),
                "files": [pos.frames[p].name for p in sorted(pos.frames)],
            })
    incomplete_notes = [
        f"{where}: incomplete position {inc['position']} (apex->base, {inc['s_mm']} mm, {inc['files'][0]}...) has "
        f"{len(inc['phases'])} of {n_phases} phases ({_phase_ranges(inc['phases'])}); the stacks of the other "
        f"phases leave it out" for inc in incomplete]
    return CineStudy(positions, n_phases, spacing, orientation, incomplete,
                     notes + gap_notes + apex_notes + incomplete_notes)


def _ranks(keys: Sequence[Any]) -> list[int]:
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    ranks = [0] * len(keys)
    for r, i in enumerate(order):
        ranks[i] = r
    return ranks


def stack_pixel_spacing(images: Sequence[DicomImage], where: str) -> tuple[float | None, list[str]]:
    """The in-plane pixel spacing of a stack (PixelSpacing row spacing), with warnings when it is anisotropic
    or varies; None when no image has PixelSpacing."""
    spacings = [im.pixel_spacing for im in images if im.pixel_spacing is not None]
    if not spacings:
        return None, [f"{where}: no PixelSpacing in the headers; pixel_spacing_mm left empty"]
    notes = []
    arr = np.array(spacings)
    if np.any(np.abs(arr[:, 0] - arr[:, 1]) > 0.01 * arr[:, 0]):
        notes.append(f"{where}: anisotropic PixelSpacing; pixel_spacing_mm is the row spacing")
    if np.ptp(arr[:, 0]) > 0.01 * arr[0, 0]:
        notes.append(f"{where}: PixelSpacing varies between slices ({arr[:, 0].min():.3f}-{arr[:, 0].max():.3f} "
                     f"mm); pixel_spacing_mm is the median")
    return float(np.median(arr[:, 0])), notes


def add_apex_arguments(parser, first: str = "first slice position in acquisition order") -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--apex-first", dest="apex", action="store_const", const="apex_first",
                       help=f"override the geometry: the {first} is the apex")
    group.add_argument("--base-first", dest="apex", action="store_const", const="base_first",
                       help=f"override the geometry: the {first} is the base")


def check_patient_id(patient: str) -> str:
    """A --patient value usable in file names."""
    if not patient or any(c in patient for c in "/\\ \t\n") or patient.startswith("."):
        raise DataPrepError(f"--patient {patient!r}: use a short id without spaces or path separators")
    return patient


def print_warnings(source: str, notes: Iterable[str]) -> None:
    for note in notes:
        print(f"data_prep {source}: warning: {note}", file=sys.stderr)
