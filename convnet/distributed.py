"""Data-parallel training over MPI (mpi4py): K processes train one model as one process would.

Every rank holds the whole model and trains on its part of each global batch; a solver
wrapped in :class:`DistributedSolver` then takes the same steps as the plain solver in one
process fed the whole batch (to rounding; exactly, with ``BatchNorm(sync=True)``). mpi4py is an
optional dependency imported only here (``pip install ".[mpi]"`` brings it and the mpich
wheel, whose ``mpiexec`` lands beside the interpreter)::

    # train.py, launched as:  mpiexec -n 4 python -m mpi4py train.py
    from convnet import distributed
    net.setup(data=(1, 3, 64, 64), label=(1, 64, 64))   # params must exist before wrapping
    solver = distributed.DistributedSolver(
        AdamSolver(net, data=BatchIterator(train, batch_size=16, seed=0)),
        sync_batchnorm=True)
    while solver.iter < 1000:
        loss = solver.step()                 # the whole batch's loss, on every rank
    solver.snapshot("snap.npz")              # rank 0 writes; resumes on any number of ranks
    solver.log(f"done, loss {loss:.4f}")     # rank 0 prints

What the wrapper does (Horovod's DistributedOptimizer and PyTorch DDP, on the CPU):

- **Start.** Parameters, BatchNorm moving averages, solver history, iteration, the data
  iterator's position and the random streams are broadcast from rank 0 (also after
  :meth:`~DistributedSolver.restore`), so every replica starts identical.
- **Data.** The solver's data iterator (global batch B, one seed) is wrapped in
  :class:`ShardedBatches`: every rank advances the same global iterator and loads only its
  part of each batch (``convnet.data.split_range``: near-equal consecutive parts, so any
  number of ranks up to B works). The order of every epoch is thus the same for any number of
  ranks, and a snapshot holds the global iterator's state: one written by K ranks resumes on
  any number of ranks, or in one process without this module.
- **Losses.** Every loss layer sums ``[loss sum, normaliser count]`` over the ranks through
  :meth:`convnet.layers.base.Layer._reduce_stats` (one Allreduce of 2 doubles per loss layer
  per forward, in the TRAIN phase only: evaluation stays per rank): each rank's loss is the whole batch's and its gradient is already divided by
  the whole batch's normaliser (SoftmaxWithLoss's VALID count with ignored pixels, FULL,
  BATCH_SIZE, NONE), so gradients are **summed** over ranks, exactly one process's gradient
  whatever the parts' sizes or ignored pixels. Every rank sees the same loss, so a non-finite
  loss stops every rank at the same step.
- **Gradients, in buckets.** The learnable params (lr_mult != 0), in reverse layer order, are
  grouped into flat buffers of at most ``bucket_mb`` MiB per dtype (whole layers; PyTorch DDP
  uses 25 MiB); each ``param.diff`` becomes a view of its bucket, so nothing is copied. The
  net's backward hook starts a bucket's ``Iallreduce(IN_PLACE, SUM)`` as soon as the backward
  of its last layer has returned, while backward goes on with the layers below (during the
  last of ``iter_size`` passes only: earlier passes accumulate locally); later hooks call
  ``Testall`` so MPI progresses them; all are waited when backward ends, before the solver's
  update. The buffers belong to the wrapper (they are the diffs), so they outlive every
  request (Iallreduce keeps no reference to its buffer). ``comm_wait_seconds`` adds up the
  time spent waiting.
- **BatchNorm.** ``BatchNorm(sync=True)`` (or ``sync_batchnorm=True`` here for every
  BatchNorm) sums the per-channel ``[count, sum x, sum x^2]`` in forward and ``[sum dy,
  sum dy * xhat]`` in backward over the ranks: the statistics are the whole batch's. Without
  it each rank normalises with its own part's statistics, and the moving averages saved
  (rank 0 writes) are rank 0's.
- **Threads.** Each rank uses (cores / ranks on its node) OpenMP and BLAS threads, or the
  cores the launcher bound it to, unless ``threads=`` or ``OMP_NUM_THREADS`` says otherwise
  (:func:`set_threads`).
- **Output.** Only rank 0 writes snapshots and weights (:meth:`~DistributedSolver.snapshot`,
  :meth:`~DistributedSolver.save`) and prints (:meth:`~DistributedSolver.log`).
- **Debug.** ``debug=True`` compares a CRC32 of every param, the solver history and the
  synchronised BatchNorm averages across ranks after each step and raises StateError naming
  the first array whose replicas differ.

Failure never hangs: run under ``python -m mpi4py`` (an unhandled exception or a non-zero
``sys.exit`` on any rank calls MPI_Abort, which ends every rank); :func:`abort` does the same
from a program that handles its errors itself. A rank killed by a signal ends the job through
``mpiexec``.

Replicas stay identical: every rank applies the same update to the same weights from the same
reduced gradient (MPICH's reductions give every rank the same bits). Dropout layers draw the
same masks on every rank (their streams are broadcast), so a net with Dropout does not match
one process. The net must live on the CPU.
"""

import inspect
import json
import os
import sys
import time
import zlib

import numpy as np

try:
    from mpi4py import MPI
except ImportError as exc:      # mpi4py missing, or its MPI library
    raise ImportError(f'convnet.distributed needs mpi4py and an MPI library: '
                      f'pip install ".[mpi]" ({exc})') from exc

from convnet.data import split_range
from convnet.errors import ConfigError, StateError, fail

__all__ = ["DistributedSolver", "ShardedBatches", "set_threads", "is_root", "root_log",
           "run_main", "abort", "allreduce_cost"]


def _world(comm):
    if comm is None:
        return MPI.COMM_WORLD
    if not isinstance(comm, MPI.Comm):
        raise ConfigError(f"convnet.distributed: comm must be an mpi4py communicator, got "
                          f"{type(comm).__name__}")
    return comm


def local_ranks(comm=None):
    """The number of ranks of ``comm`` on this node (sharing its memory)."""
    local = _world(comm).Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return local.Get_size()
    finally:
        local.Free()


def set_threads(comm=None, threads=None):
    """Set this rank's OpenMP and BLAS threads and return the count.

    ``threads`` (an int >= 1) wins; else ``OMP_NUM_THREADS`` in the environment is kept; else
    the cores this process may run on (``os.sched_getaffinity``) when the launcher bound it to
    fewer than the machine's cores, or the machine's cores divided by the ranks on this node
    (at least 1), as torchrun does.
    """
    import convnet
    if threads is None:
        if os.environ.get("OMP_NUM_THREADS"):
            return convnet.get_num_threads()
        allowed = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count() or 1)
        threads = allowed if allowed < (os.cpu_count() or allowed) else max(
            1, allowed // local_ranks(comm))
    convnet.set_num_threads(threads)
    return convnet.get_num_threads()


def abort(status=1, comm=None):
    """End every rank of the job now with exit status ``status`` (MPI_Abort)."""
    sys.stdout.flush()
    sys.stderr.flush()
    _world(comm).Abort(int(status) or 1)


def is_root(comm=None):
    """Whether this process is rank 0 of ``comm`` (COMM_WORLD by default)."""
    return _world(comm).Get_rank() == 0


def root_log(comm=None):
    """A print function for programs run on every rank: prints (flushed) on rank 0, does
    nothing elsewhere, where warnings (which rank 0 shows too) are silenced."""
    if is_root(comm):
        return lambda *args, **kwargs: print(*args, **kwargs, flush=True)
    import warnings
    warnings.simplefilter("ignore")
    return lambda *args, **kwargs: None


def run_main(main, comm=None):
    """Run ``main()`` (returning an exit status) on every rank; a non-zero status or an
    exception on any rank ends the whole job (MPI_Abort) instead of leaving the other ranks
    waiting in a collective. Returns the status (0) otherwise."""
    try:
        status = main()
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback
        traceback.print_exc()
        status = 1
    if status:
        abort(status, comm)
    return status


def allreduce_cost(nbytes, ranks, gbit_per_s, latency_s=5e-6):
    """Seconds one ring allreduce of ``nbytes`` takes over ``ranks`` machines linked at
    ``gbit_per_s``: each rank sends and receives 2 (K - 1) / K of the data in 2 (K - 1)
    messages (reduce-scatter, then allgather)."""
    if ranks < 2:
        return 0.0
    steps = 2 * (ranks - 1)
    return steps / ranks * nbytes * 8 / (gbit_per_s * 1e9) + steps * latency_s


class ShardedBatches:
    """This rank's part of every batch of a global batch iterator.

    Every rank wraps an identical iterator (same dataset, global ``batch_size``, seed) and
    advances it in step; ``next_batch()`` returns part ``rank`` of ``size`` of the global
    batch (``convnet.data.split_range``). An iterator whose ``next_batch`` takes ``part=``
    (:class:`convnet.data.BatchIterator`) loads only that part; any other is asked for the
    whole batch, which is then sliced along axis 0. ``get_state`` / ``set_state`` and other
    attributes are the global iterator's, so a snapshot does not depend on the rank count.
    """

    type_name = "ShardedBatches"

    def __init__(self, batches, rank, size):
        self.name = None
        if not callable(getattr(batches, "next_batch", None)):
            fail(self, f"needs an iterator with next_batch(), got {type(batches).__name__}")
        self.batches = batches
        self.rank, self.size = int(rank), int(size)
        batch_size = getattr(batches, "batch_size", None)
        if isinstance(batch_size, int) and batch_size < self.size:
            fail(self, f"the global batch_size ({batch_size}) must be at least the number of "
                       f"ranks ({self.size}): every rank needs one image")
        try:
            params = inspect.signature(batches.next_batch).parameters
        except (TypeError, ValueError):
            params = {}
        self._takes_part = "part" in params

    def next_batch(self):
        if self._takes_part:
            return self.batches.next_batch(part=(self.rank, self.size))
        batch = self.batches.next_batch()
        out = {}
        for key, value in batch.items():
            lo, hi = split_range(len(value), self.rank, self.size)
            out[key] = value[lo:hi]
        return out

    def __getattr__(self, name):
        if name == "batches":       # not set yet (during unpickling or __init__)
            raise AttributeError(name)
        return getattr(self.batches, name)


class _Bucket:
    """Consecutive layers (reverse order) whose param diffs share one flat buffer."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        self.layers = []
        self.params = []
        self.nbytes = 0
        self.buffer = None
        self.pending = 0
        self.started = False

    def add(self, layer, params):
        self.layers.append(layer)
        self.params.extend(params)
        self.nbytes += sum(int(np.prod(p.shape, dtype=np.int64)) * self.dtype.itemsize
                           for p in params)

    def allocate(self):
        """Move every param's diff into the buffer (values kept); diffs become views."""
        self.buffer = np.zeros(self.nbytes // self.dtype.itemsize, self.dtype)
        offset = 0
        for p in self.params:
            n = int(np.prod(p.shape, dtype=np.int64))
            view = self.buffer[offset:offset + n].reshape(p.shape)
            view[...] = p.diff
            p.diff = view
            offset += n

    def owns_diffs(self):
        return all(np.shares_memory(p.diff, self.buffer) for p in self.params)


class DistributedSolver:
    """Data-parallel wrapper of a :class:`convnet.SGDSolver` / :class:`convnet.AdamSolver`
    (see the module docstring for what it does).

    ``DistributedSolver(solver, comm=None, bucket_mb=1.0, sync_batchnorm=None,
    shard_data=True, threads=None, debug=False)``: ``comm`` (default COMM_WORLD);
    ``bucket_mb`` the largest gradient bucket in MiB (a layer bigger than that gets a bucket
    of its own); ``sync_batchnorm`` True / False sets ``sync`` on every BatchNorm (None keeps
    each layer's); ``shard_data`` wraps ``solver.data`` in :class:`ShardedBatches` (False: the
    iterator already yields this rank's part); ``threads`` see :func:`set_threads`;
    ``debug`` checks after each step that the replicas are identical.

    The net must be set up (its params exist) and on the CPU. ``step(**inputs)`` with inputs
    takes this rank's part of the batch. Other attributes (``iter``, ``lr``, ``loss``,
    ``net``, ``data``...) are the wrapped solver's.
    """

    type_name = "DistributedSolver"

    def __init__(self, solver, comm=None, bucket_mb=1.0, sync_batchnorm=None,
                 shard_data=True, threads=None, debug=False):
        from convnet.layers import BatchNorm
        from convnet.layers.base import check_number
        from convnet.solvers import Solver
        self.name = None
        if not isinstance(solver, Solver):
            fail(self, f"wraps a convnet solver (SGDSolver, AdamSolver), got "
                       f"{type(solver).__name__}")
        self.solver = solver
        net = solver.net
        self.comm = _world(comm)
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.bucket_bytes = int(check_number(bucket_mb, "bucket_mb", self, minimum=0.0,
                                             strict_min=True) * 2 ** 20)
        if sync_batchnorm not in (None, True, False):
            fail(self, f"sync_batchnorm must be None, True or False, got {sync_batchnorm!r}")
        if threads is not None:
            check_number(threads, "threads", self, minimum=1, integer=True)
        if net.device != "cpu":
            fail(self, f"distributed training runs on the CPU backend; net '{net.name}' is on "
                       f"{net.device} (build it without .to('cuda'))")
        net._require_setup("DistributedSolver")
        self.debug = bool(debug)
        self.threads = set_threads(self.comm, threads)
        self._reduced = set()
        for layer in net.layers:
            if isinstance(layer, BatchNorm) and sync_batchnorm is not None:
                layer.sync = sync_batchnorm
            if layer.is_loss or (isinstance(layer, BatchNorm) and layer.sync):
                layer.stats_reducer = self._reducer(layer)
        if shard_data and solver.data is not None and not isinstance(solver.data,
                                                                     ShardedBatches):
            solver.data = ShardedBatches(solver.data, self.rank, self.size)
        self.comm_wait_seconds = 0.0
        self.reduced_bytes = 0
        #: buckets whose allreduce started while backward was still running (overlapped)
        self.overlapped_buckets = 0
        self._requests = []
        self._pass = 0
        self._buckets = []
        self._build_buckets()
        net.backward_hooks.append(self._on_backward)
        self.broadcast_state()

    # ------------------------------------------------------------------ delegation
    def __getattr__(self, name):
        if name == "solver":
            raise AttributeError(name)
        return getattr(self.solver, name)

    @property
    def iter(self):
        return self.solver.iter

    @property
    def is_root(self):
        return self.rank == 0

    def log(self, *args, **kwargs):
        """print() on rank 0 only (flushed)."""
        if self.rank == 0:
            print(*args, **kwargs, flush=True)

    def any_rank(self, flag):
        """Whether ``flag`` is true on any rank (every rank must call it): lets all ranks
        stop at the same step, e.g. when Ctrl-C reached some of them first."""
        return bool(self.comm.allreduce(bool(flag), op=MPI.LOR))

    # ------------------------------------------------------------------ collectives
    def _allreduce(self, array):
        buf = np.array(array, dtype=np.float64, order="C", copy=True)
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        return buf

    def _reducer(self, layer):
        def reduce(stats):
            if layer.phase != "TRAIN":
                return stats        # evaluation runs on each rank's own (or rank 0 alone)
            self._reduced.add(id(layer))
            return self._allreduce(stats)
        return reduce

    def broadcast_state(self):
        """Make every rank's weights, BatchNorm averages, solver history, iteration, data
        position and random streams rank 0's."""
        solver, net, comm = self.solver, self.solver.net, self.comm
        for _, p in net.named_params():
            comm.Bcast(p.data, root=0)
        for _, buf in net.named_buffers():
            comm.Bcast(buf, root=0)
        started = comm.bcast(solver.history_started, root=0)
        if started:
            history = solver.history_arrays() if solver.history_started else [
                [np.zeros(p.shape, p.dtype) for _ in range(solver.history_slots)]
                for p in net.learnable_params]
            for slots in history:
                for h in slots:
                    comm.Bcast(h, root=0)
            solver.set_history(history)
        else:
            solver.set_history(None)
        solver.iter = comm.bcast(solver.iter, root=0)
        data = solver.data
        if data is not None and hasattr(data, "get_state") and hasattr(data, "set_state"):
            state = comm.bcast(json.dumps(data.get_state()) if self.rank == 0 else None, root=0)
            data.set_state(json.loads(state))
        net.set_rng_state(comm.bcast(net.get_rng_state(), root=0))

    # ------------------------------------------------------------------ buckets
    def _build_buckets(self):
        """Group the learnable params, in reverse layer order, into flat buckets."""
        buckets, current = [], None
        for layer in reversed(self.solver.net.layers):
            params = [p for p in layer.params if p.lr_mult != 0]
            if not params:
                continue
            nbytes = sum(int(np.prod(p.shape, dtype=np.int64)) * np.dtype(p.dtype).itemsize
                         for p in params)
            if (current is None or current.dtype != np.dtype(params[0].dtype)
                    or (current.params and current.nbytes + nbytes > self.bucket_bytes)):
                current = _Bucket(params[0].dtype)
                buckets.append(current)
            current.add(layer, params)
        for bucket in buckets:
            bucket.allocate()
        self._buckets = buckets
        self._bucket_of = {id(layer): b for b in buckets for layer in b.layers}
        self._learnable = [p for b in buckets for p in b.params]

    @property
    def bucket_sizes(self):
        """Bytes of each gradient bucket, in the order they are reduced."""
        return [b.nbytes for b in self._buckets]

    def allreduce_seconds(self, repeats=20):
        """Seconds one blocking allreduce of every gradient bucket takes (the mean of
        ``repeats``, after a barrier): the communication that overlap with backward hides.
        Overwrites the param diffs (the next step zeroes them)."""
        self.comm.Barrier()
        t0 = time.perf_counter()
        for _ in range(repeats):
            for bucket in self._buckets:
                self.comm.Allreduce(MPI.IN_PLACE, bucket.buffer, op=MPI.SUM)
        return (time.perf_counter() - t0) / repeats

    def _check_buckets(self):
        """Rebuild the buckets if the net's learnable params or their diff arrays changed."""
        current = [p for layer in reversed(self.solver.net.layers)
                   for p in layer.params if p.lr_mult != 0]
        if (len(current) != len(self._learnable)
                or any(a is not b for a, b in zip(current, self._learnable))
                or not all(b.owns_diffs() for b in self._buckets)):
            self._build_buckets()

    def _start(self, bucket):
        bucket.started = True
        self._requests.append(self.comm.Iallreduce(MPI.IN_PLACE, bucket.buffer, op=MPI.SUM))
        self.reduced_bytes += bucket.nbytes

    def _on_backward(self, layer):
        """Net backward hook: start a bucket once all its layers are done (last pass of
        iter_size); at the end of backward, start the rest and wait for all."""
        if self._pass != self.solver.iter_size - 1:
            if layer is None:
                self._pass += 1
            return
        if layer is not None:
            bucket = self._bucket_of.get(id(layer))
            if bucket is not None:
                bucket.pending -= 1
                if bucket.pending == 0:
                    self._start(bucket)
                    self.overlapped_buckets += 1
            if self._requests:
                MPI.Request.Testall(self._requests)
            return
        for bucket in self._buckets:
            if not bucket.started:
                self._start(bucket)
        t0 = time.perf_counter()
        MPI.Request.Waitall(self._requests)
        self.comm_wait_seconds += time.perf_counter() - t0
        self._reset_pass()
        self._check_losses_reduced()

    def _reset_pass(self):
        self._requests = []
        self._pass = 0
        for bucket in self._buckets:
            bucket.pending = len(bucket.layers)
            bucket.started = False

    def _check_losses_reduced(self):
        for layer in self.solver.net.layers:
            if layer.is_loss and layer.loss_weight != 0 and id(layer) not in self._reduced:
                fail(self, f"loss layer '{layer.name}' ({layer.type_name}) does not sum its "
                           f"loss and normaliser over the ranks (Layer._reduce_stats in its "
                           f"forward), so its gradient cannot be combined across ranks",
                     StateError)
        self._reduced.clear()

    # ------------------------------------------------------------------ training
    def step(self, **inputs):
        """One iteration of the wrapped solver over the global batch; returns the whole
        batch's loss (the same on every rank)."""
        if self._requests:      # left by a backward that raised: finish them everywhere
            MPI.Request.Waitall(self._requests)
        self._check_buckets()
        self._reset_pass()
        self._reduced.clear()
        loss = self.solver.step(**inputs)
        if self.debug:
            self.check_replicas()
        return loss

    def check_replicas(self):
        """Raise StateError unless every rank holds the same bits in every param, solver
        history array and synchronised BatchNorm average."""
        arrays = self._replicated_arrays()
        local = np.array([zlib.crc32(np.ascontiguousarray(a).view(np.uint8)) for _, a in arrays],
                         dtype=np.int64)
        every = np.empty((self.size, len(arrays)), np.int64)
        self.comm.Allgather(local, every)
        differ = np.nonzero((every != every[0]).any(axis=0))[0]
        if differ.size:
            key = arrays[int(differ[0])][0]
            ranks = [r for r in range(self.size) if every[r, differ[0]] != every[0, differ[0]]]
            fail(self, f"replicas differ after iteration {self.solver.iter}: '{key}' on "
                       f"rank(s) {ranks} is not rank 0's ({differ.size} array(s) differ)",
                 StateError)

    def _replicated_arrays(self):
        from convnet.layers import BatchNorm
        net = self.solver.net
        arrays = [(key, p.data) for key, p in net.named_params()]
        keys = [key for key, p in net.named_params()]
        for key, slots in zip(keys, self.solver.history_arrays()):
            arrays.extend((f"history/{s}/{key}", h) for s, h in enumerate(slots))
        for layer in net.layers:
            if isinstance(layer, BatchNorm) and layer.sync:
                arrays.extend((f"{layer.name}/buffer:{k}", v) for k, v in layer.buffers.items())
        return arrays

    # ------------------------------------------------------------------ files
    def snapshot(self, path):
        """Rank 0 writes the solver's snapshot (a plain one: it resumes on any number of
        ranks, or without this module); the other ranks wait until it is written, so a job
        that ends right after (Ctrl-C) cannot cut the write short."""
        if self.rank == 0:
            self.solver.snapshot(path)
        self.comm.Barrier()

    def restore(self, path):
        """Every rank reads the snapshot at ``path``; rank 0's state is then broadcast.
        Returns self."""
        self.solver.restore(path)
        self.broadcast_state()
        return self

    def save(self, path):
        """Rank 0 writes the net's weights (Net.save)."""
        if self.rank == 0:
            self.solver.net.save(path)

