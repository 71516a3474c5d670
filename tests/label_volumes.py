"""Hand-built ACDC-style label volumes for the orientation and importer tests."""
from __future__ import annotations

import numpy as np


def mask_from_areas(areas, shape=(10, 10)) -> np.ndarray:
    """A (slice, H, W) uint8 mask whose slice k holds areas[k] = (LV cavity, myocardium, RV) pixel counts,
    labelled 3, 2 and 1 as in ACDC."""
    mask = np.zeros((len(areas), *shape), dtype=np.uint8)
    for k, counts in enumerate(areas):
        flat = mask[k].reshape(-1)
        start = 0
        for value, n in zip((3, 2, 1), counts):
            flat[start:start + n] = value
            start += n
    return mask
