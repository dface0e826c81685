#!/usr/bin/env python
"""Data-parallel scaling of the default training step, and the allreduce cost model.

Times ``--steps`` training steps (after 2 warm-up steps) of the training script's default
network (convnet.models.deconvnet width 16, 3 levels; Adam; global batch 16 of 64x64
SyntheticShapes images) in one process, or over MPI ranks when launched by mpiexec::

    python scripts/distributed_scaling.py --threads 2                      # 1 process, 2 threads
    mpiexec -n 2 python -m mpi4py scripts/distributed_scaling.py --threads 1   # 2 ranks
    python scripts/distributed_scaling.py --model                          # cost model only

and prints one JSON line: ranks, threads, step time (median and mean, s), images/s, the time
per step spent waiting for the gradient allreduces (overlapped with backward), and the time
of the same allreduce run blocking after the steps (what overlap hides is the difference).

``--model`` prints the ring-allreduce cost per step (convnet.distributed.allreduce_cost) of the
default net and of the published VGG-16 DeconvNet (Noh et al. 2015: VGG-16's 13 convolutions,
fc6 7x7 and fc7 1x1 as convolutions, the mirrored deconvolution network, 21 classes) at 10 and
100 Gb/s for 2, 4, 8 and 16 machines.
"""

import argparse
import json
import os
import statistics
import sys
import time

try:
    import convnet
except ImportError:     # running from a source checkout that was built in place
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import convnet

from convnet.data import BatchIterator, SyntheticShapes
from convnet.models import deconvnet

ADAM_DELTA = 3e-9       # the training script's


def vgg16_deconvnet_params(classes=21):
    """Learnable values of the VGG-16 DeconvNet (convolution weights and biases, BatchNorm
    scale and shift after every convolution and deconvolution but the last)."""
    encoder = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
               (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    decoder = [(512, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 256),
               (256, 256), (256, 256), (256, 128), (128, 128), (128, 64), (64, 64), (64, 64)]
    layers = ([(cin, cout, 3) for cin, cout in encoder] + [(512, 4096, 7), (4096, 4096, 1),
              (4096, 512, 7)] + [(cin, cout, 3) for cin, cout in decoder])
    total = sum(cin * cout * k * k + cout + 2 * cout for cin, cout, k in layers)
    return total + 64 * classes + classes


def model_table():
    net = deconvnet(SyntheticShapes.num_classes)
    net.setup(data=(1, 3, 64, 64), label=(1, 64, 64))
    nets = {"default deconvnet (width 16)": sum(p.data.size for p in net.learnable_params),
            "VGG-16 DeconvNet": vgg16_deconvnet_params()}
    from convnet.distributed import allreduce_cost
    rows = []
    for name, params in nets.items():
        nbytes = 4 * params
        for gbit in (10, 100):
            rows.append({"net": name, "params": params, "MB": round(nbytes / 1e6, 2),
                         "Gb/s": gbit,
                         "seconds": {k: round(allreduce_cost(nbytes, k, gbit), 5)
                                     for k in (2, 4, 8, 16)}})
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--bucket-mb", type=float, default=1.0)
    p.add_argument("--model", action="store_true", help="print the cost model and exit")
    args = p.parse_args()
    if args.model:
        for row in model_table():
            print(json.dumps(row))
        return 0
    distributed = None
    if "mpi4py" in sys.modules or "PMI_RANK" in os.environ or "OMPI_COMM_WORLD_SIZE" in \
            os.environ:
        from convnet import distributed
    if args.threads is not None:
        convnet.set_num_threads(args.threads)
    convnet.seed(0)
    net = deconvnet(SyntheticShapes.num_classes, keep_diffs=False)
    net.setup(data=(1, 3, 64, 64), label=(1, 64, 64))
    data = BatchIterator(SyntheticShapes("train", num_images=200, seed=0), args.batch_size,
                         seed=0, augment=True)
    solver = convnet.AdamSolver(net, base_lr=0.003, delta=ADAM_DELTA, data=data)
    ranks = 1
    if distributed is not None:
        solver = distributed.DistributedSolver(solver, sync_batchnorm=True,
                                               threads=args.threads, bucket_mb=args.bucket_mb)
        ranks = solver.size
    for _ in range(2):
        solver.step()
    wait0 = solver.comm_wait_seconds if distributed else 0.0
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        solver.step()
        times.append(time.perf_counter() - t0)
    result = {"ranks": ranks, "threads": convnet.get_num_threads(),
              "batch": args.batch_size, "steps": args.steps,
              "step_s_median": round(statistics.median(times), 4),
              "step_s_mean": round(statistics.mean(times), 4),
              "img_per_s": round(args.batch_size / statistics.median(times), 1)}
    if distributed is not None:
        result["buckets_bytes"] = solver.bucket_sizes
        result["wait_s_per_step"] = round((solver.comm_wait_seconds - wait0) / args.steps, 5)
        result["blocking_allreduce_s"] = round(solver.allreduce_seconds(), 5)
        solver.log(json.dumps(result))
    else:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
