"""Building the benchmark's Keras models from registry specs (registry.py itself holds data only and imports no
TensorFlow): the flat backbone -> pooled -> head graph, the head, freezing for a depth, the Grad-CAM layer.

Every model the benchmark trains is one flat functional graph
    image -> backbone layers -> GlobalAveragePooling2D("pooled") -> Dense(256) -> Dropout -> the task's output
so that Grad-CAM tools see every layer and the pooled features can be read by name.
"""
from __future__ import annotations

import keras
from keras import layers

from .registry import (HEAD_BOTH, HEAD_DENSE, HEAD_DROPOUT, HEAD_OUT, HEAD_RESCALE, HEAD_TARGET, HEAD_UNITS, POOLED,
                       TASKS, BackboneSpec)


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
        build = getattr(keras.applications, spec.application)
        backbone = build(include_top=False, weights=weights, input_tensor=inputs, **dict(spec.builder_kwargs))
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
