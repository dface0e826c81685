#!/usr/bin/env python
"""Train an attention encoder-decoder with convnet.rnn to reverse digit sequences.

With no flags it trains on random digit sequences of lengths 3-12 (drawn from a seeded
generator, no download): an Embed + LSTM encoder, an AttentionCell(LSTMCell) decoder with
dot attention and input feeding, an InnerProduct classifier and SoftmaxWithLoss (padding
ignored), Adam. It then decodes 500 held-out sequences greedily and with beam 5, and ends
with a line

    held-out exact match: greedy 0.998, beam-5 0.998

Output (``--out``, default runs/sequence): ``weights.npz`` (Net.save), ``snapshot.npz``
(the solver's state, for ``--resume``; rewritten every 200 iterations, at the end and on
Ctrl-C).

Exit status: 0 done; 2 bad flags or unusable input (missing or unreadable snapshot or
weights); 1 training failed (a non-finite loss: the last good snapshot is kept); 130
interrupted by Ctrl-C after writing a snapshot to resume from.
"""

import argparse
import os
import signal
import sys
import time

import numpy as np

try:
    import convnet
except ImportError:     # running from a source checkout that was built in place
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import convnet

from convnet import Net
from convnet.errors import ConvnetError
from convnet.layers import Embed, InnerProduct, Reshape, SoftmaxWithLoss
from convnet.rnn import AttentionCell, CellLayer, LSTMCell, beam_search, decoder_net, \
    greedy_decode

# tokens: BOS, EOS, then the ten digits
BOS, EOS, DIGIT0 = 0, 1, 2
VOCAB = 12
IGNORE = -1
DEFAULTS = dict(iters=900, batch_size=64, embed=32, hidden=96, min_len=3, max_len=12,
                lr=0.003)
HELD_OUT = 500
DISPLAY_SECONDS = 5.0
SNAPSHOT_EVERY = 200
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Bad flags or unusable input: reported on one line, exit status 2."""


class ReverseDigits:
    """Batches of the reversal task, deterministic from ``seed``: ``next_batch()`` returns
    the net's inputs (time-major, padded with EOS; labels padded with IGNORE)."""

    def __init__(self, batch_size, min_len, max_len, seed):
        self.batch_size = batch_size
        self.min_len, self.max_len = min_len, max_len
        self.rng = np.random.default_rng(seed)

    def sample(self, n):
        lengths = self.rng.integers(self.min_len, self.max_len + 1, size=n)
        seqs = [self.rng.integers(0, 10, size=k) for k in lengths]
        return seqs, lengths

    def encode(self, seqs, lengths):
        n, s = len(seqs), self.max_len
        src = np.full((s, n), EOS, np.int64)
        tgt_in = np.full((s + 1, n), EOS, np.int64)
        tgt_out = np.full((s + 1, n), IGNORE, np.int64)
        for i, q in enumerate(seqs):
            k = len(q)
            src[:k, i] = q + DIGIT0
            rev = q[::-1] + DIGIT0
            tgt_in[0, i] = BOS
            tgt_in[1:k + 1, i] = rev
            tgt_out[:k, i] = rev
            tgt_out[k, i] = EOS
        return {"src": src, "src_len": np.asarray(lengths), "tgt_in": tgt_in,
                "tgt_len": np.asarray(lengths) + 1, "label": tgt_out.reshape(-1)}

    def next_batch(self):
        return self.encode(*self.sample(self.batch_size))

    def get_state(self):
        """The generator's position (saved in solver snapshots)."""
        return self.rng.bit_generator.state

    def set_state(self, state):
        self.rng.bit_generator.state = state


def build_net(embed, hidden):
    """The encoder-decoder as one convnet Net (time-major blobs)."""
    net = Net("reverse_digits", keep_diffs=False)
    enc_cell = LSTMCell(embed, hidden, name="enc")
    dec_cell = AttentionCell(LSTMCell(embed + hidden, hidden, name="dec"), hidden,
                             attention="dot", name="att")
    net.add(Embed(input_dim=VOCAB, num_output=embed, bias_term=False, name="src_embed"),
            bottom=["src"], top=["src_emb"])
    net.add(CellLayer(enc_cell, name="encoder"), bottom=["src_emb", "src_len"], top=["enc"])
    net.add(Embed(input_dim=VOCAB, num_output=embed, bias_term=False, name="tgt_embed"),
            bottom=["tgt_in"], top=["tgt_emb"])
    net.add(CellLayer(dec_cell, name="decoder"), bottom=["tgt_emb", "tgt_len", "enc", "src_len"],
            top=["dec"])
    net.add(InnerProduct(num_output=VOCAB, axis=-1, name="classifier"), bottom=["dec"],
            top=["logits"])
    net.add(Reshape(shape=[-1, VOCAB], name="flatten"), bottom=["logits"], top=["scores"])
    net.add(SoftmaxWithLoss(ignore_label=IGNORE, name="loss"), bottom=["scores", "label"],
            top=["loss"])
    return net


def evaluate(net, data, seqs, lengths, beam_size=5, batch=250):
    """Greedy and beam exact-match rates on the given sequences."""
    net.eval()
    enc_layer = net.layer("encoder")
    decoder = net.layer("decoder")
    step, states = decoder_net(decoder.runner, net.layer("tgt_embed"), net.layer("classifier"))
    cell = decoder.cell
    hits = {"greedy": 0, "beam": 0}
    for start in range(0, len(seqs), batch):
        part, plen = seqs[start:start + batch], lengths[start:start + batch]
        feed = data.encode(part, plen)
        emb = net.layer("src_embed").forward(feed["src"])
        enc = enc_layer.forward(emb, feed["src_len"])
        statics = decoder.runner._encoder_statics(enc.transpose(1, 0, 2), feed["src_len"],
                                                  len(part))
        n = len(part)
        initial = {s: np.zeros((n, size), cell.dtype) for s, size in cell.states.items()}
        want = [np.concatenate([q[::-1] + DIGIT0, [EOS]]) for q in part]
        g, glen, _ = greedy_decode(step, states, initial, max_length=data.max_len + 1,
                                   start_token=BOS, end_token=EOS, static=statics)
        b, blen, _ = beam_search(step, states, initial, beam_size=beam_size,
                                 max_length=data.max_len + 1, start_token=BOS, end_token=EOS,
                                 static=statics)
        for i, w in enumerate(want):
            hits["greedy"] += int(glen[i] == len(w) and np.array_equal(g[i, :glen[i]], w))
            hits["beam"] += int(blen[i, 0] == len(w) and np.array_equal(b[i, 0, :blen[i, 0]],
                                                                         w))
    net.train()
    return hits["greedy"] / len(seqs), hits["beam"] / len(seqs)


def fmt_time(seconds):
    seconds = int(round(max(seconds, 0)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Train an attention encoder-decoder (convnet.rnn) to reverse digit "
                    "sequences and report held-out exact match.",
        epilog="Exit status: 0 ok, 1 training failed (non-finite loss), 2 bad flags or input, "
               "130 interrupted (a snapshot was written).")
    p.add_argument("--iters", type=int, default=DEFAULTS["iters"],
                   help="Adam iterations (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"],
                   help="sequences per iteration (default %(default)s)")
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"],
                   help="base learning rate, poly policy with power 0.9 (default %(default)s)")
    p.add_argument("--hidden", type=int, default=DEFAULTS["hidden"],
                   help="LSTM hidden size (default %(default)s)")
    p.add_argument("--embed", type=int, default=DEFAULTS["embed"],
                   help="token embedding size (default %(default)s)")
    p.add_argument("--min-len", type=int, default=DEFAULTS["min_len"])
    p.add_argument("--max-len", type=int, default=DEFAULTS["max_len"])
    p.add_argument("--beam", type=int, default=5, help="beam size for the evaluation")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for OpenMP and BLAS (default %(default)s: every gemm here "
                        "is small, and on the shared 2-core machine 2 BLAS threads made the "
                        "run 4x slower, 96 against 386 seq/s)")
    p.add_argument("--resume", metavar="SNAPSHOT", default=None,
                   help="continue from a snapshot written by this script")
    p.add_argument("--out", metavar="DIR", default=os.path.join("runs", "sequence"),
                   help="output folder (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and data")
    p.add_argument("--eval-only", action="store_true",
                   help="only evaluate --weights on the held-out sequences")
    p.add_argument("--weights", metavar="FILE", default=None,
                   help="weights (.npz) for --eval-only")
    args = p.parse_args(argv)
    for name in ("iters", "batch_size", "hidden", "embed", "beam"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 1 <= args.min_len <= args.max_len:
        p.error(f"--min-len and --max-len need 1 <= min <= max, got {args.min_len} and "
                f"{args.max_len}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if not (np.isfinite(args.lr) and args.lr > 0):
        p.error(f"--lr must be a positive number, got {args.lr}")
    if args.seed < 0:
        p.error(f"--seed must be >= 0, got {args.seed}")
    if args.eval_only and not args.weights:
        p.error("--eval-only needs --weights FILE")
    if args.weights and not args.eval_only:
        p.error("--weights is only used with --eval-only (use --resume to continue training)")
    if args.eval_only and args.resume:
        p.error("--eval-only and --resume cannot be combined")
    return args


def train(args, solver, out_dir, log):
    snapshot_path = os.path.join(out_dir, "snapshot.npz")
    interrupted = []

    def on_sigint(signum, frame):
        interrupted.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def snapshot():
        # the data stream's position is part of the solver's snapshot (solver.data)
        solver.snapshot(snapshot_path)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        start_iter = solver.iter
        t0 = last_display = time.perf_counter()
        losses = []
        while solver.iter < args.iters:
            lr = solver.lr
            try:
                losses.append(solver.step())
            except convnet.DataError as exc:
                kept = (f"; the last good snapshot is kept at {snapshot_path}"
                        if os.path.exists(snapshot_path) else "; no snapshot was written")
                print(f"error: training stopped: {exc}{kept}", file=sys.stderr)
                return EXIT_FAILED
            now = time.perf_counter()
            done = solver.iter - start_iter
            if done == 1 or now - last_display >= DISPLAY_SECONDS or solver.iter == args.iters:
                rate = done * args.batch_size / (now - t0)
                eta = (args.iters - solver.iter) * args.batch_size / rate
                log(f"Iteration {solver.iter}, loss = {np.mean(losses):.4f}, lr = {lr:.4g}, "
                    f"{rate:.1f} seq/s, ETA {fmt_time(eta)}")
                losses, last_display = [], now
            if interrupted:
                snapshot()
                log(f"Interrupted at iteration {solver.iter}: snapshot written to "
                    f"{snapshot_path} (continue with --resume {snapshot_path})")
                return EXIT_INTERRUPTED
            if solver.iter % SNAPSHOT_EVERY == 0 and solver.iter < args.iters:
                snapshot()
    finally:
        signal.signal(signal.SIGINT, previous)
    snapshot()
    return EXIT_OK


def run(args):
    log = print
    t_start = time.perf_counter()
    convnet.set_num_threads(args.threads)
    for flag, path in (("--resume", args.resume), ("--weights", args.weights)):
        if path is not None and not os.path.isfile(path):
            raise UsageError(f"{flag} {path}: no such file")
    convnet.seed(args.seed)
    net = build_net(args.embed, args.hidden)
    data = ReverseDigits(args.batch_size, args.min_len, args.max_len, seed=args.seed)
    held = ReverseDigits(1, args.min_len, args.max_len, seed=10_000 + args.seed)
    held_seqs, held_len = held.sample(HELD_OUT)
    net.setup(**{k: v.shape for k, v in data.encode(*data.sample(2)).items()})
    os.makedirs(args.out, exist_ok=True)
    if args.eval_only:
        net.load(args.weights)
        log(f"Evaluating {args.weights} on {HELD_OUT} held-out sequences")
    else:
        solver = convnet.AdamSolver(net, base_lr=args.lr, lr_policy="poly", power=0.9,
                                    max_iter=args.iters, data=data)
        if args.resume is not None:
            solver.restore(args.resume)
            log(f"Resumed from {args.resume} at iteration {solver.iter}")
        log(f"Training {net.name} ({sum(p.data.size for p in net.learnable_params)} params): "
            f"reverse digit sequences of lengths {args.min_len}-{args.max_len}, batch "
            f"{args.batch_size}, {args.iters} iterations, {convnet.get_num_threads()} threads")
        status = train(args, solver, args.out, log)
        if status != EXIT_OK:
            return status
        net.save(os.path.join(args.out, "weights.npz"))
        log(f"Trained in {fmt_time(time.perf_counter() - t_start)}; weights and snapshot "
            f"written to {args.out}")
    greedy, beam = evaluate(net, held, held_seqs, held_len, beam_size=args.beam)
    log(f"Total time {fmt_time(time.perf_counter() - t_start)}")
    log(f"held-out exact match: greedy {greedy:.3f}, beam-{args.beam} {beam:.3f}")
    return EXIT_OK


def main(argv=None):
    args = parse_args(argv)
    prog = os.path.basename(sys.argv[0]) if argv is None else "train_sequence.py"
    try:
        return run(args)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ConvnetError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
