"""One MPI job of tests/test_distributed.py: ``mpiexec -n K python -m mpi4py
tests/distributed_worker.py MODE CONFIG_JSON OUT_DIR``.

Modes:

- ``train``: train a small Conv-BN-ReLU-Conv-SoftmaxWithLoss net (ignored pixels in the
  labels, so the ranks' VALID counts differ) for ``steps`` steps wrapped in DistributedSolver
  (debug=True: replicas are compared every step), optionally restoring ``resume`` first and
  writing ``snapshot`` at the end; rank 0 writes the final weights to OUT_DIR/ranks.npz and
  a JSON report (loss per step, bucket sizes, wait time, threads) to OUT_DIR/report.json.
- ``fail``: like train, but rank ``bad_rank`` raises at step ``bad_step`` (or, with
  ``kill``, SIGKILLs itself): the job must end, never hang.
- ``refuse``: the wrapper's refusals (net not set up, batch smaller than the rank count, a
  bad option), reported by rank 0 in OUT_DIR/report.json.
- ``diverge``: rank 1 changes one weight after step 1: the debug check must stop every
  rank at step 2 with StateError.

The single-process reference is tests/test_distributed.py's own (the same builders,
without MPI).
"""

import json
import os
import signal
import sys

import numpy as np

from convnet import distributed
from convnet.errors import ConvnetError

# convnet comes from PYTHONPATH (the tests set it to the convnet under test)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from distributed_case import make_solver  # noqa: E402


def refusals(config):
    """The messages of the wrapper's refusals: a net not set up, a batch smaller than the
    number of ranks, an unknown option value."""
    import convnet
    from distributed_case import make_net
    from convnet.layers import Convolution, EuclideanLoss
    fresh = convnet.Net("fresh")
    fresh.add(Convolution(num_output=2, kernel_size=1, name="conv"), bottom=["data"])
    fresh.add(EuclideanLoss(name="loss"), bottom=["conv", "target"])
    messages = []
    attempts = [
        lambda: distributed.DistributedSolver(convnet.SGDSolver(fresh)),
        lambda: distributed.DistributedSolver(make_solver(config)),
        lambda: distributed.DistributedSolver(convnet.SGDSolver(make_net(np.float64)),
                                              sync_batchnorm="yes"),
    ]
    for attempt in attempts:
        try:
            attempt()
            messages.append(None)
        except ConvnetError as exc:
            messages.append(f"{type(exc).__name__}: {exc}")
    return messages


def main(mode, config, out_dir):
    comm = distributed.MPI.COMM_WORLD
    if mode == "refuse":
        messages = refusals(config)
        if comm.Get_rank() == 0:
            with open(os.path.join(out_dir, "report.json"), "w") as f:
                json.dump({"messages": messages}, f)
        return
    solver = distributed.DistributedSolver(
        make_solver(config), bucket_mb=config.get("bucket_mb", 1.0),
        sync_batchnorm=config.get("sync", True), threads=config.get("threads", 1),
        debug=True)
    if config.get("resume"):
        solver.restore(config["resume"])
    losses = []
    for _ in range(config["steps"]):
        if mode == "fail" and comm.Get_rank() == config["bad_rank"] and \
                solver.iter == config["bad_step"]:
            if config.get("kill"):
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"rank {comm.Get_rank()} fails on purpose")
        if mode == "diverge" and comm.Get_rank() == 1 and solver.iter == 1:
            solver.net.layer("conv2").params[0].data[0, 0, 0, 0] += 1e-3
        losses.append(solver.step())
    if config.get("snapshot"):
        solver.snapshot(config["snapshot"])
    if solver.is_root:
        np.savez(os.path.join(out_dir, "ranks.npz"), **solver.net.state_arrays())
        report = {"losses": losses, "iter": solver.iter, "buckets": solver.bucket_sizes,
                  "wait": solver.comm_wait_seconds,
                  "overlapped": solver.overlapped_buckets, "threads": solver.threads,
                  "ranks": solver.size}
        with open(os.path.join(out_dir, "report.json"), "w") as f:
            json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3])
