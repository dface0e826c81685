"""Long runs hold resident memory flat: 1000 training iterations of the default network
(convnet.models.deconvnet, small width and images) in a fresh process, with RSS read from
/proc/self/statm after a warm-up and at the end. A leak of one buffer per iteration in any
compiled kernel (a missing free of per-thread scratch, a cached array per call) shows as
megabytes here."""

import json
import os
import subprocess
import sys

import pytest

from conftest import CONVNET_PATH

SLACK_MB = 5.0

CHILD = """
import gc, json, os, sys
import numpy as np
import convnet
from convnet.data import BatchIterator, SyntheticShapes
from convnet.models import deconvnet

PAGE = os.sysconf("SC_PAGE_SIZE")

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2 ** 20

iters, warmup = int(sys.argv[1]), int(sys.argv[2])
convnet.seed(0)
data = BatchIterator(SyntheticShapes("train", num_images=16, size=16), 2, seed=0, augment=True)
net = deconvnet(SyntheticShapes.num_classes, width=4, levels=2)
solver = convnet.SGDSolver(net, base_lr=0.01, data=data)
samples = []
for i in range(iters):
    loss = solver.step()
    if i % 50 == 0 and i >= warmup:
        net.eval()
        net.forward(**data.next_batch())       # the test phase's buffers too
        net.train()
    if i + 1 == warmup or (i + 1) % 100 == 0:
        gc.collect()
        samples.append((i + 1, rss_mb()))
print(json.dumps({"samples": samples, "loss": loss}))
"""


def run_child(iters, warmup):
    env = dict(os.environ, PYTHONPATH=CONVNET_PATH, OMP_NUM_THREADS="1")
    # cwd: `python -c` puts the working folder first on sys.path; the checkout's source tree
    # must not shadow the convnet under test
    result = subprocess.run([sys.executable, "-c", CHILD, str(iters), str(warmup)], env=env,
                            capture_output=True, text=True, timeout=300,
                            cwd=os.path.dirname(os.path.abspath(__file__)))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc/self/statm")
def test_thousand_training_iterations_keep_resident_memory_flat():
    out = run_child(1000, 100)
    samples = dict(out["samples"])
    growth = samples[1000] - samples[100]
    assert growth < SLACK_MB, f"RSS grew {growth:.1f} MB over 900 iterations: {samples}"
    # no steady creep either: the second half grows no more than the slack's half
    assert samples[1000] - samples[500] < SLACK_MB / 2, samples
    assert out["loss"] == out["loss"] and out["loss"] < 10


@pytest.mark.slow
@pytest.mark.cuda
def test_thousand_gpu_training_iterations_keep_device_allocations_flat(monkeypatch):
    """Every device allocation goes through convnet.cuda.array._Buffer: its live bytes,
    counted from after a warm-up, must not grow (a cached or leaked DeviceArray per
    iteration would)."""
    import gc

    import convnet
    from convnet.cuda import array as cuda_array
    from convnet.data import BatchIterator, SyntheticShapes
    from convnet.models import deconvnet

    live = [0]
    init, free = cuda_array._Buffer.__init__, cuda_array._Buffer.free

    def counted_init(self, nbytes):
        init(self, nbytes)
        live[0] += self.nbytes

    def counted_free(self):
        if self.ptr:
            live[0] -= self.nbytes
        free(self)

    monkeypatch.setattr(cuda_array._Buffer, "__init__", counted_init)
    monkeypatch.setattr(cuda_array._Buffer, "free", counted_free)
    convnet.seed(0)
    data = BatchIterator(SyntheticShapes("train", num_images=16, size=16), 2, seed=0)
    net = deconvnet(SyntheticShapes.num_classes, width=4, levels=2)
    net.setup(data=(2, 3, 16, 16), label=(2, 16, 16))
    net.to("cuda")
    solver = convnet.SGDSolver(net, base_lr=0.01, data=data)
    for _ in range(100):
        solver.step()
    gc.collect()
    after_warmup = live[0]
    for _ in range(900):
        loss = solver.step()
    gc.collect()
    assert live[0] - after_warmup <= 0, (after_warmup, live[0])
    assert loss == loss
