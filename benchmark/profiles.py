"""Profiles: the protocol as data. `paper` is Ho & Kim's protocol; `quick` shrinks it for a 2-core CPU.

A run's profile is written into its config.json in full, so every number on disk says how it was made.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .errors import UnknownName


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
    # the CBR grid of a task with a target (regression, multi) where set (None: lr_cbr): trained from scratch, the
    # standardised MSE can blow up at an LR where cross-entropy trains, and a grid whose every LR diverges fails
    lr_cbr_target: tuple[float, ...] | None = None
    momentum: float = 0.9
    decay_rate: float = 1e-6            # InverseTimeDecay(lr, decay_steps=1, decay_rate)
    dropout: float = 0.5
    oversample: int = 6                 # paper text says 6; the authors' code used 5
    rotation_deg: float = 45.0
    # contrast augmentation of training views: gamma with log gamma uniform in ±intensity_gamma (0: off)
    intensity_gamma: float = 0.0
    bank_views: int = 4                 # K distinct rotated views per training slot in the cached path
    selection_metric: str = "macro_f1"  # fold-averaged validation metric that picks LR and epoch count
    test_fraction: float = 0.2
    input_sizes: dict[str, int] = field(default_factory=dict)  # per backbone; missing -> the paper's size
    weights: str = "imagenet"           # imagenet | none | auto (imagenet where the file is present, else none)
    synthetic_patients: int = 100
    cache: bool = True
    cache_dtype: str = "float16"
    cache_budget_gb: float = 8.0        # larger caches fall back to the per-epoch path
    # the frozen part's precision and images per call in the feature pass; None: this device's default
    # (infer.FEATURE_PASS: float32 and 64 on a CPU, mixed precision and larger batches on a GPU)
    feature_precision: str | None = None
    feature_batch: int | None = None
    # depth-0 CV fits on cached features run this many at a time in threads when jobs run in one process;
    # None: one more than the cores, at most 4 (fits.parallel_fits)
    cv_threads: int | None = None
    # XLA for the depth-1 training step: None takes each backbone's measured choice (registry: depth1_xla)
    jit_compile_depth1: bool | None = None
    # the stack-context model (stack.py) beside each cached depth-0 run of a slice-range dataset
    stack_model: bool = True
    stack_lrs: tuple[float, ...] = (1e-2, 3e-3, 1e-3)   # Adam
    stack_epochs: int = 100
    stack_hidden: int = 32
    stack_dropout: float = 0.3
    stack_batch: int = 8                # stacks per training step
    # which heads a grid trains (--head): classify, segment, both, or auto (both where the training data has masks
    # and OAP/IN/OBS stacks, else classify)
    head: str = "auto"
    # the segmentation head (segment.py): Adam over its LR grid, Dice + cross-entropy, the decoder's finest width
    segment_lrs: tuple[float, ...] = (1e-3, 1e-4)
    segment_epochs: int = 30
    segment_batch: int = 16
    segment_filters: int = 16
    # field overrides for one backbone key, or for "cbr" (the from-scratch baselines); per-run fields only
    per_backbone: dict[str, dict[str, Any]] = field(default_factory=dict)

    def lrs(self, depth: int, pretrained: bool, has_target: bool = False) -> tuple[float, ...]:
        if not pretrained:
            return self.lr_cbr_target if has_target and self.lr_cbr_target else self.lr_cbr
        return {0: self.lr_depth0, 1: self.lr_depth1}[depth]

    def input_size(self, spec) -> int:
        return max(spec.min_size, self.input_sizes.get(spec.key, spec.input_size))

    def for_backbone(self, spec) -> "Profile":
        """The profile one model runs under: this one with its per-backbone overrides applied."""
        over = {**self.per_backbone.get("cbr" if not spec.pretrained else "", {}),
                **self.per_backbone.get(spec.key, {})}
        bad = sorted(set(over) - PER_RUN_FIELDS)
        if bad:
            raise ValueError(f"profile {self.name}: per_backbone may not override {bad}")
        return replace(self, **over) if over else self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, **kw: Any) -> "Profile":
        """This profile with fields set; a field set here applies to every run (its per_backbone values go)."""
        kw = {k: v for k, v in kw.items() if v is not None}
        if "per_backbone" not in kw:
            per = {key: {f: v for f, v in over.items() if f not in kw} for key, over in self.per_backbone.items()}
            kw["per_backbone"] = {key: over for key, over in per.items() if over}
        return replace(self, **kw)


# what may differ between the models of one grid; data-level fields (folds, split, augmentation) may not
PER_RUN_FIELDS = {"epochs", "batch_size", "lr_depth0", "lr_depth1", "lr_cbr", "lr_cbr_target", "dropout",
                  "bank_views", "cache_dtype", "cache_budget_gb", "jit_compile_depth1", "feature_precision",
                  "feature_batch", "cv_threads", "stack_lrs", "stack_epochs", "stack_hidden", "stack_dropout", "stack_batch",
                  "segment_lrs", "segment_epochs", "segment_batch", "segment_filters"}

PROFILES: dict[str, Profile] = {p.name: p for p in [
    Profile("paper", "Ho & Kim 2021: paper input sizes, 3 LRs x 5 folds x 50 epochs, batch 32, oversample 6, "
                     "rotation ±45°, ImageNet weights required."),
    Profile("quick", "The paper's protocol shrunk so all 21 models run on the synthetic default in well under 20 "
                     "minutes on 2 CPU cores: 16 phantom patients, 3 folds, 3 epochs, LR grid {1e-2, 1e-3} at depth "
                     "0 and {1e-3} at depth 1, one bank view per training slot, inputs of 32-64 px (75/71 px, the "
                     "minimum, for the Inception family and Xception); the CBR baselines (all layers trained, slow "
                     "on CPU) get 1 epoch, LR 1e-2 (with a target, regression or multi: 1e-3, as 1e-2 diverges) "
                     "and 16 px inputs (CBR-LargeT: 32, its minimum). ImageNet weights where present, random "
                     "otherwise (recorded per run). The classification heads only, so that the 21 models keep to that time "
                     "(--head both adds the segmentation head: 3 epochs, LR 1e-3).",
            epochs=3, n_folds=3,
            lr_depth0=(1e-2, 1e-3), lr_depth1=(1e-3,), lr_cbr=(1e-2,), lr_cbr_target=(1e-3,),
            bank_views=1, weights="auto", synthetic_patients=16, stack_epochs=30,
            head="classify", segment_lrs=(1e-3,), segment_epochs=3,
            input_sizes={"mobilenet": 64, "mobilenetv2": 64, "vgg16": 64, "inceptionv3": 75, "resnet50v2": 32,
                         "inceptionresnetv2": 75, "densenet121": 32, "nasnetmobile": 32, "xception": 71,
                         "cbr_large_t": 16, "cbr_small": 16, "cbr_tiny": 16},
            per_backbone={"cbr": {"epochs": 1}}),
]}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise UnknownName(f"unknown profile {name!r}; valid: {', '.join(PROFILES)}") from None
