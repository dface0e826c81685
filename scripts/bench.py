#!/usr/bin/env python
"""Side-by-side benchmarks: convnet against PyTorch on the same machine, in one run.

For each case, convnet's forward and backward are timed next to PyTorch's with the same thread
count, alternating the two sides, as medians of ``--reps`` runs after warm-up, on random
(never zero) float32 NCHW inputs. The table gives the ratio PyTorch time / convnet time (> 1:
convnet is faster), and for GEMM-bound cases the achieved GFLOP/s and its share of the sgemm
rate measured at the same GEMM shape; for memory-bound cases GB/s and the share of the copy
bandwidth measured at the same size.

glibc returns large buffers to the system after each use unless told otherwise, which adds
thousands of page faults to every call of both libraries; the script re-executes itself with
``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736`` so both
sides run at their best (``--default-malloc`` keeps glibc's defaults). Both sides share one
OpenMP runtime (PyTorch's wheel brings ``libgomp.so.1`` and convnet's modules load the same
soname), so they run under one wait policy, by default the one ``import convnet`` sets
(``GOMP_SPINCOUNT=3000``: idle threads spin ~85 us, then sleep), as a user who imports convnet
gets it; ``--omp-wait-policy passive`` (futex waits: each parallel loop pays a wake) or
``default`` (libgomp's own 300k-iteration spin) run both sides under that instead.

Convolution cases print the algorithm convnet chose (``algorithm="auto"``); their GFLOP/s
count the direct convolution's multiply-adds, so Winograd, which does fewer, can show more
than 100% of the sgemm rate. ``deconvnet_vgg_infer`` / ``deconvnet_vgg_train`` are the
published DeconvNet at 224x224 (scripts/bench_deconvnet.py). The ``layer`` cases (BatchNorm,
ReLU, Dropout, Eltwise, Concat, Crop, Scale, Sigmoid, TanH, Softmax on a 32 MB blob:
scripts/bench_layers.py) are summarised apart from the ``memory`` ones. The header names the BLAS kernels
OpenBLAS runs (threadpoolctl); OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are unset for the run,
as on a user's machine, unless ``--keep-openblas-env``.

    python scripts/bench.py                       # every case, 2 threads
    python scripts/bench.py --cases conv_3x3,maxpool_idx --reps 20 --json out.json
    python scripts/bench.py --device cuda         # against PyTorch CUDA
"""

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"


# --------------------------------------------------------------------------- timing helpers

def now():
    return time.perf_counter()


def timed(fn, sync=None):
    t0 = now()
    fn()
    if sync is not None:
        sync()
    return now() - t0


def measure_pair(conv_fn, torch_fn, reps, warmup, sync=None):
    """Alternate the two sides; return (convnet median, torch median) in seconds."""
    for _ in range(warmup):
        conv_fn()
        if torch_fn is not None:
            torch_fn()
    if sync is not None:
        sync()
    a, b = [], []
    for _ in range(reps):
        a.append(timed(conv_fn, sync))
        if torch_fn is not None:
            b.append(timed(torch_fn, sync))
    return statistics.median(a), (statistics.median(b) if b else None)


def sgemm_rate(m, n, k, reps=5):
    """GFLOP/s of convnet's sgemm door (scipy's BLAS, no copies) at shape (m, n, k)."""
    from convnet._cpu._blas import gemm_test
    rng = np.random.default_rng(0)
    a = rng.random((m, k), dtype=np.float32) + 0.5
    b = rng.random((k, n), dtype=np.float32) + 0.5
    c = np.zeros((m, n), np.float32)
    gemm_test(False, False, 1.0, a, b, 0.0, c)
    t = min(timed(lambda: gemm_test(False, False, 1.0, a, b, 0.0, c)) for _ in range(reps))
    return 2.0 * m * n * k / t / 1e9


def copy_bandwidth(nbytes, reps=7):
    """GB/s (bytes read + written) of a multi-threaded copy of ``nbytes / 2`` bytes."""
    from convnet._cpu._threads import parallel_copy
    n = max(int(nbytes // 8), 1 << 16)
    src = np.random.default_rng(0).random(n, dtype=np.float32) + 0.5
    dst = np.empty_like(src)
    parallel_copy(src, dst)
    t = min(timed(lambda: parallel_copy(src, dst)) for _ in range(reps))
    return 2.0 * src.nbytes / t / 1e9


# --------------------------------------------------------------------------- the cases

def randn(rng, shape, dtype=np.float32):
    """Random data that is never zero (zeros let some kernels shortcut)."""
    x = rng.standard_normal(shape).astype(dtype)
    x[x == 0] = 1e-3
    return x


class Case:
    """One benchmark: builds both sides' closures, one per phase (``cv_<phase>`` and
    ``th_<phase>``)."""

    def __init__(self, name, kind, build, phases=("fwd", "bwd")):
        self.name, self.kind, self.build, self.phases = name, kind, build, phases


def conv_case(name, n, cin, cout, hw, k, s=1, p=0, d=1, bias=True, deconv=False):
    def build(ctx):
        from convnet.layers import Convolution, Deconvolution
        rng = ctx["rng"]
        x = randn(rng, (n, cin, hw, hw))
        cls = Deconvolution if deconv else Convolution
        layer = cls(num_output=cout, kernel_size=k, stride=s, pad=p, dilation=d,
                    bias_term=bias, weight_filler="msra", name=name)
        y = layer.forward(x)
        dy = randn(rng, y.shape)
        oh, ow = y.shape[2], y.shape[3]
        if deconv:
            # forward GEMM: (cout*k*k) x (h*w) x cin per image
            gemm = (cout * k * k, hw * hw, cin)
        else:
            gemm = (cout, oh * ow, cin * k * k)
        flops_fwd = 2.0 * n * gemm[0] * gemm[1] * gemm[2]
        side = {
            "cv_fwd": lambda: layer.forward(x),
            "cv_bwd": lambda: layer.backward(dy),
            "flops_fwd": flops_fwd, "flops_bwd": 2 * flops_fwd, "gemm": gemm,
            "algorithm": layer.algorithm_used,
        }
        torch = ctx.get("torch")
        if torch is not None:
            F = torch.nn.functional
            dev = ctx["torch_device"]
            tx = torch.tensor(x, device=dev, requires_grad=True)
            tw = torch.tensor(layer.weight.data, device=dev, requires_grad=True)
            tb = torch.tensor(layer.bias.data, device=dev, requires_grad=True) if bias else None
            tdy = torch.tensor(dy, device=dev)
            if deconv:
                out_pad = y.shape[2] - ((hw - 1) * s - 2 * p + d * (k - 1) + 1)
                f = lambda: F.conv_transpose2d(tx, tw, tb, stride=s, padding=p, dilation=d,
                                               output_padding=out_pad)
            else:
                f = lambda: F.conv2d(tx, tw, tb, stride=s, padding=p, dilation=d)
            side["th_fwd"] = lambda: f()
            ty = f()
            side["th_bwd"] = lambda: torch.autograd.grad(
                ty, [tx, tw] + ([tb] if bias else []), tdy, retain_graph=True)
        return side
    return Case(name, "gemm", build)


def memory_case(name, build_fn):
    return Case(name, "memory", build_fn)


def maxpool_idx(ctx):
    from convnet.layers import Pooling
    rng = ctx["rng"]
    x = randn(rng, (8, 64, 128, 128))
    layer = Pooling(kernel_size=2, stride=2, pool="MAX", return_mask=True, name="pool")
    y, mask = layer.forward(x)
    dy = randn(rng, y.shape)
    side = {"cv_fwd": lambda: layer.forward(x), "cv_bwd": lambda: layer.backward(dy, mask),
            "bytes_fwd": x.nbytes + 2 * y.nbytes, "bytes_bwd": dy.nbytes + mask.nbytes + x.nbytes}
    torch = ctx.get("torch")
    if torch is not None:
        F = torch.nn.functional
        tx = torch.tensor(x, device=ctx["torch_device"], requires_grad=True)
        tdy = torch.tensor(dy, device=ctx["torch_device"])
        f = lambda: F.max_pool2d(tx, 2, 2, ceil_mode=True, return_indices=True)
        side["th_fwd"] = f
        ty, _ = f()
        side["th_bwd"] = lambda: torch.autograd.grad(ty, tx, tdy, retain_graph=True)
    return side


def maxunpool(ctx):
    from convnet.layers import Pooling, Unpooling
    rng = ctx["rng"]
    x = randn(rng, (8, 64, 128, 128))
    y, mask = Pooling(kernel_size=2, stride=2, return_mask=True).forward(x)
    layer = Unpooling(kernel_size=2, stride=2, out_size=(128, 128), name="unpool")
    out = layer.forward(y, mask)
    dy = randn(rng, out.shape)
    side = {"cv_fwd": lambda: layer.forward(y, mask),
            "cv_bwd": lambda: layer.backward(dy, propagate_down=(True, False)),
            "bytes_fwd": y.nbytes + mask.nbytes + out.nbytes,
            "bytes_bwd": mask.nbytes + y.nbytes + y.nbytes}
    torch = ctx.get("torch")
    if torch is not None:
        F = torch.nn.functional
        dev = ctx["torch_device"]
        ty = torch.tensor(y, device=dev, requires_grad=True)
        tidx = torch.tensor(mask.astype(np.int64), device=dev)
        tdy = torch.tensor(dy, device=dev)
        f = lambda: F.max_unpool2d(ty, tidx, 2, 2, output_size=(128, 128))
        side["th_fwd"] = f
        tout = f()
        side["th_bwd"] = lambda: torch.autograd.grad(tout, ty, tdy, retain_graph=True)
    return side


def interp_case(shape, out_hw, **params):
    def build(ctx):
        from convnet.layers import Interp
        rng = ctx["rng"]
        x = randn(rng, shape)
        layer = Interp(name="interp", **params)
        y = layer.forward(x)
        assert y.shape[2:] == out_hw, (y.shape, out_hw)
        dy = randn(rng, y.shape)
        side = {"cv_fwd": lambda: layer.forward(x), "cv_bwd": lambda: layer.backward(dy),
                "bytes_fwd": x.nbytes + y.nbytes, "bytes_bwd": dy.nbytes + x.nbytes}
        torch = ctx.get("torch")
        if torch is not None:
            F = torch.nn.functional
            dev = ctx["torch_device"]
            tx = torch.tensor(x, device=dev, requires_grad=True)
            tdy = torch.tensor(dy, device=dev)
            f = lambda: F.interpolate(tx, size=out_hw, mode="bilinear", align_corners=True)
            side["th_fwd"] = f
            ty = f()
            side["th_bwd"] = lambda: torch.autograd.grad(ty, tx, tdy, retain_graph=True)
        return side
    return build


def avgpool(ctx):
    from convnet.layers import Pooling
    rng = ctx["rng"]
    x = randn(rng, (8, 64, 128, 128))
    layer = Pooling(kernel_size=3, stride=2, pad=1, pool="AVE", name="avgpool")
    y = layer.forward(x)
    dy = randn(rng, y.shape)
    side = {"cv_fwd": lambda: layer.forward(x), "cv_bwd": lambda: layer.backward(dy),
            "bytes_fwd": x.nbytes + y.nbytes, "bytes_bwd": dy.nbytes + x.nbytes}
    torch = ctx.get("torch")
    if torch is not None:
        F = torch.nn.functional
        tx = torch.tensor(x, device=ctx["torch_device"], requires_grad=True)
        tdy = torch.tensor(dy, device=ctx["torch_device"])
        f = lambda: F.avg_pool2d(tx, 3, 2, 1, ceil_mode=True, count_include_pad=True)
        side["th_fwd"] = f
        ty = f()
        side["th_bwd"] = lambda: torch.autograd.grad(ty, tx, tdy, retain_graph=True)
    return side


def euclidean_loss(ctx):
    from convnet.layers import EuclideanLoss
    rng = ctx["rng"]
    a = randn(rng, (8, 21, 128, 128))
    b = randn(rng, (8, 21, 128, 128))
    layer = EuclideanLoss(name="euclid")
    layer.forward(a, b)
    side = {"cv_fwd": lambda: layer.forward(a, b), "cv_bwd": lambda: layer.backward(),
            "bytes_fwd": a.nbytes + b.nbytes, "bytes_bwd": a.nbytes + b.nbytes + 2 * a.nbytes}
    torch = ctx.get("torch")
    if torch is not None:
        dev = ctx["torch_device"]
        ta = torch.tensor(a, device=dev, requires_grad=True)
        tb = torch.tensor(b, device=dev, requires_grad=True)
        f = lambda: ((ta - tb) ** 2).sum() / (2 * a.shape[0])
        side["th_fwd"] = f
        tl = f()
        side["th_bwd"] = lambda: torch.autograd.grad(tl, [ta, tb], retain_graph=True)
    return side


def softmax_loss(ctx):
    from convnet.layers import SoftmaxWithLoss
    rng = ctx["rng"]
    x = randn(rng, (8, 21, 128, 128))
    labels = rng.integers(0, 21, size=(8, 128, 128))
    labels[rng.random(labels.shape) < 0.05] = 255
    layer = SoftmaxWithLoss(ignore_label=255, name="loss")
    layer.forward(x, labels)
    side = {"cv_fwd": lambda: layer.forward(x, labels), "cv_bwd": lambda: layer.backward(),
            "bytes_fwd": x.nbytes + labels.nbytes, "bytes_bwd": labels.nbytes + 2 * x.nbytes}
    torch = ctx.get("torch")
    if torch is not None:
        F = torch.nn.functional
        dev = ctx["torch_device"]
        tx = torch.tensor(x, device=dev, requires_grad=True)
        tl = torch.tensor(labels, device=dev)
        f = lambda: F.cross_entropy(tx, tl, ignore_index=255)
        side["th_fwd"] = f
        tloss = f()
        side["th_bwd"] = lambda: torch.autograd.grad(tloss, tx, retain_graph=True)
    return side


def deconvnet_vgg(phase):
    def build(ctx):
        from bench_deconvnet import build_infer, build_train
        side = (build_infer if phase == "infer" else build_train)(ctx)
        print(f"# deconvnet_vgg_{phase}: {side.get('check', 'no PyTorch to check against')}; "
              f"convolutions: {side['algorithms']}", flush=True)
        return side
    return build


from bench_layers import LAYER_CASES  # noqa: E402  (scripts/ is on sys.path when run)

CASES = [
    conv_case("conv_3x3", 8, 64, 64, 64, 3, p=1),
    conv_case("conv_3x3_c16", 16, 16, 16, 64, 3, p=1),
    conv_case("conv_atrous", 8, 128, 128, 32, 3, p=2, d=2),
    conv_case("conv_first", 8, 3, 32, 128, 3, p=1),
    conv_case("conv_1x1", 8, 256, 64, 32, 1, bias=False),
    conv_case("deconv_2x", 8, 64, 32, 32, 4, s=2, p=1, deconv=True),
    conv_case("deconv_8x", 8, 21, 21, 16, 16, s=8, p=4, bias=False, deconv=True),
    memory_case("maxpool_idx", maxpool_idx),
    memory_case("maxunpool", maxunpool),
    memory_case("interp_zoom8", interp_case((8, 21, 32, 32), (249, 249), zoom_factor=8)),
    memory_case("interp_down", interp_case((8, 64, 128, 128), (65, 65), height=65, width=65)),
    memory_case("avgpool", avgpool),
    memory_case("euclidean_loss", euclidean_loss),
    memory_case("softmax_loss", softmax_loss),
    *[Case(name, "layer", build) for name, build in LAYER_CASES],
    Case("deconvnet_vgg_infer", "net", deconvnet_vgg("infer"), phases=("fwd",)),
    Case("deconvnet_vgg_train", "net", deconvnet_vgg("train"), phases=("step",)),
]


# --------------------------------------------------------------------------- driver

def geomean(values):
    values = [v for v in values if v]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def run(args):
    import convnet
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("PyTorch not importable: convnet's own figures only.")
    if args.device == "cuda":
        if torch is None or not torch.cuda.is_available():
            sys.exit("--device cuda needs PyTorch with CUDA for the side-by-side")
        from convnet import cuda as ccuda
        if not ccuda.is_available():
            sys.exit(f"convnet CUDA unavailable: {ccuda.unavailable_reason()}")
        import bench_cuda   # every layer on the GPU; the GPU's sgemm rate and copy bandwidth
        bench_cuda.install(globals())
    convnet.set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    ctx = {"rng": np.random.default_rng(args.seed), "torch": torch, "threads": args.threads,
           "torch_device": "cuda" if args.device == "cuda" else "cpu"}
    sync = torch.cuda.synchronize if (torch is not None and args.device == "cuda") else None
    wanted = (args.cases.split(",") if args.cases
              else [c.name for c in CASES] + ["train_step", "lstm"])

    print(f"# convnet {convnet.__version__} vs "
          f"{'PyTorch ' + torch.__version__ if torch is not None else 'no PyTorch'}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"threads={args.threads}, device={args.device}, reps={args.reps}, "
          f"GLIBC_TUNABLES={'set' if os.environ.get('GLIBC_TUNABLES') == TUNABLES else 'default'}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}, "
          f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', 'default')}, "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'auto')}")
    print(f"# convnet's BLAS: {blas_kernels()}; OPENBLAS_L2_SIZE="
          f"{os.environ.get('OPENBLAS_L2_SIZE', 'unset')}")
    header = (f"{'case':<20}{'pass':<5}{'convnet ms':>11}{'torch ms':>10}{'ratio':>7}"
              f"{'GFLOP/s':>9}{'%sgemm':>8}{'GB/s':>7}{'%copy':>7}{'x copy t':>9}  algorithm")
    print(header)
    rows = []
    for case in [c for c in CASES if c.name in wanted]:
        side = case.build(ctx)
        heavy = case.kind == "net"
        for phase in case.phases:
            cv, th = measure_pair(side[f"cv_{phase}"], side.get(f"th_{phase}"),
                                  max(args.reps // 5, 3) if heavy else args.reps,
                                  1 if heavy else args.warmup, sync)
            row = {"case": case.name, "kind": case.kind, "pass": phase,
                   "convnet_ms": cv * 1e3, "torch_ms": th * 1e3 if th else None,
                   "ratio": th / cv if th else None, "algorithm": side.get("algorithm")}
            if case.kind == "net":
                pass
            elif case.kind == "gemm":
                flops = side[f"flops_{phase}"]
                m, n, k = side["gemm"]
                batch = flops / (2.0 * m * n * k * (2 if phase == "bwd" else 1))
                peak = sgemm_rate(m, int(n * batch), k)
                row.update(gflops=flops / cv / 1e9, sgemm_gflops=peak,
                           pct_sgemm=100.0 * flops / cv / 1e9 / peak)
            else:
                nbytes = side[f"bytes_{phase}"]
                bw = copy_bandwidth(nbytes)
                row.update(gbps=nbytes / cv / 1e9, copy_gbps=bw,
                           pct_copy=100.0 * nbytes / cv / 1e9 / bw,
                           x_copy_time=cv / (nbytes / bw / 1e9))
            rows.append(row)
            print(format_row(row), flush=True)
        del side
    if "train_step" in wanted:
        rows.extend(train_step_rows(args, ctx, sync))
    if "lstm" in wanted and args.device == "cpu":
        rows.extend(lstm_rows(args))
    summary = summarize(rows)
    for key, value in summary.items():
        print(f"# {key}: {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "summary": summary, "threads": args.threads,
                       "device": args.device, "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
                       "torch": torch.__version__ if torch is not None else None}, f, indent=1)
        print(f"# wrote {args.json}")


def fmt(value, spec):
    return format(value, spec) if value is not None else "-".rjust(int(spec.split(".")[0]))


def format_row(r):
    return (f"{r['case']:<20}{r['pass']:<5}{fmt(r['convnet_ms'], '11.2f')}"
            f"{fmt(r.get('torch_ms'), '10.2f')}{fmt(r.get('ratio'), '7.2f')}"
            f"{fmt(r.get('gflops'), '9.1f')}{fmt(r.get('pct_sgemm'), '8.0f')}"
            f"{fmt(r.get('gbps'), '7.1f')}{fmt(r.get('pct_copy'), '7.0f')}"
            f"{fmt(r.get('x_copy_time'), '9.2f')}  {r.get('algorithm') or ''}").rstrip()


def blas_kernels():
    """The BLAS libraries loaded in this process and the kernel each runs (threadpoolctl)."""
    import scipy.linalg.cython_blas  # noqa: F401  (convnet's BLAS door loads scipy's BLAS)
    from threadpoolctl import threadpool_info
    found = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture', '?')} "
             f"kernels, {os.path.basename(i.get('filepath', ''))})"
             for i in threadpool_info() if i.get("user_api") == "blas"]
    return "; ".join(found) or "none found"


def summarize(rows):
    out = {}
    for kind in ("gemm", "memory", "layer"):
        ratios = [r["ratio"] for r in rows if r["kind"] == kind and r.get("ratio")]
        if ratios:
            out[f"{kind} ratio geomean"] = round(geomean(ratios), 3)
            out[f"{kind} ratio min"] = round(min(ratios), 3)
    step = [r for r in rows if r["kind"] == "train"]
    if step and step[0].get("ratio"):
        out["train_step ratio"] = round(step[0]["ratio"], 3)
    for r in rows:
        if r["kind"] == "net" and r.get("ratio"):
            out[f"{r['case']} ratio"] = round(r["ratio"], 3)
        if r["kind"] == "rnn" and r.get("ratio"):
            out[f"lstm {r['pass']} ratio"] = round(r["ratio"], 3)
    return out


def train_step_rows(args, ctx, sync):
    """One SGD iteration of scripts/train_segmentation.py's default network, both sides."""
    try:
        from bench_train_step import build_train_step
    except ImportError as exc:
        print(f"# train_step skipped: {exc}")
        return []
    side = build_train_step(ctx)
    cv, th = measure_pair(side["cv_step"], side.get("th_step"), max(args.reps // 2, 5),
                          args.warmup, sync)
    row = {"case": "train_step", "kind": "train", "pass": "step", "convnet_ms": cv * 1e3,
           "torch_ms": th * 1e3 if th else None, "ratio": th / cv if th else None,
           "convnet_peak_mb": side.get("cv_peak_mb"), "torch_peak_mb": side.get("th_peak_mb")}
    print(format_row(row) + f"   peak MB convnet {fmt(row['convnet_peak_mb'], '.0f')} "
          f"torch {fmt(row['torch_peak_mb'], '.0f')}", flush=True)
    return [row]


def lstm_rows(args):
    """convnet.rnn's LSTM layer (T=50, N=64, 256 -> 256) against torch.nn.LSTM
    (scripts/bench_rnn.py), as rows of this table."""
    from bench_rnn import bench_lstm
    res = bench_lstm(repeat=max(args.reps // 3, 3), threads=args.threads,
                     log=lambda text: print(f"# {text}"))
    rows = []
    for phase, key in (("fwd", "forward"), ("fwbw", "forward_backward")):
        ours, theirs = res[f"convnet_{key}_s"], res.get(f"torch_{key}_s")
        row = {"case": "lstm", "kind": "rnn", "pass": phase, "convnet_ms": ours * 1e3,
               "torch_ms": theirs * 1e3 if theirs else None,
               "ratio": theirs / ours if theirs else None}
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", default="", help="comma-separated case names (default all)")
    parser.add_argument("--reps", type=int, default=15, help="timed runs per side (>= 10)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", default="", help="write the rows and summary here")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-torch", action="store_true", help="convnet's figures only")
    parser.add_argument("--default-malloc", action="store_true",
                        help="keep glibc's malloc defaults (page faults in both sides)")
    parser.add_argument("--omp-wait-policy", choices=("convnet", "passive", "default"),
                        default="convnet",
                        help="OpenMP waiting for both sides: convnet's bounded spin, "
                             "OMP_WAIT_POLICY=PASSIVE, or libgomp's default (default "
                             "%(default)s)")
    parser.add_argument("--keep-openblas-env", action="store_true",
                        help="keep OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (by default they are "
                             "unset, as on a user's machine, so OpenBLAS picks its own kernels)")
    args = parser.parse_args(argv)
    if args.reps < 10:
        parser.error("--reps must be at least 10")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    known = [c.name for c in CASES] + ["train_step", "lstm"]
    unknown = [c for c in args.cases.split(",") if c and c not in known]
    if unknown:
        parser.error(f"--cases: unknown case(s) {', '.join(unknown)}; known: {', '.join(known)}")
    env = dict(os.environ)
    if not args.default_malloc:
        env["GLIBC_TUNABLES"] = TUNABLES
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        env.pop(name, None)
    if args.omp_wait_policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    elif args.omp_wait_policy == "convnet":
        from convnet import SPIN_COUNT
        env["GOMP_SPINCOUNT"] = SPIN_COUNT
    else:
        # libgomp's own default for an unset policy, spelled out: with neither variable set,
        # ``import convnet`` (before PyTorch loads libgomp) would put its own in
        env["GOMP_SPINCOUNT"] = "300000"
    if not args.keep_openblas_env:
        # some machines pin scipy's OpenBLAS to older kernels; a user's does not (PyTorch
        # does not use OpenBLAS, so this changes convnet's side only)
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    if env != dict(os.environ):
        # both settings are read once, when the C libraries load: start afresh with them
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    run(args)


if __name__ == "__main__":
    main()
