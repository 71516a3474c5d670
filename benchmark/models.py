"""Building the benchmark's Keras models from registry specs (registry.py itself holds data only and imports no
TensorFlow): the flat backbone -> pooled -> head graph, the head, freezing for a depth, the Grad-CAM layer.

Every model the benchmark trains is one flat functional graph
    image -> backbone layers -> GlobalAveragePooling2D("pooled") -> Dense(256) -> Dropout -> the task's output
so that Grad-CAM tools see every layer and the pooled features can be read by name.
"""
from __future__ import annotations

import math

import keras
from keras import layers

from .registry import (HEAD_BOTH, HEAD_DENSE, HEAD_DROPOUT, HEAD_OUT, HEAD_RESCALE, HEAD_TARGET, HEAD_UNITS, POOLED,
                       SEG_CLASSES, SEG_OUT, TASKS, BackboneSpec)

SEG_PREFIX = "seg_"  # every layer of the segmentation decoder


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


def _backbone(spec: BackboneSpec, input_size: int, weights: str | None) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """(the image input, the backbone's final feature map), the backbone's layers named as Keras names them."""
    if input_size < spec.min_size:
        raise ValueError(f"{spec.key} needs an input of at least {spec.min_size} px, got {input_size}")
    inputs = keras.Input((input_size, input_size, 3), name="image")
    if spec.pretrained:
        build = getattr(keras.applications, spec.application)
        backbone = build(include_top=False, weights=weights, input_tensor=inputs, **dict(spec.builder_kwargs))
        return inputs, backbone.output
    return inputs, _cbr_backbone(spec, inputs)


def build_model(spec: BackboneSpec, input_size: int, n_classes: int, *, weights: str | None = None,
                dropout: float = 0.5, seed: int = 0, task: str = "classification",
                target_scale: tuple[float, float] = (0.0, 1.0)) -> keras.Model:
    """The flat model: image (input_size², 3 channels, already preprocessed) -> the task's output (see `head`).

    `weights` is what `resolve_weights` returned (a file path or None). The head's initialisers and dropout are
    seeded so that the same head can be rebuilt on cached features (see cache.py) with identical weights.
    """
    inputs, fmap = _backbone(spec, input_size, weights)
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


def skip_layers(model: keras.Model, spec: BackboneSpec) -> tuple[str, ...]:
    """The layers whose maps the decoder joins, finest first: the spec's names, else per octave of resolution below
    the input and above the final map the last layer at it (padding and cropping layers, whose maps are the
    neighbour's with a border, left out), so two maps of 149 and 147 px count as one level."""
    if spec.skip_layers:
        return spec.skip_layers
    size_in, size_out = model.inputs[0].shape[1], model.outputs[0].shape[1]
    level: dict[int, str] = {}
    for layer in model.layers:
        shape = getattr(layer, "output", None) is not None and layer.output.shape
        if (not shape or len(shape) != 4 or isinstance(layer, (layers.ZeroPadding2D, layers.Cropping2D))
                or not size_out < shape[1] < size_in):
            continue
        level[round(math.log2(size_in / shape[1]))] = layer.name
    return tuple(level[k] for k in sorted(level))


def build_segmenter(spec: BackboneSpec, input_size: int, *, weights: str | None = None, filters: int = 16,
                    seed: int = 0) -> keras.Model:
    """The backbone with a U-Net-style decoder: from its final map, at each skip layer (deepest first) a bilinear
    resize to that map's size, concatenation, Conv3x3-BN-ReLU; then per-pixel logits at the finest skip's
    resolution (half the input's), resized bilinearly to the input's, and a softmax over SEG_CLASSES ("seg_out"). A
    convolution at the input's own resolution would cost as much again as the rest of the decoder, on a CPU, for
    detail below the masks' own. A resize instead of a fixed 2x upsampling follows the odd map sizes of the
    Inception family and Xception (149, 73, 35, ...). The decoder's width halves at each finer level, from
    filters x 2^(levels - 1), at most 256."""
    inputs, fmap = _backbone(spec, input_size, weights)
    encoder = keras.Model(inputs, fmap)
    skips = skip_layers(encoder, spec)
    init = keras.initializers.HeNormal
    x = fmap

    def conv_block(x, n: int, i: int):
        x = layers.Conv2D(n, 3, padding="same", use_bias=False, kernel_initializer=init(seed + i),
                          name=f"{SEG_PREFIX}conv{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{SEG_PREFIX}bn{i}")(x)
        return layers.Activation("relu", name=f"{SEG_PREFIX}relu{i}")(x)

    for i, name in enumerate(reversed(skips)):
        skip = encoder.get_layer(name).output
        x = layers.Resizing(skip.shape[1], skip.shape[2], interpolation="bilinear", name=f"{SEG_PREFIX}up{i}")(x)
        x = layers.Concatenate(name=f"{SEG_PREFIX}join{i}")([x, skip])
        x = conv_block(x, min(256, filters * 2 ** (len(skips) - 1 - i)), i)
    x = layers.Conv2D(len(SEG_CLASSES), 1, kernel_initializer=keras.initializers.GlorotUniform(seed + 100),
                      name=f"{SEG_PREFIX}logits")(x)
    x = layers.Resizing(input_size, input_size, interpolation="bilinear", name=f"{SEG_PREFIX}up_input")(x)
    out = layers.Activation("softmax", name=SEG_OUT)(x)
    return keras.Model(inputs, out, name=f"{spec.key}_segment")


def set_segment_depth(model: keras.Model, spec: BackboneSpec, depth: int) -> None:
    """Freeze a segmenter for a depth: 0 = the decoder only; 1 = also the backbone's last block (as set_depth); a CBR
    net trains everything."""
    start = len(model.layers)
    if spec.pretrained and depth == 1:
        start = first_unfrozen_index(model, spec)
    for i, layer in enumerate(model.layers):
        layer.trainable = not spec.pretrained or i >= start or layer.name.startswith(SEG_PREFIX) or (
            layer.name == SEG_OUT)


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
