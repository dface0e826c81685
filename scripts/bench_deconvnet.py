"""The ``deconvnet_vgg_infer`` and ``deconvnet_vgg_train`` cases of scripts/bench.py: the
published DeconvNet (Noh, Hong and Han 2015: a VGG-16 encoder with BatchNorm after every
convolution, max pooling with switches, fc6/fc7 as 7x7 and 1x1 convolutions, the mirrored
decoder of unpooling and 3x3 deconvolutions, 21 PASCAL classes) at 224x224, built from
convnet's layers and, with the same weights, in PyTorch.

- infer: batch 1, BatchNorm on its global statistics (``net.eval()``; PyTorch under
  ``no_grad``), one forward to the scores;
- train: batch 2, batch statistics, one SGD step (momentum 0.9, weight decay 5e-4).

Both sides are checked to give the same scores (infer) and loss (train) before timing.
"""

import numpy as np

SIZE = 224
NUM_CLASSES = 21
#: VGG-16's five stages: (channels, convolutions)
ENCODER = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
#: the decoder, stage 5 first: output channels of each 3x3 deconvolution after the unpooling
DECODER = ((512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64, 64))
LR = 1e-3


def build_convnet(batch, train, seed=0):
    """The DeconvNet as a convnet Net of named blobs; returns (net, solver or None)."""
    import convnet
    from convnet.layers import (BatchNorm, Convolution, Deconvolution, Pooling, ReLU,
                                SoftmaxWithLoss, Unpooling)
    convnet.seed(seed)
    net = convnet.Net("deconvnet_vgg", keep_diffs=False)

    def block(kind, name, bottom, channels, kernel=3, pad=1):
        net.add(kind(num_output=channels, kernel_size=kernel, pad=pad, bias_term=False,
                     weight_filler="msra", name=name), bottom=[bottom], top=[name])
        net.add(BatchNorm(name=name + "_bn", moving_average_fraction=0.9), bottom=[name],
                top=[name])
        net.add(ReLU(name=name + "_relu"), bottom=[name], top=[name])
        return name

    x = "data"
    for stage, (channels, count) in enumerate(ENCODER, start=1):
        for i in range(1, count + 1):
            x = block(Convolution, f"conv{stage}_{i}", x, channels)
        net.add(Pooling(kernel_size=2, stride=2, pool="MAX", return_mask=True,
                        name=f"pool{stage}"), bottom=[x], top=[f"pool{stage}",
                                                           f"pool{stage}_mask"])
        x = f"pool{stage}"
    x = block(Convolution, "fc6", x, 4096, kernel=7, pad=0)
    x = block(Convolution, "fc7", x, 4096, kernel=1, pad=0)
    x = block(Deconvolution, "fc6_deconv", x, 512, kernel=7, pad=0)
    size = SIZE // 2 ** len(ENCODER)
    for stage, widths in zip(range(len(ENCODER), 0, -1), DECODER):
        size *= 2
        net.add(Unpooling(kernel_size=2, stride=2, out_size=(size, size),
                          name=f"unpool{stage}"), bottom=[x, f"pool{stage}_mask"],
                top=[f"unpool{stage}"])
        x = f"unpool{stage}"
        for i, channels in enumerate(widths, start=1):
            x = block(Deconvolution, f"deconv{stage}_{i}", x, channels)
    net.add(Convolution(num_output=NUM_CLASSES, kernel_size=1, name="score",
                        weight_filler="msra"), bottom=[x], top=["score"])
    solver = None
    if train:
        net.add(SoftmaxWithLoss(ignore_label=255, name="loss"), bottom=["score", "label"],
                top=["loss"])
        solver = convnet.SGDSolver(net, base_lr=LR, momentum=0.9, weight_decay=5e-4)
        net.setup(data=(batch, 3, SIZE, SIZE), label=(batch, SIZE, SIZE))
        net.train()
    else:
        net.setup(data=(batch, 3, SIZE, SIZE))
        rng = np.random.default_rng(seed)
        for layer in net.layers:
            if layer.type_name == "BatchNorm":      # global statistics that are not trivial
                c = layer.buffers["mean"].shape[0]
                layer.buffers["mean"][...] = rng.normal(0, 0.1, c)
                layer.buffers["var"][...] = rng.uniform(0.5, 2.0, c)
        net.eval()
    return net, solver


class TorchDeconvNet:
    """The same graph in PyTorch, weights (and BatchNorm statistics) copied by layer name."""

    def __init__(self, net, torch):
        self.torch = torch
        self.F = torch.nn.functional
        self.layers = {layer.name: layer for layer in net.layers}
        self.params = {name: [torch.tensor(p.data, requires_grad=True) for p in layer.params]
                       for name, layer in self.layers.items() if layer.params}
        self.stats = {name: (torch.tensor(layer.buffers["mean"]),
                             torch.tensor(layer.buffers["var"]))
                      for name, layer in self.layers.items() if layer.type_name == "BatchNorm"}

    def parameters(self):
        return [p for ps in self.params.values() for p in ps]

    def block(self, name, x, training):
        F = self.F
        layer = self.layers[name]
        w = self.params[name][0]
        if layer.type_name == "Deconvolution":
            x = F.conv_transpose2d(x, w, None, padding=layer.pad)
        else:
            x = F.conv2d(x, w, None, padding=layer.pad)
        mean, var = self.stats[name + "_bn"]
        scale, bias = self.params[name + "_bn"]
        x = F.batch_norm(x, mean, var, scale, bias, training=training, momentum=0.1,
                         eps=self.layers[name + "_bn"].eps)
        return F.relu(x, inplace=True)

    def scores(self, data, training, masks=None, near_ties=None):
        """The scores; with ``masks`` (one per pooling stage, as Pooling's masks) the
        unpooling uses those argmax choices instead of its own, and ``near_ties`` (a list)
        then receives, per stage, the windows where the two disagree and whether each is a
        near tie (its two largest values within NEAR_TIE of the larger, or of the pooled
        input's RMS)."""
        F = self.F
        x = data
        own, sizes = [], []
        for stage, (_, count) in enumerate(ENCODER, start=1):
            for i in range(1, count + 1):
                x = self.block(f"conv{stage}_{i}", x, training)
            sizes.append(x.shape[2:])
            before = x
            x, idx = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
            if masks is not None:
                forced = self.torch.as_tensor(masks[stage - 1].astype(np.int64))
                if near_ties is not None:
                    near_ties.append(_disagreements(before, idx, forced, self.torch))
                idx = forced
            own.append(idx)
        masks = own
        for name in ("fc6", "fc7", "fc6_deconv"):
            x = self.block(name, x, training)
        for stage, widths in zip(range(len(ENCODER), 0, -1), DECODER):
            x = F.max_unpool2d(x, masks[stage - 1], 2, 2, output_size=sizes[stage - 1])
            for i in range(1, len(widths) + 1):
                x = self.block(f"deconv{stage}_{i}", x, training)
        w, b = self.params["score"]
        return F.conv2d(x, w, b)


def _inputs(batch, seed=1):
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((batch, 3, SIZE, SIZE)).astype(np.float32)
    label = rng.integers(0, NUM_CLASSES, size=(batch, SIZE, SIZE))
    return data, label


#: two values of a pooling window this close (relative to the larger, or to the pooled
#: input's RMS when both are smaller: float32 rounding in the convolutions before grows with
#: the activations' scale, not with one small value) are a near tie: the argmax may give
#: either (one flipped window moves a whole value in the unpooling, so the scores are
#: compared under convnet's argmax choices)
NEAR_TIE = 1e-5


def _disagreements(pooled_input, theirs, ours, torch):
    """(windows where the masks differ, how many of them are near ties)."""
    differ = (theirs != ours).nonzero()
    if len(differ) == 0:
        return 0, 0
    plane = pooled_input.flatten(2)
    n, c = differ[:, 0], differ[:, 1]
    a = plane[n, c, theirs[differ[:, 0], differ[:, 1], differ[:, 2], differ[:, 3]]]
    b = plane[n, c, ours[differ[:, 0], differ[:, 1], differ[:, 2], differ[:, 3]]]
    rms = pooled_input.square().mean().sqrt()
    scale = torch.maximum(torch.maximum(a.abs(), b.abs()), rms)
    ties = int(((a - b).abs() <= NEAR_TIE * scale).sum())
    return len(differ), ties


def build_infer(ctx):
    """Closures and the score check for ``deconvnet_vgg_infer``."""
    data, _ = _inputs(1)
    net, _ = build_convnet(1, train=False)
    side = {"cv_fwd": lambda: net.forward(data=data)}
    torch = ctx.get("torch")
    if torch is not None:
        model = TorchDeconvNet(net, torch)
        tdata = torch.tensor(data)

        def infer():
            with torch.no_grad():
                return model.scores(tdata, training=False)
        ours = net.forward(data=data)["score"]
        masks = [net.blobs[f"pool{stage}_mask"] for stage in range(1, len(ENCODER) + 1)]
        near = []
        with torch.no_grad():
            theirs = model.scores(tdata, training=False, masks=masks, near_ties=near).numpy()
        error = float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))
        flipped = sum(d for d, _ in near)
        ties = sum(t for _, t in near)
        if not error < 1e-3 or ties != flipped:
            raise RuntimeError(f"deconvnet_vgg_infer: scores differ from PyTorch's "
                               f"(max error {error:.2e} of the largest score; {flipped} "
                               f"pooling windows chose differently, {ties} of them near ties)")
        side["th_fwd"] = infer
        side["check"] = (f"scores agree to {error:.1e} of the largest under convnet's pooling "
                         f"choices; {flipped} pooling window(s) chose differently from "
                         f"PyTorch, all near ties (within {NEAR_TIE:g} of the larger value "
                         f"or of the layer's RMS)")
    side["algorithms"] = _algorithms(net)
    return side


def build_train(ctx):
    """Closures and the loss check for ``deconvnet_vgg_train``."""
    data, label = _inputs(2)
    net, solver = build_convnet(2, train=True)
    torch = ctx.get("torch")
    side = {"algorithms": _algorithms(net)}
    if torch is not None:
        model = TorchDeconvNet(net, torch)
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
        tdata = torch.tensor(data)
        tlabel = torch.tensor(label.astype(np.int64))

        def step():
            opt.zero_grad(set_to_none=False)
            loss = torch.nn.functional.cross_entropy(model.scores(tdata, training=True),
                                                     tlabel, ignore_index=255)
            loss.backward()
            opt.step()
            return float(loss.detach())
        theirs = step()
        ours = solver.step(data=data, label=label)
        if not abs(ours - theirs) <= 1e-4 * abs(theirs):
            raise RuntimeError(f"deconvnet_vgg_train: first loss {ours} differs from "
                               f"PyTorch's {theirs}")
        side["th_step"] = step
        side["check"] = f"first loss {ours:.6f} vs PyTorch {theirs:.6f}"
    side["cv_step"] = lambda: solver.step(data=data, label=label)
    return side


def _algorithms(net):
    """'im2col' x count, ... over the net's convolution layers."""
    counts = {}
    for layer in net.layers:
        used = getattr(layer, "algorithm_used", None)
        if used is not None:
            counts[used] = counts.get(used, 0) + 1
    return ", ".join(f"{name} x{n}" for name, n in sorted(counts.items()))
