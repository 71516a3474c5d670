"""Synthetic short-axis cine stacks: a procedural bSSFP-like phantom of the heart in the chest, no download needed.

Each patient is one random anatomy seen at end-diastole (ED) and end-systole (ES) through the same slice positions,
ordered apex -> base. Labels come from the phantom's own geometry, never from a rule the image does not show:

  IN   the slice centre cuts the LV cavity: a bright blood pool inside a thick dark myocardial ring;
  OAP  the slice centre lies beyond the apex of the cavity: a solid myocardial cap, then no heart at all, with the
       liver rising into view;
  OBS  the slice centre lies beyond the mitral plane: thin-walled atria, aortic root and pulmonary trunk, the last
       crescent of LV myocardium, and no LV cavity.

No slice centre is placed within MARGIN_MM of the cavity's apex or base, so every label can be read from the image.
Each slice's mask (RV cavity, LV myocardium and LV cavity, coded by MASK_CODES) is the geometry it was rendered from.
Stacks get 8-16 slices with 0-2 OAP and 0-2 OBS (more of both at ES, when the base descends and the apical cavity
closes): about 13% outer slices overall (ED ~10%, ES ~17%), rare as in real data (ACDC ~5%, the paper's CAP data
more) yet learnable.

Intensities imitate bSSFP cine (bright blood and fat, grey myocardium and liver, dark lungs), then a smooth
multiplicative coil-shading field, a slight blur and Rician noise (magnitude of complex Gaussian noise) are applied,
and images are stored as uint16 in a scanner-like range. Patient k depends only on (seed, k).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import cv2
import numpy as np
from tqdm import tqdm

from .errors import DataPrepError
from .manifest import MASK_CODES, OVERWRITE_HELP, Stack, write_dataset

DATASET = "synthetic"
FRAMES = ("ED", "ES")
MARGIN_MM = 1.5          # no slice centre this close to where the LV cavity begins or ends
MAX_OUTER = 2            # at most this many OAP and this many OBS slices per stack
BLOOD, FAT, MYO, MUSCLE, LIVER, LUNG, SOFT = 1.0, 0.9, 0.28, 0.3, 0.42, 0.06, 0.55  # relative bSSFP signal
RV_CAVITY, LV_MYOCARDIUM, LV_CAVITY = (MASK_CODES[k] for k in ("rv_cavity", "lv_myocardium", "lv_cavity"))
MASK_STRUCTURES = tuple(MASK_CODES)  # the phantom's geometry gives every structure on every slice


@dataclass(frozen=True)
class Anatomy:
    """One patient's geometry in mm. The long axis z runs apex -> base with z = 0 at the ED cavity apex; in-plane
    (u, v) are right and down in an anatomical frame centred on the LV axis, rotated by `rotation` into the image."""

    height: int
    width: int
    spacing_mm: float
    z: np.ndarray                  # slice centres, apex -> base
    centre_px: tuple[float, float]  # (row, col) of the LV axis at z = 0
    rotation: float
    tilt: tuple[float, float]      # in-plane drift of the heart per mm of z (the long axis is not quite normal)
    cavity_radius: float           # ED, at the base
    cavity_length: float           # ED, apex to mitral plane
    wall: float                    # ED wall thickness
    cap: float                     # ED myocardium beyond the cavity apex
    es_radius: float               # ES cavity radius as a fraction of ED
    es_apex_shift: float           # the apical cavity closes by this much at ES
    es_base_shift: float           # the mitral plane descends by this much at ES
    rv_size: tuple[float, float]   # RV semi-axes (across, along the septum) at ED
    rv_apex: float                 # z where the RV begins
    body: tuple[float, float, float, float]  # centre u, v and semi-axes of the torso
    fat: float                     # subcutaneous fat thickness
    muscle: float                  # chest-wall muscle thickness
    contrast: np.ndarray           # signal multipliers: fat, muscle, soft tissue, lung, liver, myocardium
    bias: np.ndarray               # coefficients of the smooth coil-shading field
    scale: float                   # blood signal in scanner units
    noise: float                   # noise sigma as a fraction of `scale`
    blur: float                    # point-spread sigma in pixels
    dome: tuple[float, float]      # diaphragm: gap below the heart (mm) and curvature
    chambers: np.ndarray           # beyond the base: centre u, v and semi-axes of LA, RA, aortic root, pulmonary trunk
    aorta: tuple[float, float]     # descending aorta (u, v) relative to the LV axis
    organs: np.ndarray             # abdominal ellipsoids: centre u, v, z, semi-axes u, v, z, signal
    ghost: tuple[float, int, int]  # ghost amplitude, shift (pixels) and axis
    stomach: float                 # signal of the stomach: fluid (bright) or gas (dark)
    warp: float                    # amplitude (mm) of the smooth distortion of every outline
    texture_seed: int              # tissue texture, shared by ED and ES of a slice position


class PhantomStack(NamedTuple):
    images: list[np.ndarray]   # uint16, apex -> base
    labels: list[str]
    cavity_px: list[int]       # LV cavity pixels from the geometry (0 outside IN)
    masks: list[np.ndarray]    # uint8 per slice, coded by MASK_CODES
    cavity_radius_mm: list[float]


def cavity_bounds(anat: Anatomy, frame: str) -> tuple[float, float]:
    """(apex, base) of the LV cavity along z for a frame."""
    if frame == "ED":
        return 0.0, anat.cavity_length
    return anat.es_apex_shift, anat.cavity_length - anat.es_base_shift


def cavity_radius(anat: Anatomy, frame: str, z: np.ndarray | float) -> np.ndarray:
    """Cavity radius (mm) at z: a prolate half-ellipsoid truncated at the mitral plane, 0 outside the cavity."""
    a, b = cavity_bounds(anat, frame)
    r = anat.cavity_radius * (anat.es_radius if frame == "ES" else 1.0)
    t = (b - np.asarray(z, dtype=float)) / (b - a)
    return np.where((t > 0) & (t < 1), r * np.sqrt(np.clip(1 - t * t, 0, None)), 0.0)


def outer_radius(anat: Anatomy, frame: str, z: np.ndarray | float) -> np.ndarray:
    """Epicardial radius (mm) at z. The apex hardly moves, so ES keeps the outer apex; the ring's area at the base
    is conserved, which makes the ES wall thicker as the cavity shrinks."""
    a, b = cavity_bounds(anat, frame)
    rc = anat.cavity_radius * (anat.es_radius if frame == "ES" else 1.0)
    ro = math.sqrt(rc ** 2 + (anat.cavity_radius + anat.wall) ** 2 - anat.cavity_radius ** 2)
    apex = -anat.cap
    t = (b - np.asarray(z, dtype=float)) / (b - apex)
    return np.where((t > 0) & (t < 1), ro * np.sqrt(np.clip(1 - t * t, 0, None)), 0.0)


def label_at(anat: Anatomy, frame: str, z: float) -> str:
    a, b = cavity_bounds(anat, frame)
    return "OAP" if z <= a else ("OBS" if z >= b else "IN")


def _clear(z: np.ndarray, boundary: float) -> bool:
    return bool(np.all(np.abs(z - boundary) >= MARGIN_MM))


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient. The slice grid is placed so that ED has k_oap OAP and k_obs OBS slices and no slice centre
    is within MARGIN_MM of a cavity boundary in either frame."""
    spacing = float(rng.uniform(1.2, 1.9))
    fov = rng.uniform(260, 370, size=2) * np.array([1.0, rng.uniform(0.75, 1.0)])
    height, width = (int(np.clip(round(f / spacing), 128, 192)) for f in fov)

    # ED: k_oap + n_in + k_obs slices, 8-16 in all, the n_in IN slices spanning a cavity of length `length`
    length = float(rng.uniform(60, 95))
    k_oap, k_obs = (int(k) for k in rng.choice(MAX_OUTER + 1, size=2, p=[0.6, 0.32, 0.08]))
    w = float(rng.uniform(0.5, 1.5))               # cavity length beyond n_in - 1 gaps, in gaps
    n_in = int(np.clip(round(length / rng.uniform(6.5, 10.0) - w + 1),
                       max(6, 8 - k_oap - k_obs), min(12, 16 - k_oap - k_obs)))
    gap = length / (n_in - 1 + w)
    first = float(rng.uniform(max(MARGIN_MM, (w - 1) * gap + MARGIN_MM), min(gap - MARGIN_MM, w * gap - MARGIN_MM)))
    z = first + gap * (np.arange(n_in + k_oap + k_obs) - k_oap)

    # ES: the apical cavity closes and the mitral plane descends; redraw until the slices stay clear of both
    # boundaries and keep at most MAX_OUTER outer slices of each kind (no shift at all always qualifies).
    apex_shift = base_shift = 0.0
    for _ in range(50):
        d = float(rng.uniform(0, 5))
        if _clear(z, d) and np.sum(z <= d) <= MAX_OUTER:
            apex_shift = d
            break
    for _ in range(50):
        d = float(rng.uniform(2, 8))
        if _clear(z, length - d) and np.sum(z >= length - d) <= MAX_OUTER:
            base_shift = d
            break

    radius = float(rng.uniform(20, 30))
    n_org = int(rng.integers(5, 13))
    wall = float(rng.uniform(7, 11))
    fat, muscle = float(rng.uniform(8, 22)), float(rng.uniform(8, 18))
    semi_v = float(rng.uniform(105, 130))
    # the RV lies just behind the sternum: the thoracic cavity starts 10-30 mm in front of the epicardium
    body_v = semi_v - (radius + wall + float(rng.uniform(10, 30)) + fat + muscle)
    angle = float(rng.uniform(-0.5, 0.5))
    return Anatomy(
        height=height, width=width, spacing_mm=spacing, z=z,
        centre_px=(height * rng.uniform(0.4, 0.55), width * rng.uniform(0.45, 0.6)),
        rotation=angle, tilt=tuple(rng.uniform(-0.12, 0.12, size=2)),
        cavity_radius=radius, cavity_length=length, wall=wall, cap=float(rng.uniform(6, 10)),
        es_radius=float(rng.uniform(0.55, 0.72)), es_apex_shift=apex_shift, es_base_shift=base_shift,
        rv_size=(float(rng.uniform(0.7, 1.1) * radius), float(rng.uniform(1.5, 1.9) * radius)),
        rv_apex=float(rng.uniform(0.12, 0.3) * length),
        body=(float(rng.uniform(-45, -20)), body_v, float(rng.uniform(150, 185)), semi_v), fat=fat, muscle=muscle,
        contrast=rng.uniform(0.85, 1.15, size=6),
        bias=rng.normal(0, 1, size=5),
        scale=float(rng.uniform(600, 1600)), noise=float(rng.uniform(0.02, 0.045)),
        blur=float(rng.uniform(0.5, 0.9)),
        dome=(float(rng.uniform(-2, 5)), float(rng.uniform(0.002, 0.006))),
        chambers=np.array([[10, 16, 24, 17], [-42, 12, 20, 24], [-12, -14, 12, 12], [-32, -38, 12, 12]])
        * (radius / 25) * rng.uniform(0.8, 1.2, size=(4, 4)),
        aorta=(float(rng.uniform(30, 50)), float(rng.uniform(45, 60))),
        organs=np.column_stack([rng.uniform(-120, 120, n_org), rng.uniform(30, 150, n_org),
                                rng.uniform(-60, 60, n_org), rng.uniform(8, 28, (n_org, 2)),
                                rng.uniform(15, 60, n_org), rng.uniform(0.05, 0.9, n_org)]),
        ghost=(float(rng.uniform(0, 0.07)), int(rng.integers(20, 60)), int(rng.integers(2))),
        stomach=float(rng.choice([0.05, 0.7]) * rng.uniform(0.8, 1.2)), warp=float(rng.uniform(3, 6)),
        texture_seed=int(rng.integers(2 ** 31)),
    )


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, au: float, av: float) -> np.ndarray:
    """Normalised radius: < 1 inside the axis-aligned ellipse."""
    return np.hypot((u - cu) / max(au, 1e-6), (v - cv) / max(av, 1e-6))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    field = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    return field / (field.std() + 1e-6)


class Texture(NamedTuple):
    coarse: np.ndarray
    fine: np.ndarray
    dots: np.ndarray                      # lung vessels
    warp: tuple[np.ndarray, np.ndarray]   # smooth displacement (mm) of the anatomy


def make_textures(anat: Anatomy) -> list[Texture]:
    """One texture per slice position, identical in ED and ES (only the heart moves between them)."""
    rng = np.random.default_rng(anat.texture_seed)
    shape = (anat.height, anat.width)
    warp_sigma = 20.0 / anat.spacing_mm
    out = []
    for _ in anat.z:
        dots = (rng.random(shape) > 0.994).astype(np.float32)
        dots = np.clip(cv2.GaussianBlur(dots, (0, 0), 0.7) * 4.0, 0, 1)
        warp = (anat.warp * _smooth_noise(rng, shape, warp_sigma), anat.warp * _smooth_noise(rng, shape, warp_sigma))
        out.append(Texture(_smooth_noise(rng, shape, 6.0), _smooth_noise(rng, shape, 1.5), dots, warp))
    return out


def _bias_field(anat: Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # Surface coils make the image brighter near one side of the chest and darker across it.
    half = 0.5 * max(anat.height, anat.width) * anat.spacing_mm
    xn, yn = x / half, y / half
    b = anat.bias
    return np.exp(0.25 * (b[0] * xn + b[1] * yn) + 0.12 * (b[2] * xn * yn + b[3] * xn * xn + b[4] * yn * yn))


def render_slice(anat: Anatomy, frame: str, index: int, texture: Texture,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One slice as (uint16 image, uint8 mask)."""
    z = float(anat.z[index])
    es = frame == "ES"
    c = anat.contrast
    coarse, fine, dots, warp = texture
    rows, cols = np.mgrid[0:anat.height, 0:anat.width].astype(np.float32)
    x = (cols - anat.centre_px[1]) * anat.spacing_mm
    y = (rows - anat.centre_px[0]) * anat.spacing_mm
    cr, sr = math.cos(anat.rotation), math.sin(anat.rotation)
    u, v = cr * x + sr * y, -sr * x + cr * y
    hu, hv = u - anat.tilt[0] * z, v - anat.tilt[1] * z  # heart frame: the LV axis drifts along z

    # a smooth per-position warp keeps every outline from being a perfect ellipse (half strength on the heart,
    # whose short-axis section really is nearly round)
    wu, wv = warp
    u, v = u + wu, v + wv
    hu, hv = hu + 0.5 * wu, hv + 0.5 * wv

    img = np.zeros_like(u)
    mask = np.zeros(u.shape, np.uint8)

    # torso: subcutaneous fat, chest-wall muscle, then the thoracic cavity filled with lung
    bu, bv, ba, bb = anat.body
    body = _ellipse(u, v, bu, bv, ba, bb)
    inner = _ellipse(u, v, bu, bv, ba - anat.fat, bb - anat.fat)
    core = _ellipse(u, v, bu, bv, ba - anat.fat - anat.muscle, bb - anat.fat - anat.muscle) < 1
    img[body < 1] = FAT * c[0] * (1 + 0.05 * fine[body < 1])
    img[inner < 1] = MUSCLE * c[1] * (1 + 0.06 * fine[inner < 1])
    img[core] = LUNG * c[3] * (1 + 0.3 * coarse[core]) + 0.35 * dots[core]

    a, b = cavity_bounds(anat, frame)
    ro_max = float(outer_radius(anat, frame, b - 1e-3))

    # below the dome of the diaphragm: liver, and the stomach on the left of the body. The heart rests on the
    # dome, which rises into the plane beyond the apex.
    if z >= b:
        top = 0.85 * ro_max + 4 + 0.25 * b + 0.8 * (z - b)
    elif z > -anat.cap:
        top = 0.85 * float(outer_radius(anat, frame, z)) + 4 + 0.25 * max(z, 0.0)
    else:
        top = max(4 + 1.2 * (z + anat.cap), -0.6 * ro_max)
    top += anat.dome[0]
    dome = top + anat.dome[1] * (hu + 20) ** 2
    abdomen = core & (hv > dome)
    img[abdomen] = LIVER * c[4] * (1 + 0.08 * coarse[abdomen] + 0.04 * fine[abdomen])
    stomach = abdomen & (_ellipse(hu, hv, 80, top + 50, 35, 28) < 1)
    img[stomach] = anat.stomach * (1 + 0.1 * coarse[stomach])
    # bowel, kidney, spleen, vessels: ellipsoids whose sections grow and shrink from slice to slice
    for cu, cv_, cz, au, av, az, signal in anat.organs:
        k = 1 - ((z - cz) / az) ** 2
        if k > 0:
            organ = abdomen & (_ellipse(u, v, cu, cv_, au * math.sqrt(k), av * math.sqrt(k)) < 1)
            img[organ] = signal * (1 + 0.1 * coarse[organ])

    # descending aorta behind the heart, in a rim of mediastinal tissue
    aorta = _ellipse(hu, hv, anat.aorta[0], anat.aorta[1], 11, 11)
    img[core & (aorta < 1.6)] = SOFT * c[2] * (1 + 0.12 * coarse[core & (aorta < 1.6)])
    img[aorta < 1] = BLOOD * 0.95

    # heart
    rc = float(cavity_radius(anat, frame, z))
    ro = float(outer_radius(anat, frame, z))
    r_hv = np.hypot(hu, hv)
    rv_scale = (0.7, 0.85) if es else (1.0, 1.0)
    rv_a, rv_b = anat.rv_size[0] * rv_scale[0], anat.rv_size[1] * rv_scale[1]
    rv_base = b + 8
    t = (rv_base - z) / (rv_base - anat.rv_apex)
    s_rv = math.sqrt(1 - t * t) if 0 < t < 1 else 0.0
    rv_ellipse = _ellipse(hu, hv, -(0.55 * ro + 0.35 * rv_a * s_rv), -0.1 * rv_b, rv_a * s_rv, rv_b * s_rv)

    heart = (r_hv < ro + 0.5) | (rv_ellipse < 1.0 + 3.0 / max(rv_a * s_rv, 3.0))
    if z >= b:
        # above the mitral plane the atria and great vessels sit in a block of fat and connective tissue
        block = _ellipse(hu, hv, -0.3 * ro_max, 0, 1.5 * ro_max, 1.15 * ro_max) < 1
        img[block] = SOFT * c[2] * (1 + 0.15 * coarse[block])
        heart |= block
    # epicardial and pericardial fat: a bright layer of varying thickness around the heart
    if heart.any():
        dist = cv2.distanceTransform((~heart).astype(np.uint8), cv2.DIST_L2, 3) * anat.spacing_mm
        shell = ~heart & (dist < 1.5 + 2.5 * (coarse + 1))
        img[shell] = FAT * 0.85 * c[0] * (1 + 0.05 * fine[shell])

    if s_rv > 0:
        wall = rv_ellipse < 1.0 + 3.0 / max(rv_a * s_rv, 3.0)
        img[wall] = MYO * c[5]
        cavity = (rv_ellipse < 1.0) & (r_hv > ro + 1.0)
        img[cavity] = BLOOD * (1 + 0.04 * coarse[cavity])
        mask[cavity] = RV_CAVITY

    if ro > 0 and z < b:
        myo = r_hv < ro
        img[myo] = MYO * c[5] * (1 + 0.05 * fine[myo])
        mask[myo] = LV_MYOCARDIUM
        if rc > 0:
            pool = r_hv < rc
            img[pool] = BLOOD * (1 + 0.04 * coarse[pool])
            mask[pool] = LV_CAVITY
            # papillary muscles: dark dots against the free wall in the middle of the ventricle
            if 0.2 < (z - a) / (b - a) < 0.85 and rc > 8:
                for ang in (-0.6, 2.4):
                    pap = np.hypot(hu - 0.72 * rc * math.cos(ang), hv - 0.72 * rc * math.sin(ang)) < 0.2 * rc
                    img[pap & pool] = MYO * c[5]
    elif z >= b:
        # above the mitral plane: the last crescent of LV myocardium, then atria and great vessels
        span = math.pi * 1.6 * max(0.0, 1 - (z - b) / 10.0)
        if span > 0:
            # the crescent closes last on the posterolateral side, away from the outflow tract
            off_axis = np.abs(np.angle(np.exp(1j * (np.arctan2(hv, hu) - 1.2))))
            arc = (r_hv < ro_max) & (r_hv > ro_max - 0.6 * anat.wall) & (off_axis < span / 2)
            img[arc] = MYO * c[5]
            mask[arc] = LV_MYOCARDIUM
        # left atrium, right atrium, aortic root, pulmonary trunk; the atria fill during systole
        grow = np.array([1.15, 1.15, 1.0, 1.0]) if es else np.ones(4)
        for (cu, cv_, au, av), g in zip(anat.chambers, grow):
            au, av = au * g, av * g
            e = _ellipse(hu, hv, cu, cv_, au, av)
            img[(e < 1 + 2.5 / au) & ~(mask == LV_MYOCARDIUM)] = MYO * c[5] * 0.9
            chamber = e < 1
            img[chamber] = BLOOD * (1 + 0.05 * coarse[chamber])

    # acquisition: coil shading, point-spread blur, Rician noise, scanner units
    img = img * _bias_field(anat, x, y) * anat.scale
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), anat.blur)
    # breathing and flow leave faint ghosts of the image along the phase-encoding direction
    img = img + anat.ghost[0] * np.roll(img, int(anat.ghost[1]), axis=int(anat.ghost[2]))
    sigma = anat.noise * anat.scale
    re = img + rng.normal(0, sigma, img.shape)
    im = rng.normal(0, sigma, img.shape)
    out = np.clip(np.rint(np.hypot(re, im)), 0, 65535).astype(np.uint16)
    return out, mask


def make_stack(rng: np.random.Generator, anat: Anatomy, frame: str,
               textures: list[Texture] | None = None) -> PhantomStack:
    """Render one frame of one anatomy; `rng` supplies only the noise. Pass `textures` (from `make_textures`)
    to share the tissue texture between frames."""
    if frame not in FRAMES:
        raise DataPrepError(f"frame must be one of {FRAMES}, got {frame!r}")
    if textures is None:
        textures = make_textures(anat)
    images, masks = [], []
    for i in range(len(anat.z)):
        img, mask = render_slice(anat, frame, i, textures[i], rng)
        images.append(img)
        masks.append(mask)
    labels = [label_at(anat, frame, float(z)) for z in anat.z]
    return PhantomStack(images, labels, [int(np.count_nonzero(m == LV_CAVITY)) for m in masks], masks,
                        [float(cavity_radius(anat, frame, z)) for z in anat.z])


def patient_rng(seed: int, patient: int) -> np.random.Generator:
    """Patient k's generator depends only on (seed, k), so it is the same whatever --patients is."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(patient,)))


def make_patient(seed: int, patient: int) -> tuple[Anatomy, dict[str, PhantomStack]]:
    rng = patient_rng(seed, patient)
    anat = sample_anatomy(rng)
    textures = make_textures(anat)
    return anat, {frame: make_stack(rng, anat, frame, textures) for frame in FRAMES}


def _stacks(seed: int, patients: int) -> Iterator[Stack]:
    for k in tqdm(range(patients), desc="synthetic patients", unit="patient"):
        anat, frames = make_patient(seed, k)
        for frame, ph in frames.items():
            yield Stack(
                patient=f"syn{k:03d}", frame=frame, images=ph.images, labels=ph.labels,
                sources=[f"synthetic(seed={seed},patient={k},frame={frame},slice={i})" for i in range(len(ph.images))],
                pixel_spacing_mm=anat.spacing_mm, extra={"lv_cavity_px": ph.cavity_px}, masks=ph.masks)


def generate(out: str | Path, patients: int = 100, seed: int = 0, overwrite: bool = False) -> Path:
    """Write `patients` synthetic patients (ED and ES stacks each) as a dataset directory; returns its path."""
    if isinstance(patients, bool) or not isinstance(patients, (int, np.integer)) or patients < 1:
        raise DataPrepError(f"--patients must be a whole number of at least 1, got {patients!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataPrepError(f"--seed must be a non-negative whole number, got {seed!r}")
    return write_dataset(out, DATASET, _stacks(int(seed), int(patients)),
                         source=f"data_prep.synthetic phantom (seed={seed})",
                         options={"patients": int(patients), "seed": int(seed)}, overwrite=overwrite,
                         mask_structures=MASK_STRUCTURES)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="dataset directory to write")
    parser.add_argument("--patients", type=int, default=100, help="number of patients, each with ED and ES (100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; patient k depends only on (seed, k) (0)")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def run(args: argparse.Namespace) -> Path:
    return generate(args.out, patients=args.patients, seed=args.seed, overwrite=args.overwrite)
