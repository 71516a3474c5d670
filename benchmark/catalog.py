"""The backbones' keys and their ImageNet weight files, in a module that imports no Keras.

`python -m benchmark --help` and `python -m benchmark weights` read only this, so they answer without the ~5 s
TensorFlow import; registry.py builds its specs on these keys.

File names, URLs and hashes are those Keras Applications (keras/src/applications/*.py, Keras 3.15) passes to
`keras.utils.get_file` for the no-top models with `weights="imagenet"`. The benchmark always loads the 224-px files
of MobileNet and MobileNetV2 by path, at any input size (see registry.resolve_weights); the other seven networks have
one no-top file for every input size.
"""
from __future__ import annotations

from dataclasses import dataclass

KERAS_APPLICATIONS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class ImagenetFile:
    name: str         # Keras' cache name, in $KERAS_HOME/models
    path: str         # below KERAS_APPLICATIONS_URL (NASNet's download name differs from its cache name)
    md5: str | None   # Keras' file_hash; None where Keras pins none (MobileNet, MobileNetV2)


IMAGENET: dict[str, ImagenetFile] = {
    "mobilenet": ImagenetFile("mobilenet_2_5_224_tf_no_top.h5", "mobilenet/mobilenet_2_5_224_tf_no_top.h5", None),
    "mobilenetv2": ImagenetFile(
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5",
        "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5", None),
    "vgg16": ImagenetFile("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                          "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                          "6d6bbae143d832006294945121d1f1fc"),
    "inceptionv3": ImagenetFile("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                                "inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                                "bcbd6486424b2319ff4ef7d526e38f63"),
    "resnet50v2": ImagenetFile("resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
                               "resnet/resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
                               "fac2f116257151a9d068a22e544a4917"),
    "inceptionresnetv2": ImagenetFile(
        "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "inception_resnet_v2/inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "d19885ff4a710c122648d3b5c3b684e4"),
    "densenet121": ImagenetFile("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
                                "densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
                                "30ee3e1110167f948a6b9946edeeb738"),
    "nasnetmobile": ImagenetFile("nasnet_mobile_no_top.h5", "nasnet/NASNet-mobile-no-top.h5",
                                 "1ed92395b5b598bdda52abe5c0dbfd63"),
    "xception": ImagenetFile("xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
                             "xception/xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
                             "b0042744bf5b25fce3cb969f33bebb97"),
}
CBR_KEYS = ("cbr_large_t", "cbr_small", "cbr_tiny")   # the paper's from-scratch baselines (no ImageNet file)
BACKBONE_KEYS = (*IMAGENET, *CBR_KEYS)
