"""Image preprocessing: native slice -> network input, identical for training, evaluation, caching and predict.

    native slice --percentile window--> [0, 255] float --rotate (training only)--> centre crop (middle 60 % of
    each axis) --resize--> input_size² --grey to 3 channels (or 2.5D neighbours)--> backbone preprocess_input

Rotation is applied to the full windowed slice *before* the crop: the cropped square (60 % of the side) stays inside
the rotated image for any angle up to 45°, so augmentation never brings in padded corners.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

CROP_FRACTION = 0.6


@dataclass(frozen=True)
class Preprocessing:
    """Everything that turns a native slice into a network input; its JSON is part of every cache key."""

    input_size: int
    mode: str                     # keras preprocess_input mode of the backbone: tf | caffe | torch | unit
    window: tuple[float, float] = (1.0, 99.0)   # intensity percentiles mapped to 0 and 255
    crop_fraction: float = CROP_FRACTION
    input_kind: str = "2d"        # "2d": grey copied to 3 channels; "2.5d": (apex-side, slice, base-side)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> "Preprocessing":
        """The inverse of to_dict (JSON gives the window back as a list); TypeError or ValueError if malformed: every
        field must be given, so that a record never silently takes a default it was not made with."""
        if not isinstance(fields, dict):
            raise TypeError(f"expected an object of preprocessing fields, got {type(fields).__name__}")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in fields]
        if missing:
            raise ValueError(f"missing field(s) {', '.join(missing)}")
        return cls(**{**fields, "window": tuple(fields["window"])})

    def key(self) -> str:
        """The JSON string stored in config.json and model.json and hashed into cache keys."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_key(cls, key: str) -> "Preprocessing":
        """The inverse of key(); TypeError or ValueError (json.JSONDecodeError among them) if malformed."""
        return cls.from_dict(json.loads(key))


def window(img: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Map the given intensity percentiles of the slice to 0 and 255 (clipped), as float32."""
    img = np.asarray(img, dtype=np.float32)
    lo, hi = np.percentile(img, percentiles)
    if hi <= lo:
        return np.zeros_like(img)
    return np.clip((img - lo) * (255.0 / (hi - lo)), 0.0, 255.0)


def rotate(img: np.ndarray, angle_deg: float, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    if angle_deg == 0:
        return img
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2.0 - 0.5, h / 2.0 - 0.5), angle_deg, 1.0)
    return cv2.warpAffine(img, m, (w, h), flags=interpolation, borderMode=cv2.BORDER_REPLICATE)


def crop_box(shape: tuple[int, ...], fraction: float) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the centre crop of an image of `shape`."""
    h, w = shape[:2]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def crop_resize(img: np.ndarray, fraction: float, size: int, interpolation: int | None = None) -> np.ndarray:
    top, left, ch, cw = crop_box(img.shape, fraction)
    crop = img[top:top + ch, left:left + cw]
    if interpolation is None:
        interpolation = cv2.INTER_AREA if ch > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interpolation)


def make_label_map(labels: np.ndarray, prep: Preprocessing, angle_deg: float = 0.0) -> np.ndarray:
    """A per-pixel label image (a mask) through the geometry `make_input` gives its slice: the same rotation, crop
    and resize, by nearest neighbour so that every pixel keeps a code; (size, size) uint8."""
    rotated = rotate(labels, angle_deg, cv2.INTER_NEAREST)
    return crop_resize(rotated, prep.crop_fraction, prep.input_size, cv2.INTER_NEAREST)


def input_pixel_area(shape: tuple[int, ...], prep: Preprocessing) -> float:
    """Native pixels per network-input pixel for a slice of `shape` (the crop's area over the input's)."""
    _, _, ch, cw = crop_box(shape, prep.crop_fraction)
    return ch * cw / float(prep.input_size ** 2)


def backbone_preprocess(x: np.ndarray, mode: str) -> np.ndarray:
    """keras.applications preprocess_input for RGB input in [0, 255], in numpy (no graph, no copy of Keras state)."""
    x = x.astype(np.float32, copy=False)
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "unit":
        return x / 255.0
    if mode == "caffe":  # RGB -> BGR, minus the ImageNet mean in BGR order
        return x[..., ::-1] - np.array([103.939, 116.779, 123.68], dtype=np.float32)
    if mode == "torch":
        return (x / 255.0 - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225],
                                                                                   np.float32)
    raise ValueError(f"unknown preprocess mode {mode!r}")


def gamma_curve(img: np.ndarray, gamma: float) -> np.ndarray:
    """A windowed [0, 255] image through the contrast curve 255 (x / 255)^gamma (gamma 1: unchanged)."""
    if gamma == 1.0:
        return img
    return (255.0 * np.power(img / 255.0, gamma)).astype(np.float32)


def make_input(channels: list[np.ndarray], prep: Preprocessing, angle_deg: float = 0.0,
               gamma: float = 1.0) -> np.ndarray:
    """One network input (size, size, 3) from 1 (2D) or 3 (2.5D: apex-side, slice, base-side) native slices;
    `angle_deg` and `gamma` are a training view's augmentation (data.Augmentation)."""
    planes = [crop_resize(rotate(gamma_curve(window(c, prep.window), gamma), angle_deg), prep.crop_fraction,
                          prep.input_size) for c in channels]
    if len(planes) == 1:
        planes = planes * 3
    return backbone_preprocess(np.stack(planes, axis=-1), prep.mode)
