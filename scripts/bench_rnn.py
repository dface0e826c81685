#!/usr/bin/env python
"""Benchmark of convnet.rnn's LSTM layer against torch.nn.LSTM (CPU), in one run.

Case: T=50 steps, N=64 sequences, input 256, hidden 256, float32. Printed and returned by
:func:`bench_lstm` (scripts/bench.py can call it and add the rows to its table):

- forward (keeping what backward needs, and ``forward_only``) and forward+backward times of a
  CellRunner(LSTMCell) and of torch.nn.LSTM (forward under no_grad), as medians of
  ``repeat`` alternating runs, and their ratio (torch / convnet: > 1 is faster);
- the engine's own cost: the forward time minus the time of the same kernels (the hoisted
  projection gemms, streamed beside the loop as CellRunner streams them, and per step the
  hidden gemm, the gate sum and the LSTM unit) called back to back without the engine, as a
  share of the forward: the median over the rounds of each forward against the kernels-alone
  run timed after it in the same round;
- a 2-layer LSTM's peak memory over a forward+backward (tracemalloc, NumPy allocations)
  with ``recompute`` against without, and the time each took.

Usage: ``python scripts/bench_rnn.py [--repeat 5] [--threads N] [--json FILE]``.
"""

import argparse
import json
import os
import sys
import time
import tracemalloc

import numpy as np

try:
    import convnet
except ImportError:     # running from a source checkout that was built in place
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import convnet

from convnet.backend import cpu, host_cache
from convnet.rnn import CellRunner, LayeredRunner, LSTMCell
from convnet.rnn.runner import _StreamedProjection

CASE = dict(T=50, N=64, I=256, H=256)


#: the pause before every timed call (s): after a multi-threaded gemm OpenBLAS's idle
#: threads keep spinning for about 0.1 s (measured: 0.1 s of CPU time during a 0.3 s sleep
#: that followed one), which would slow whatever runs next, on either side
SETTLE_S = 0.15


def _median(fn, repeat):
    times = []
    for _ in range(repeat):
        time.sleep(SETTLE_S)
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _kernels_only(runner, x):
    """The forward's kernels without the engine: what the engine's cost is measured against
    (the projection streamed beside the loop as CellRunner streams it)."""
    cell = runner.cell
    T, N, _ = x.shape
    H = cell.hidden_size
    w_h = cell.h2h.params[0].data
    stream = _StreamedProjection(cell.x2h, x)
    proj = stream.top
    h, c = np.zeros((N, H), np.float32), np.zeros((N, H), np.float32)
    cont = np.ones(N, np.float32)
    with stream:
        for t in range(T):
            stream.wait(t)
            # allocated as the layers allocate (the backend's caching allocator)
            hh = cpu.empty((N, 4 * H), np.float32)
            cpu.inner_product_forward(h, w_h, None, hh, False)
            gates = cpu.empty((N, 4 * H), np.float32)
            cpu.structure_eltwise_sum([hh, proj[t]], [1.0, 1.0], gates)
            act = cpu.empty((N, 4 * H), np.float32)
            tanh_c, c2, h2 = (cpu.empty((N, H), np.float32) for _ in range(3))
            cpu.recurrent_lstm_unit_forward(c, gates, cont, 0.0, act, tanh_c, c2, h2)
            h, c = h2, c2


def _peak_bytes(fn):
    # convnet's caching allocator would hand out blocks allocated before tracing started
    # (untraced): start it empty, so every block the run holds is counted
    host_cache.cache.clear()
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def bench_lstm(repeat=5, threads=None, log=print):
    """Run the case; returns a dict of the numbers (seconds and bytes)."""
    if threads is not None:
        convnet.set_num_threads(threads)
    T, N, I, H = CASE["T"], CASE["N"], CASE["I"], CASE["H"]
    r = np.random.default_rng(0)
    x = r.standard_normal((T, N, I)).astype(np.float32)
    dy = r.standard_normal((T, N, H)).astype(np.float32)
    convnet.seed(0)
    runner = CellRunner(LSTMCell(I, H))
    runner.forward(x)
    # inference: the same weights, nothing kept for backward (as torch under no_grad)
    infer = CellRunner(LSTMCell(I, H), forward_only=True)
    infer.forward(x)
    for mine, theirs in zip(infer.params, runner.params):
        mine.data[...] = theirs.data

    def ours_fb():
        runner.forward(x)
        runner.backward(dy)

    res = {"case": dict(CASE), "threads": convnet.get_num_threads()}
    try:
        import torch
    except ImportError:
        torch = None
    ours_f, ours_fb_t, ours_inf, kern, torch_f, torch_fb = [], [], [], [], [], []
    if torch is not None:
        lstm = torch.nn.LSTM(I, H)
        xt, dyt = torch.tensor(x), torch.tensor(dy)

        def torch_forward():
            with torch.no_grad():
                lstm(xt)

        def torch_fwd_bwd():
            xx = xt.clone().requires_grad_()
            out, _ = lstm(xx)
            out.backward(dyt)
    for _ in range(repeat):          # alternate, so load changes hit both sides alike
        ours_f.append(_median(lambda: runner.forward(x), 1))
        kern.append(_median(lambda: _kernels_only(runner, x), 1))
        ours_inf.append(_median(lambda: infer.forward(x), 1))
        ours_fb_t.append(_median(ours_fb, 1))
        if torch is not None:
            torch_f.append(_median(torch_forward, 1))
            torch_fb.append(_median(torch_fwd_bwd, 1))
    res["convnet_forward_s"] = float(np.median(ours_f))
    res["convnet_forward_backward_s"] = float(np.median(ours_fb_t))
    res["convnet_forward_only_s"] = float(np.median(ours_inf))
    if torch is not None:
        res["torch_forward_s"] = float(np.median(torch_f))
        res["torch_forward_backward_s"] = float(np.median(torch_fb))
        res["forward_ratio"] = res["torch_forward_s"] / res["convnet_forward_s"]
        res["forward_only_ratio"] = res["torch_forward_s"] / res["convnet_forward_only_s"]
        res["forward_backward_ratio"] = (res["torch_forward_backward_s"] /
                                         res["convnet_forward_backward_s"])
    kernels = float(np.median(kern))
    res["kernels_only_forward_s"] = kernels
    # paired: each forward against the kernels-alone run timed right after it (the host's
    # speed drifts between rounds; the difference of two medians swung from 0 to 12 %)
    # (negative when the kernels alone took as long: the engine's cost is below the noise)
    res["engine_share_of_forward"] = float(np.median(
        [(f - k) / f for f, k in zip(ours_f, kern)]))

    convnet.seed(1)
    plain = LayeredRunner([LSTMCell(I, H, name="l0"), LSTMCell(H, H, name="l1")])
    convnet.seed(1)
    recomp = LayeredRunner([LSTMCell(I, H, name="l0"), LSTMCell(H, H, name="l1")],
                           recompute=True)
    for name, model in (("plain", plain), ("recompute", recomp)):
        model.forward(x)           # params and step setup outside the measurement

        def run(model=model):
            y, _ = model.forward(x)
            model.backward(dy)
        res[f"two_layer_{name}_peak_bytes"] = _peak_bytes(run)
        res[f"two_layer_{name}_s"] = _median(run, max(repeat // 2, 1))
    log(f"LSTM T={T} N={N} {I}->{H} float32, {res['threads']} threads, median of {repeat}:")
    line = (f"  convnet forward {res['convnet_forward_s'] * 1e3:.1f} ms (forward_only "
            f"{res['convnet_forward_only_s'] * 1e3:.1f} ms), forward+backward "
            f"{res['convnet_forward_backward_s'] * 1e3:.1f} ms")
    if torch is not None:
        line += (f"; torch.nn.LSTM {res['torch_forward_s'] * 1e3:.1f} / "
                 f"{res['torch_forward_backward_s'] * 1e3:.1f} ms; ratio (torch / convnet) "
                 f"{res['forward_ratio']:.2f}x / {res['forward_backward_ratio']:.2f}x")
    log(line)
    share = res["engine_share_of_forward"]
    noise = " (below the host's noise: the paired kernels-alone runs took as long)" \
        if share <= 0 else ""
    log(f"  engine's own cost: {share * 100:.1f}% of the forward (kernels alone "
        f"{kernels * 1e3:.1f} ms){noise}")
    log(f"  2-layer forward+backward peak memory: plain "
        f"{res['two_layer_plain_peak_bytes'] / 2 ** 20:.1f} MiB "
        f"({res['two_layer_plain_s'] * 1e3:.0f} ms), recompute "
        f"{res['two_layer_recompute_peak_bytes'] / 2 ** 20:.1f} MiB "
        f"({res['two_layer_recompute_s'] * 1e3:.0f} ms)")
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", metavar="FILE", default=None)
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error(f"--repeat must be >= 1, got {args.repeat}")
    res = bench_lstm(args.repeat, args.threads)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
