"""The small training case shared by tests/test_distributed.py (one process, the reference)
and tests/distributed_worker.py (K ranks): a net, a dataset with ignored pixels, a solver."""

import numpy as np

import convnet
from convnet.data import BatchIterator
from convnet.layers import BatchNorm, Convolution, ReLU, SoftmaxWithLoss

CLASSES = 3


class RandomScenes:
    """``count`` random images (3, 12, 10) with labels in [0, CLASSES) and about a fifth of
    the pixels set to the ignore label 255, deterministic per index."""

    def __init__(self, count=24, dtype=np.float32):
        rng = np.random.default_rng(7)
        self.images = rng.standard_normal((count, 3, 12, 10)).astype(dtype)
        labels = (self.images[:, 0] > 0).astype(np.int64) + (self.images[:, 1] > 0.5)
        labels[rng.random(labels.shape) < 0.2] = 255
        self.labels = labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def make_net(dtype):
    convnet.seed(3)
    net = convnet.Net("case")
    net.add(Convolution(num_output=4, kernel_size=3, pad=1, bias_term=False, dtype=dtype,
                        name="conv1"), bottom=["data"], top=["conv1"])
    net.add(BatchNorm(moving_average_fraction=0.8, name="bn1", dtype=dtype), top=["bn1"])
    net.add(ReLU(name="relu1", dtype=dtype), bottom=["bn1"], top=["bn1"])
    net.add(Convolution(num_output=5, kernel_size=3, pad=1, bias_term=False, dtype=dtype,
                        name="conv2"),
            bottom=["bn1"], top=["conv2"])
    net.add(BatchNorm(moving_average_fraction=0.8, name="bn2", dtype=dtype), top=["bn2"])
    net.add(ReLU(name="relu2", dtype=dtype), bottom=["bn2"], top=["bn2"])
    net.add(Convolution(num_output=CLASSES, kernel_size=1, dtype=dtype, name="score"),
            bottom=["bn2"], top=["score"])
    net.add(SoftmaxWithLoss(ignore_label=255, name="loss", dtype=dtype),
            bottom=["score", "label"], top=["loss"])
    net.setup(data=(1, 3, 12, 10), label=(1, 12, 10))
    return net


def make_solver(config):
    """The solver of ``config`` (dtype, batch, solver, iter_size, lr_policy) over a fresh
    net and batch iterator (global batch ``batch``, augmenting with flips)."""
    dtype = np.dtype(config.get("dtype", "float64"))
    net = make_net(dtype)
    data = BatchIterator(RandomScenes(dtype=dtype), config["batch"], seed=5, augment=True)
    common = dict(lr_policy=config.get("lr_policy", "fixed"), gamma=0.5, stepsize=2,
                  iter_size=config.get("iter_size", 1), data=data)
    if config.get("solver", "sgd") == "adam":
        return convnet.AdamSolver(net, base_lr=0.01, **common)
    return convnet.SGDSolver(net, base_lr=0.1, momentum=0.9, weight_decay=1e-3, **common)
