"""Backbone registry: one small spec per network, resolved once (the timm / keras.applications habit). Data only:
it imports no TensorFlow, so the report's tables can read names and the paper's order; models.py builds the Keras
models from these specs (the head's output is Dense(C, softmax) for classification, Dense(1) for regression, or both
side by side for the multi-task head).

Depth 1 unfreezes the last convolutional block, named per spec either by its first layer (`unfreeze_from`) or by the
last frozen layer before it (`unfreeze_after`, for networks whose first block layer has an automatic name such as
`conv2d_89`). Everything from that point on in `model.layers` (topological order) trains; everything before it is
frozen and, because Keras 3 runs frozen BatchNormalization layers in inference mode, keeps its ImageNet statistics.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import UnknownName, WeightsMissing
from .weights import available, imagenet_path

POOLED = "pooled"
HEAD_DENSE = "head_dense"
HEAD_DROPOUT = "head_dropout"
HEAD_OUT = "head_out"
HEAD_TARGET = "head_target"     # the multi-task head's linear output (regression alone uses head_out)
HEAD_RESCALE = "head_rescale"   # standardised target -> original units (fixed, no weights)
HEAD_BOTH = "head_both"         # the multi-task head's one output: class probabilities, then the target
HEAD_UNITS = 256
TASKS = ("classification", "regression", "multi")
SEG_OUT = "seg_out"             # the segmentation head's per-pixel softmax over SEG_CLASSES
SEG_CLASSES = ("background", "lv_myocardium", "lv_cavity")  # the head's channels; codes from data_prep MASK_CODES


@dataclass(frozen=True)
class BackboneSpec:
    key: str
    name: str                      # as printed in the paper's tables
    input_size: int                # the paper's input size (square)
    min_size: int                  # the smallest input the architecture accepts
    application: str | None        # the keras.applications constructor's name; None for CBR baselines
    builder_kwargs: tuple[tuple[str, object], ...] = ()
    preprocess_mode: str = "tf"    # keras.applications preprocess_input mode: "tf", "caffe", "torch"; "unit" = x/255
    unfreeze_from: str | None = None
    unfreeze_after: str | None = None
    cam_layer: str | None = None   # None: the backbone's last layer (its final feature map)
    cbr: tuple[int, tuple[int, ...]] | None = None  # (kernel size, filters) for the from-scratch baselines
    # XLA for the depth-1 training step (profile.jit_compile_depth1 may override). On CPU, TF's kernels for the
    # gradients of some last blocks' convolutions on small maps are slow and XLA's are not; for depthwise and
    # separable blocks XLA is slower. ms per epoch of 342 slots, plain vs XLA, quick-profile sizes, 2 cores:
    # ResNet50V2 5300 vs 719, InceptionResNetV2 4504 vs 696, VGG16 4317 vs 2049, InceptionV3 770 vs 620;
    # MobileNet 32 vs 126, MobileNetV2 154 vs 163, NASNetMobile 73 vs 388, Xception 5282 vs 6527, DenseNet121
    # 326 vs 249 but 27 s more to compile.
    depth1_xla: bool = False
    # The feature pass in mixed_bfloat16 on a CPU with native bfloat16 arithmetic (cpus.has_bf16), where it measured
    # faster than float32. Network images/s, float32 vs bfloat16, batch 64, paper sizes, 2 cores with AVX512-BF16
    # (`python -m benchmark.perf --feature-pass --profile paper --precisions float32,mixed_bfloat16`):
    # VGG16 7.2 vs 13.8, InceptionV3 15.5 vs 27.3, InceptionResNetV2 6.7 vs 11.5, DenseNet121 18.1 vs 28.5,
    # Xception 9.7 vs 14.6, ResNet50V2 23.7 vs 33.7; not chosen: NASNetMobile 73.9 vs 81.0, MobileNet 486 vs 469,
    # MobileNetV2 317 vs 215 (their ImageNet features also moved 13 % and 10 %, relative L2).
    cpu_bf16: bool = False
    # The feature maps the segmentation decoder joins, finest first (one per resolution below the input, above the
    # backbone's output). Named where Keras gives the layers fixed names; None for the networks whose layers at
    # those resolutions carry automatic names (`activation_28`, numbered per process): for them, and the CBR nets,
    # models.skip_layers takes the last layer at each resolution.
    skip_layers: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.application is not None and (self.unfreeze_from is None) == (self.unfreeze_after is None):
            raise ValueError(f"{self.key}: name exactly one of unfreeze_from / unfreeze_after")

    @property
    def pretrained(self) -> bool:
        return self.application is not None


BACKBONES: dict[str, BackboneSpec] = {s.key: s for s in [
    BackboneSpec("mobilenet", "MobileNet α0.25", 224, 32, "MobileNet", (("alpha", 0.25),), "tf",
                 unfreeze_from="conv_dw_13",
                 skip_layers=("conv_pw_1_relu", "conv_pw_3_relu", "conv_pw_5_relu", "conv_pw_11_relu")),
    BackboneSpec("mobilenetv2", "MobileNetV2 α0.35", 224, 32, "MobileNetV2", (("alpha", 0.35),), "tf",
                 unfreeze_from="block_16_expand",
                 skip_layers=("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu",
                              "block_13_expand_relu")),
    BackboneSpec("vgg16", "VGG16", 224, 32, "VGG16", (), "caffe", unfreeze_from="block5_conv1",
                 cam_layer="block5_conv3", depth1_xla=True, cpu_bf16=True,
                 skip_layers=("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3")),
    BackboneSpec("inceptionv3", "InceptionV3", 299, 75, "InceptionV3", (), "tf", unfreeze_after="mixed9",
                 depth1_xla=True, cpu_bf16=True),
    BackboneSpec("resnet50v2", "ResNet50V2", 224, 32, "ResNet50V2", (), "tf", unfreeze_from="conv5_block3_preact_bn",
                 depth1_xla=True, cpu_bf16=True,
                 skip_layers=("conv1_conv", "conv2_block3_1_relu", "conv3_block4_1_relu", "conv4_block6_1_relu")),
    BackboneSpec("inceptionresnetv2", "InceptionResNetV2", 299, 75, "InceptionResNetV2", (), "tf",
                 unfreeze_after="block8_9_ac", depth1_xla=True, cpu_bf16=True),
    BackboneSpec("densenet121", "DenseNet121", 224, 32, "DenseNet121", (), "torch", unfreeze_from="conv5_block1_0_bn",
                 cpu_bf16=True, skip_layers=("conv1_relu", "pool2_conv", "pool3_conv", "pool4_conv")),
    BackboneSpec("nasnetmobile", "NASNetMobile", 224, 32, "NASNetMobile", (), "tf", unfreeze_after="normal_concat_11"),
    BackboneSpec("xception", "Xception", 299, 71, "Xception", (), "tf", unfreeze_from="block14_sepconv1", cpu_bf16=True),
    BackboneSpec("cbr_large_t", "CBR-LargeT", 224, 32, None, (), "unit", cbr=(7, (32, 64, 128, 256, 512))),
    BackboneSpec("cbr_small", "CBR-Small", 224, 16, None, (), "unit", cbr=(7, (32, 64, 128, 256))),
    BackboneSpec("cbr_tiny", "CBR-Tiny", 224, 16, None, (), "unit", cbr=(5, (64, 128, 256, 512))),
]}
PRETRAINED = tuple(k for k, s in BACKBONES.items() if s.pretrained)
CBR = tuple(k for k, s in BACKBONES.items() if not s.pretrained)


def get_spec(key: str) -> BackboneSpec:
    try:
        return BACKBONES[key]
    except KeyError:
        raise UnknownName(f"unknown backbone {key!r}; valid: {', '.join(BACKBONES)}") from None


def resolve_weights(spec: BackboneSpec, weights: str, input_size: int) -> str | None:
    """Turn `--weights imagenet|none|PATH` into what the Keras constructor gets, or raise WeightsMissing.

    "imagenet" is the 224-px no-top file in the Keras cache ($KERAS_HOME/models), downloaded first where it is
    missing (weights.imagenet_path). Passing the file's path (rather than weights="imagenet") makes Keras load it at
    any input size; for MobileNet at 128/160/192 px Keras would otherwise ask for a size-specific file.
    """
    if not spec.pretrained or weights == "none":
        return None
    if weights == "imagenet":
        return str(imagenet_path(spec.key))
    path = Path(weights)
    if not path.is_file():
        raise WeightsMissing(f"--weights {weights}: file not found")
    return str(path)


def weights_available(spec: BackboneSpec) -> bool:
    """The ImageNet file is in the Keras cache and passes Keras' hash (`auto` never downloads)."""
    return spec.pretrained and available(spec.key)


def choose_weights(spec: BackboneSpec, weights: str, input_size: int) -> tuple[str, str | None]:
    """(what a run records as its weights, what the Keras constructor gets) for `--weights`, `auto` included."""
    if not spec.pretrained:
        return "none (trained from scratch)", None
    if weights == "auto":
        weights = "imagenet" if weights_available(spec) else "none"
    return weights, resolve_weights(spec, weights, input_size)
