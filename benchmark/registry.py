"""Backbone registry: one small spec per network, resolved once (the timm / keras.applications habit).

Every model the benchmark trains is one flat functional graph
    image -> backbone layers -> GlobalAveragePooling2D("pooled") -> Dense(256) -> Dropout -> the task's output
so that Grad-CAM tools see every layer and the pooled features can be read by name. The output (`head`) is
Dense(C, softmax) for classification, Dense(1) for regression, or both side by side for the multi-task head.

Depth 1 unfreezes the last convolutional block, named per spec either by its first layer (`unfreeze_from`) or by the
last frozen layer before it (`unfreeze_after`, for networks whose first block layer has an automatic name such as
`conv2d_89`). Everything from that point on in `model.layers` (topological order) trains; everything before it is
frozen and, because Keras 3 runs frozen BatchNormalization layers in inference mode, keeps its ImageNet statistics.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
from keras import layers

from .weights import WeightsMissing, available, imagenet_path

POOLED = "pooled"
HEAD_DENSE = "head_dense"
HEAD_DROPOUT = "head_dropout"
HEAD_OUT = "head_out"
HEAD_TARGET = "head_target"     # the multi-task head's linear output (regression alone uses head_out)
HEAD_RESCALE = "head_rescale"   # standardised target -> original units (fixed, no weights)
HEAD_BOTH = "head_both"         # the multi-task head's one output: class probabilities, then the target
HEAD_UNITS = 256
TASKS = ("classification", "regression", "multi")


@dataclass(frozen=True)
class BackboneSpec:
    key: str
    name: str                      # as printed in the paper's tables
    input_size: int                # the paper's input size (square)
    min_size: int                  # the smallest input the architecture accepts
    builder: Callable[..., keras.Model] | None  # keras.applications constructor; None for CBR baselines
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

    def __post_init__(self) -> None:
        if self.builder is not None and (self.unfreeze_from is None) == (self.unfreeze_after is None):
            raise ValueError(f"{self.key}: name exactly one of unfreeze_from / unfreeze_after")

    @property
    def pretrained(self) -> bool:
        return self.builder is not None


A = keras.applications
BACKBONES: dict[str, BackboneSpec] = {s.key: s for s in [
    BackboneSpec("mobilenet", "MobileNet α0.25", 224, 32, A.MobileNet, (("alpha", 0.25),), "tf",
                 unfreeze_from="conv_dw_13"),
    BackboneSpec("mobilenetv2", "MobileNetV2 α0.35", 224, 32, A.MobileNetV2, (("alpha", 0.35),), "tf",
                 unfreeze_from="block_16_expand"),
    BackboneSpec("vgg16", "VGG16", 224, 32, A.VGG16, (), "caffe", unfreeze_from="block5_conv1",
                 cam_layer="block5_conv3", depth1_xla=True),
    BackboneSpec("inceptionv3", "InceptionV3", 299, 75, A.InceptionV3, (), "tf", unfreeze_after="mixed9",
                 depth1_xla=True),
    BackboneSpec("resnet50v2", "ResNet50V2", 224, 32, A.ResNet50V2, (), "tf", unfreeze_from="conv5_block3_preact_bn",
                 depth1_xla=True),
    BackboneSpec("inceptionresnetv2", "InceptionResNetV2", 299, 75, A.InceptionResNetV2, (), "tf",
                 unfreeze_after="block8_9_ac", depth1_xla=True),
    BackboneSpec("densenet121", "DenseNet121", 224, 32, A.DenseNet121, (), "torch", unfreeze_from="conv5_block1_0_bn"),
    BackboneSpec("nasnetmobile", "NASNetMobile", 224, 32, A.NASNetMobile, (), "tf", unfreeze_after="normal_concat_11"),
    BackboneSpec("xception", "Xception", 299, 71, A.Xception, (), "tf", unfreeze_from="block14_sepconv1"),
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
        raise KeyError(f"unknown backbone {key!r}; valid: {', '.join(BACKBONES)}") from None


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


def _cbr_backbone(spec: BackboneSpec, inputs: keras.KerasTensor) -> keras.KerasTensor:
    kernel, filters = spec.cbr
    x = inputs
    for i, f in enumerate(filters, start=1):
        x = layers.Conv2D(f, kernel, padding="same", use_bias=False, name=f"cbr{i}_conv")(x)
        # momentum 0.9 (Keras default 0.99): a from-scratch net in the quick profile takes only ~100 steps, too few
        # for 0.99 moving averages to forget their initial values, which then wrecks inference-mode predictions
        x = layers.BatchNormalization(momentum=0.9, name=f"cbr{i}_bn")(x)
        x = layers.Activation("relu", name=f"cbr{i}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"cbr{i}_pool")(x)
    return x


def build_model(spec: BackboneSpec, input_size: int, n_classes: int, *, weights: str | None = None,
                dropout: float = 0.5, seed: int = 0, task: str = "classification",
                target_scale: tuple[float, float] = (0.0, 1.0)) -> keras.Model:
    """The flat model: image (input_size², 3 channels, already preprocessed) -> the task's output (see `head`).

    `weights` is what `resolve_weights` returned (a file path or None). The head's initialisers and dropout are
    seeded so that the same head can be rebuilt on cached features (see cache.py) with identical weights.
    """
    if input_size < spec.min_size:
        raise ValueError(f"{spec.key} needs an input of at least {spec.min_size} px, got {input_size}")
    inputs = keras.Input((input_size, input_size, 3), name="image")
    if spec.pretrained:
        backbone = spec.builder(include_top=False, weights=weights, input_tensor=inputs,
                                **dict(spec.builder_kwargs))
        fmap = backbone.output
    else:
        fmap = _cbr_backbone(spec, inputs)
    pooled = layers.GlobalAveragePooling2D(name=POOLED)(fmap)
    outputs = head(pooled, n_classes, dropout=dropout, seed=seed, task=task, target_scale=target_scale)
    return keras.Model(inputs, outputs, name=f"{spec.key}_{task}")


def head(x: keras.KerasTensor, n_classes: int, *, dropout: float, seed: int, task: str = "classification",
         target_scale: tuple[float, float] = (0.0, 1.0)):
    """Dense(256, relu) -> Dropout -> the task's output, with seeded initialisers:

        classification  Dense(C, softmax) "head_out"
        regression      Dense(1) "head_out" -> x * sd + mean "head_rescale"
        multi           [Dense(C, softmax) "head_out", Dense(1) "head_target" -> "head_rescale"] as one (C + 1)
                        output "head_both": probabilities, then the target

    The linear output learns the target standardised by `target_scale` = (mean, SD) of the training pool (errors of
    hundreds of raw pixels give gradients far too large for SGD at the paper's learning rates); the fixed rescale is part of the graph rather
    than a step of `predict`, so the saved .keras model alone predicts in the target's own units, and the engine's
    cached and per-epoch paths, its validation and its test all read the same numbers. One output tensor for the
    multi-task head (not two Keras outputs) keeps every single-output path of the engine as it is.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    x = layers.Dense(HEAD_UNITS, activation="relu", name=HEAD_DENSE,
                     kernel_initializer=keras.initializers.GlorotUniform(seed=seed))(x)
    x = layers.Dropout(dropout, seed=seed + 1, name=HEAD_DROPOUT)(x)
    if task == "classification":
        return layers.Dense(n_classes, activation="softmax", name=HEAD_OUT,
                            kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 2))(x)
    mean, sd = target_scale
    linear = layers.Dense(1, name=HEAD_OUT if task == "regression" else HEAD_TARGET,
                          kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 3))(x)
    target = layers.Rescaling(scale=sd, offset=mean, name=HEAD_RESCALE)(linear)
    if task == "regression":
        return target
    proba = layers.Dense(n_classes, activation="softmax", name=HEAD_OUT,
                         kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 2))(x)
    return layers.Concatenate(name=HEAD_BOTH)([proba, target])


def head_layers(model: keras.Model) -> tuple[str, ...]:
    """Names of the head's layers with weights (what a saved head holds)."""
    names = {layer.name for layer in model.layers}
    return tuple(n for n in (HEAD_DENSE, HEAD_OUT, HEAD_TARGET) if n in names)


def first_unfrozen_index(model: keras.Model, spec: BackboneSpec) -> int:
    """Index in model.layers of the first layer trained at depth 1."""
    names = [layer.name for layer in model.layers]
    anchor = spec.unfreeze_from or spec.unfreeze_after
    if anchor not in names:
        raise ValueError(f"{spec.key}: layer {anchor!r} not found in the model")
    return names.index(anchor) + (1 if spec.unfreeze_after else 0)


def set_depth(model: keras.Model, spec: BackboneSpec, depth: int) -> None:
    """Freeze for a depth: 0 = head only; 1 = last convolutional block + head. CBR baselines train everything."""
    if not spec.pretrained:
        for layer in model.layers:
            layer.trainable = True
        return
    pooled = [layer.name for layer in model.layers].index(POOLED)
    start = {0: pooled, 1: first_unfrozen_index(model, spec)}[depth]
    for i, layer in enumerate(model.layers):
        layer.trainable = i >= start


def cam_layer_name(model: keras.Model, spec: BackboneSpec) -> str:
    """The feature map Grad-CAM reads: the spec's layer, else the backbone's last layer (the one pooled)."""
    if spec.cam_layer:
        return spec.cam_layer
    return model.layers[[layer.name for layer in model.layers].index(POOLED) - 1].name
