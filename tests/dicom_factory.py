"""Small synthetic DICOM files for the tests: one MR image per file, written with pydicom 3 or 2.4.

Imported by test modules as a plain module (`from dicom_factory import write_dicom`): pytest's default import mode
puts tests/ on sys.path because tests/ is not a package.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid


def orientation_for(normal) -> list[float]:
    """ImageOrientationPatient rows whose cross product is the given (not necessarily unit) normal."""
    normal = np.asarray(normal, dtype=float) / np.linalg.norm(normal)
    helper = np.array([0.0, 0.0, 1.0]) if abs(normal[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    row = np.cross(helper, normal)
    row /= np.linalg.norm(row)
    col = np.cross(normal, row)
    return [*row.round(6), *col.round(6)]


def write_dicom(path: Path, pixels, transfer_syntax: UID = ExplicitVRLittleEndian, **fields) -> Path:
    """An MR Image Storage file (Explicit VR Little Endian) holding `pixels` as 16-bit MONOCHROME2.

    `fields` are DICOM keywords (PatientName=..., ImagePositionPatient=...) set as given; Modality is MR unless
    given. A misspelt keyword raises here rather than being silently dropped from the file. 3-D `pixels` are a
    multi-frame image (frames first). A compressed `transfer_syntax` gets encapsulated placeholder fragments, not
    real compressed data: enough for what a reader does before it decodes."""
    unknown = sorted(k for k in fields if tag_for_keyword(k) is None)
    if unknown:
        raise ValueError(f"not DICOM keywords: {', '.join(unknown)}")
    pixels = np.asarray(pixels, dtype=np.uint16)
    frames = pixels if pixels.ndim == 3 else pixels[None]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta, ds.preamble = meta, b"\0" * 128
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.Rows, ds.Columns = frames.shape[1:]
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if UID(transfer_syntax).is_compressed:
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + bytes(8) for _ in frames])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = pixels.tobytes()
    for keyword, value in fields.items():
        setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:  # pydicom 2.4 has no enforce_file_format; these give the same file
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)
    return path
