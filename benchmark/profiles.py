"""Profiles: the protocol as data. `paper` is Ho & Kim's protocol; `quick` shrinks it for a 2-core CPU.

A run's profile is written into its config.json in full, so every number on disk says how it was made.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    epochs: int = 50
    batch_size: int = 32
    n_folds: int = 5
    lr_depth0: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
    lr_depth1: tuple[float, ...] = (1e-3, 1e-4, 1e-5)
    lr_cbr: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
    momentum: float = 0.9
    decay_rate: float = 1e-6            # InverseTimeDecay(lr, decay_steps=1, decay_rate)
    dropout: float = 0.5
    oversample: int = 6                 # paper text says 6; the authors' code used 5
    rotation_deg: float = 45.0
    bank_views: int = 4                 # K distinct rotated views per training slot in the cached path
    selection_metric: str = "macro_f1"  # fold-averaged validation metric that picks LR and epoch count
    test_fraction: float = 0.2
    input_sizes: dict[str, int] = field(default_factory=dict)  # per backbone; missing -> the paper's size
    weights: str = "imagenet"           # imagenet | none | auto (imagenet where the file is present, else none)
    synthetic_patients: int = 100
    cache: bool = True
    cache_dtype: str = "float16"
    cache_budget_gb: float = 8.0        # larger depth-1 caches fall back to the per-epoch path

    def lrs(self, depth: int, pretrained: bool) -> tuple[float, ...]:
        if not pretrained:
            return self.lr_cbr
        return {0: self.lr_depth0, 1: self.lr_depth1}[depth]

    def input_size(self, spec) -> int:
        return max(spec.min_size, self.input_sizes.get(spec.key, spec.input_size))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, **kw: Any) -> "Profile":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


PROFILES: dict[str, Profile] = {p.name: p for p in [
    Profile("paper", "Ho & Kim 2021: paper input sizes, 3 LRs x 5 folds x 50 epochs, batch 32, oversample 6, "
                     "rotation ±45°, ImageNet weights required."),
    Profile("quick", "The paper's protocol shrunk for a 2-core CPU: 12 epochs, 2 LRs per grid (the middle "
                     "and the best-known ends dropped), small inputs (64 px; 75-80 px for the Inception family "
                     "and Xception, their minimum), CBR baselines at 32 px, 40 synthetic patients, 2 bank views; "
                     "ImageNet weights where present, random otherwise (recorded per run).",
            epochs=12, n_folds=5,
            lr_depth0=(1e-2, 1e-3), lr_depth1=(1e-3, 1e-4), lr_cbr=(1e-2, 1e-3),
            bank_views=2, weights="auto", synthetic_patients=40,
            input_sizes={"mobilenet": 96, "mobilenetv2": 96, "vgg16": 64, "inceptionv3": 75, "resnet50v2": 64,
                         "inceptionresnetv2": 75, "densenet121": 64, "nasnetmobile": 64, "xception": 71,
                         "cbr_large_t": 32, "cbr_small": 32, "cbr_tiny": 32}),
]}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown profile {name!r}; valid: {', '.join(PROFILES)}") from None
