"""All layers, by Caffe type name. One family per module:

conv (Convolution, Deconvolution), pooling (Pooling, Unpooling), interp (Interp),
activation (ReLU, Dropout, Sigmoid, TanH, Softmax), normalization (BatchNorm, Scale),
structure (Crop, Concat, Eltwise, Silence, Flatten, Split, Slice, Reshape), loss
(SoftmaxWithLoss, EuclideanLoss), inner_product (InnerProduct, Embed), recurrent (LSTMUnit).
"""

import importlib

from convnet.layers.base import Layer, Param

_FAMILY = {
    "Convolution": "conv", "Deconvolution": "conv",
    "Pooling": "pooling", "Unpooling": "pooling",
    "Interp": "interp",
    "ReLU": "activation", "Dropout": "activation",
    "BatchNorm": "normalization",
    "Crop": "structure", "Concat": "structure", "Eltwise": "structure",
    "Silence": "structure", "Flatten": "structure",
    "SoftmaxWithLoss": "loss", "EuclideanLoss": "loss",
    "InnerProduct": "inner_product", "Embed": "inner_product",
    "Sigmoid": "activation", "TanH": "activation", "Softmax": "activation",
    "Split": "structure", "Slice": "structure", "Reshape": "structure",
    "Scale": "normalization",
    "LSTMUnit": "recurrent",
}

__all__ = ["Layer", "Param", *_FAMILY]


def __getattr__(name):
    # Families import on first use: `import convnet` stays cheap and one family's
    # compiled module is only loaded when a layer of it is used.
    family = _FAMILY.get(name)
    if family is None:
        raise AttributeError(f"module 'convnet.layers' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"convnet.layers.{family}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
