"""The ``train_step`` case of scripts/bench.py: one SGD iteration of
scripts/train_segmentation.py's default network (convnet.models.deconvnet at the script's
default width, levels and batch size, 64x64 synthetic images), against the same network
written in PyTorch with the same weights, batch, and solver settings.

Peak memory: each side runs a few steps in a fresh subprocess and reports its peak resident
set size above the size right before the first step (``--side convnet|torch``).
"""

import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SIZE = 64
#: one SGD iteration (momentum 0.9, weight decay 5e-4) at a fixed rate, on both sides
LR = 0.01


def _defaults():
    sys.path.insert(0, HERE)
    try:
        from train_segmentation import DEFAULTS
    finally:
        sys.path.remove(HERE)
    return DEFAULTS


def _batch(defaults, seed=0):
    from convnet.data import SyntheticShapes
    ds = SyntheticShapes("train", num_images=defaults["batch_size"], size=SIZE, seed=seed)
    images, labels = zip(*(ds[i] for i in range(len(ds))))
    return np.stack(images).astype(np.float32), np.stack(labels), ds.num_classes


def build_convnet(defaults, data, label, num_classes):
    import convnet
    from convnet.models import deconvnet
    convnet.seed(0)
    # as scripts/train_segmentation.py builds it
    net = deconvnet(num_classes, width=defaults["width"], levels=defaults["levels"],
                    keep_diffs=False)
    solver = convnet.SGDSolver(net, base_lr=LR, momentum=0.9, weight_decay=5e-4)
    net.setup(data=data.shape, label=label.shape)
    net.train()
    return net, solver


class TorchDeconvNet:
    """deconvnet's graph in PyTorch, weights copied from a convnet Net by layer name."""

    def __init__(self, net, torch):
        self.torch = torch
        F = torch.nn.functional
        self.F = F
        self.levels = sum(1 for layer in net.layers if layer.type_name == "Unpooling")
        self.params = {}
        self.bn = {}
        for layer in net.layers:
            if layer.type_name == "Convolution":
                self.params[layer.name] = [torch.tensor(p.data, requires_grad=True)
                                           for p in layer.params]
            elif layer.type_name == "BatchNorm":
                self.params[layer.name] = [torch.tensor(p.data, requires_grad=True)
                                           for p in layer.params]
                self.bn[layer.name] = (torch.tensor(layer.buffers["mean"]),
                                       torch.tensor(layer.buffers["var"]),
                                       1.0 - layer.moving_average_fraction, layer.eps)

    def parameters(self):
        return [p for ps in self.params.values() for p in ps]

    def cbr(self, name, x):
        F = self.F
        w = self.params[name][0]
        x = F.conv2d(x, w, None, padding=1)
        scale, bias = self.params[name + "_bn"]
        mean, var, momentum, eps = self.bn[name + "_bn"]
        x = F.batch_norm(x, mean, var, scale, bias, training=True, momentum=momentum, eps=eps)
        return F.relu(x, inplace=True)

    def loss(self, data, label):
        F = self.F
        x = self.cbr("conv1_2", self.cbr("conv1_1", data))
        masks, sizes = [], []
        for i in range(self.levels):
            sizes.append(x.shape[2:])
            x, idx = F.max_pool2d(x, 2, 2, return_indices=True, ceil_mode=True)
            masks.append(idx)
            last = i == self.levels - 1
            x = self.cbr("center" if last else f"conv{i + 2}", x)
        for i in reversed(range(self.levels)):
            x = F.max_unpool2d(x, masks[i], 2, 2, output_size=sizes[i])
            x = self.cbr(f"deconv{i + 1}", x)
        w, b = self.params["score"]
        score = F.conv2d(x, w, b)
        return F.cross_entropy(score, label, ignore_index=255)


def build_torch(net, defaults, data, label, torch):
    model = TorchDeconvNet(net, torch)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9,
                          weight_decay=5e-4)
    tdata = torch.tensor(data)
    tlabel = torch.tensor(label.astype(np.int64))

    def step():
        opt.zero_grad(set_to_none=False)
        loss = model.loss(tdata, tlabel)
        loss.backward()
        opt.step()
        return float(loss.detach())
    return step


def build_train_step(ctx):
    defaults = _defaults()
    data, label, num_classes = _batch(defaults)
    net, solver = build_convnet(defaults, data, label, num_classes)
    side = {"cv_step": lambda: solver.step(data=data, label=label)}
    torch = ctx.get("torch")
    if torch is not None and ctx.get("torch_device", "cpu") == "cpu":
        side["th_step"] = build_torch(net, defaults, data, label, torch)
    threads = str(ctx.get("threads", 2))
    side["cv_peak_mb"] = _peak_in_subprocess("convnet", threads)
    if torch is not None:
        side["th_peak_mb"] = _peak_in_subprocess("torch", threads)
    return side


def _peak_in_subprocess(which, threads):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--side", which,
                          "--threads", threads], capture_output=True, text=True)
    if out.returncode != 0:
        print(f"# peak memory of {which} not measured: {out.stderr.strip()[-300:]}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def _status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak():
    # Linux >= 4.0: writing 5 resets VmHWM to the current RSS
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _measure_side(which, threads):
    defaults = _defaults()
    data, label, num_classes = _batch(defaults)
    import convnet
    convnet.set_num_threads(threads)
    net, solver = build_convnet(defaults, data, label, num_classes)
    if which == "torch":
        import torch
        torch.set_num_threads(threads)
        step = build_torch(net, defaults, data, label, torch)
        del net, solver
    else:
        def step():
            return solver.step(data=data, label=label)
    _reset_peak()
    base = _status_mb("VmRSS")
    for _ in range(3):
        step()
    peak = _status_mb("VmHWM")
    print(json.dumps({"peak_mb": round(peak - base, 1)}))


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description="peak memory of one side's training steps")
    parser.add_argument("--side", choices=("convnet", "torch"), required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    _measure_side(args.side, args.threads)
