"""Caffe models in and out: ``.prototxt`` nets (V1 and V2; BVLC, DeepLab, SegNet and
DeconvNet dialects), ``.caffemodel`` weights and ``solver.prototxt`` files.

>>> from convnet import caffe
>>> net = caffe.load_net("deploy.prototxt")            # phase TEST by default
>>> report = caffe.load_weights(net, "model.caffemodel")
>>> caffe.save_caffemodel(net, "copy.caffemodel")
>>> config = caffe.load_solver("solver.prototxt"); solver = config.build(config.load_net())

This package is the only part of convnet that imports protobuf (the ``caffe`` extra:
``pip install ".[caffe]"``).
"""

from convnet.caffe import schema as _schema  # noqa: F401  (raises the extra's ImportError)
from convnet.caffe.loader import (CaffeInfo, CaffeLoadNote, TRANSLATORS, build_net,
                                  supported_types, translator)
from convnet.caffe.prototxt import NetDefinition, read_net
from convnet.caffe.solver import SolverConfig, load_solver
from convnet.caffe.weights import load_weights, read_caffemodel, save_caffemodel

DIALECTS = _schema.DIALECTS


def load_net(path, phase="TEST", dialect=None, level=0, stages=(), dtype=None, name=None,
             input_shapes=None):
    """Build a :class:`convnet.Net` from a Caffe net definition.

    ``path``: a ``.prototxt`` file (text, or a binary NetParameter), or the text itself.
    ``phase``: "TEST" (default) or "TRAIN": selects layers by their ``include`` / ``exclude``
    rules (with ``level`` and ``stages``, as Caffe's NetState) and sets the Net's phase.
    ``dialect``: None finds it from the file (the first of bvlc, deeplab, segnet, deconvnet
    whose schema reads it), or one of those names.

    Dataset layers (Data, ImageData, ImageSegData, DenseImageData, Python, MemoryData,
    HDF5Data, ...) become net inputs named by their tops, and file-writing or metric layers
    (MatWrite, HDF5Output, Accuracy, SegAccuracy) are left out; each is reported in one line
    (a :class:`CaffeLoadNote` warning). When the file gives every input's shape (Input layer,
    ``input_dim``, ``input_shape``, MemoryData, a crop size) the Net is set up, so its params
    exist; ``input_shapes={"data": (1, 3, 500, 500)}`` gives or overrides them.
    ``dtype`` (float32 default, or float64) is every layer's dtype. ``net.caffe`` (a
    :class:`CaffeInfo`) keeps what the loader learned.
    """
    return build_net(read_net(path, dialect), phase=phase, level=level, stages=stages,
                     dtype=dtype, name=name, input_shapes=input_shapes)


__all__ = ["load_net", "read_net", "build_net", "load_weights", "save_caffemodel",
           "read_caffemodel", "load_solver", "SolverConfig", "NetDefinition", "CaffeInfo",
           "CaffeLoadNote", "TRANSLATORS", "translator", "supported_types", "DIALECTS"]
