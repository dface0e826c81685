"""Loss kernels: softmax cross-entropy (SoftmaxWithLoss) and squared error (EuclideanLoss).

Softmax loss. Scores are viewed as (N, C, S) with S = H*W: the class axis C is the slow one,
so a pixel's C scores lie S elements apart. The work unit is a block of B consecutive pixels
of one image (B = BLOCK, fewer for large C). Forward reads the block's C rows once into a
contiguous per-thread buffer while taking the per-pixel max, exponentiates there summing
per pixel, adds the block's loss, and writes prob = exp / sum, or (given ``inv_sum``, as the
layer does) exp straight into prob and 1 / sum per pixel: one read of the scores and one
write of the probabilities, which backward reuses (one pass, prob * weight minus weight at
the label, the 1 / sum folded into the per-pixel weight). The log-probability is (x_label - max) - log(sum exp(x - max)): no exp
overflows at any logit and no log of an underflowed probability (Caffe takes
log(max(p, FLT_MIN)), which caps a pixel's loss at 87.3).

EuclideanLoss. Chunks of CHUNK elements of the flattened bottoms. euclidean_loss_sum only
sums the squares of a - b, and euclidean_loss_grad writes +/- alpha * (a - b) in one pass
(the layer keeps a and b, so nothing is stored between the passes).

Determinism: each work unit (pixel block, chunk) sums into its own slot of a partial array,
and the slots are added in order after the parallel loop, so loss and gradients are
bit-identical at any thread count.

Measured (AMD EPYC with AVX-512, -march=native; float32, 8x21x128x128, 5% of labels
ignored; ``scripts/bench.py --threads 1``, alternating with torch 2.13 F.cross_entropy /
((a - b) ** 2).sum() and autograd, median of 10, ms; "before" is this module as committed in
77c11b6, rebuilt the same way; 2-thread timings on the busy VM: see pooling.pyx):

    case                     before ms  ratio    after ms  ratio    torch ms
    SoftmaxWithLoss   fwd       2.4      1.0x       1.7     1.5x       2.4-2.6
                      bwd       1.1      2.1x       0.7     3.6x       2.4-2.6
    EuclideanLoss     fwd       1.1      1.3x       0.6     2.5x       1.4-1.5
                      bwd       0.97     2.3x       1.1     1.9x       2.1-2.3

The softmax forward is compute-bound (0.13 ms per image with the data in cache, ~1 cycle
per score). What paid: the per-pixel log as a vectorised Cephes logf instead of a libm call
(4.5 -> 2.0 ms at the time); writing exp(x - max) straight into ``prob`` and keeping 1 / sum
per pixel for backward instead of a normalising pass (1.3 -> 1.0 ms, kernel); prefetching
the next block's C rows (C streams are more than the hardware prefetcher follows) in both
passes (backward 1.1 -> 0.7 ms). EuclideanLoss forward no longer stores a - b (the layer
keeps its bottoms, and backward recomputes it): it only reads, with the squares summed in 16
double lanes that GCC vectorises (1.0 -> 0.5 ms); backward reads a and b instead of diff,
a little slower, but the pair is faster. Tried and dropped: 512-bit vectors for the exp loop
(no change: Zen 4 splits them), non-temporal stores for the Euclidean gradients (5%, noise).
A first version, exp written straight into prob with libm's expf (a call per element), took
36 ms: its class rows, 64 KiB apart, also thrashed the cache sets on every re-read, hence the
per-block contiguous copy.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp, floor, log
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport free, malloc

from _openmp cimport omp_get_max_threads, omp_get_thread_num


# Work too small to split runs on one thread: waking the other threads (passive waiting, see
# convnet/__init__.py) costs more than it saves. Measured with micro-benchmarks of
# the layers on the 2-core machine under load (README "Threads on a busy machine"): below
# ~64k elements 2 threads took 1.3-3x (pooling, loss) and up to 8x (interp) the 1-thread time.
cdef enum:
    GRAIN = 65536         # elements (planes x pixels) below which a kernel uses one thread


cdef inline int threads_for(Py_ssize_t work) noexcept nogil:
    """The OpenMP team size for a kernel that touches ``work`` elements."""
    return 1 if work < GRAIN else omp_get_max_threads()

cdef extern from *:
    """
    /* exp(x) for the max-subtracted logits x <= 0, in float, written so that GCC vectorizes
       the loop around it (libm's expf is one call per element, the forward's bottleneck):
       Cephes' range reduction and polynomial (at most 1.35 ulp on [-87, 0], measured
       against double exp), 0 below -87 (exp(-87.3) is the smallest normal float), NaN
       stays NaN. */
    #include <string.h>
    static inline float convnet_expf_nonpos(float x) {
        float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;   /* round(x/ln2) */
        float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
        float z = r * r;
        float p = ((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r
                   + 4.1665795894e-2f) * r + 1.6666665459e-1f) * r + 5.0000001201e-1f;
        int bits = ((int) n + 127) << 23;                                   /* 2^n */
        int ybits;
        float scale, y;
        memcpy(&scale, &bits, 4);
        y = (p * z + r + 1.0f) * scale;
        /* a mask, not a branch: GCC if-converts no float select without -fno-trapping-math */
        memcpy(&ybits, &y, 4);
        ybits &= -(int) !(x < -87.0f);
        memcpy(&y, &ybits, 4);
        return y;
    }
    """
    float convnet_expf_nonpos(float x) noexcept nogil

cdef extern from *:
    """
    /* log(x) for a softmax denominator x in [1, C] (its largest term is exp(0) = 1), in
       float and branch-free so that GCC vectorizes the loop around it (a libm call per pixel
       cost the forward a third of its time): Cephes' logf reduction and polynomial (about
       1 ulp), NaN stays NaN. */
    #include <string.h>
    static inline float convnet_logf_ge1(float x) {
        int bits, big;
        float m, f, z, y, e;
        memcpy(&bits, &x, 4);
        e = (float) ((bits >> 23) - 127);
        bits = (bits & 0x007fffff) | 0x3f800000;                  /* mantissa in [1, 2) */
        memcpy(&m, &bits, 4);
        big = m > 1.41421356f;                          /* to [sqrt(1/2), sqrt(2)) */
        m = m * (1.0f - 0.5f * (float) big);    /* exact; a float select would not vectorize */
        e = e + (float) big;
        f = m - 1.0f;
        z = f * f;
        y = ((((((((7.0376836292e-2f * f - 1.1514610310e-1f) * f + 1.1676998740e-1f) * f
                  - 1.2420140846e-1f) * f + 1.4249322787e-1f) * f - 1.6668057665e-1f) * f
               + 2.0000714765e-1f) * f - 2.4999993993e-1f) * f + 3.3333331174e-1f) * f * z;
        y = y - 2.12194440e-4f * e - 0.5f * z;
        return (f + y + 0.693359375f * e) + (x - x);              /* x - x: NaN for NaN */
    }
    """
    float convnet_logf_ge1(float x) noexcept nogil

cdef extern from *:
    """
    /* sum((a - b)^2) in double over 16 independent lanes, added in a fixed order: the
       lanes let GCC vectorize the loop (one accumulator is a serial chain, and a reduction
       is not reassociated without -ffast-math) and keep the result independent of the
       thread count. */
    #define CONVNET_SQDIFF(NAME, T)                                                 \
    static double NAME(const T *a, const T *b, Py_ssize_t n) {                      \
        double acc[16] = {0};                                                       \
        double total = 0.0;                                                         \
        Py_ssize_t i, j, end = n - n % 16;                                          \
        for (i = 0; i < end; i += 16)                                               \
            for (j = 0; j < 16; j++) {                                              \
                double d = (double) (T) (a[i + j] - b[i + j]);                      \
                acc[j] += d * d;                                                    \
            }                                                                       \
        for (i = end; i < n; i++) {                                                 \
            double d = (double) (T) (a[i] - b[i]);                                  \
            acc[i - end] += d * d;                                                  \
        }                                                                           \
        for (j = 0; j < 16; j += 2) total += acc[j] + acc[j + 1];                   \
        return total;                                                               \
    }
    CONVNET_SQDIFF(convnet_sqdiff_sum_f, float)
    CONVNET_SQDIFF(convnet_sqdiff_sum_d, double)
    """
    double convnet_sqdiff_sum_f(const float *a, const float *b, Py_ssize_t n) noexcept nogil
    double convnet_sqdiff_sum_d(const double *a, const double *b, Py_ssize_t n) noexcept nogil

cdef extern from *:
    void __builtin_prefetch(const void *addr) noexcept nogil

ctypedef fused label_t:
    int32_t
    int64_t
    float
    double

cdef enum:
    BLOCK = 256           # pixels per softmax work unit
    BLOCK_ELEMS = 8192    # most scores per softmax work unit (its per-thread copy)
    CHUNK = 16384         # elements per EuclideanLoss work unit
    IGNORED = -1
    BAD = -2


cdef inline Py_ssize_t class_of(label_t v,
                                Py_ssize_t C,
                                bint has_ignore,
                                int64_t ignore_label) noexcept nogil:
    """The class index of label v, IGNORED, or BAD (not an integer, or outside [0, C))."""
    if label_t is float or label_t is double:
        if v != floor(v):            # also NaN
            return BAD
        if has_ignore and <double> v == <double> ignore_label:
            return IGNORED
        if v >= 0 and v < C:
            return <Py_ssize_t> v
        return BAD
    else:
        if has_ignore and v == ignore_label:
            return IGNORED
        if v >= 0 and v < C:
            return <Py_ssize_t> v
        return BAD


cdef inline Py_ssize_t block_length(Py_ssize_t C) noexcept nogil:
    """Pixels per work unit: BLOCK, fewer when C is large, so the C x block copy of the
    scores stays within BLOCK_ELEMS (L1/L2-sized)."""
    return max(<Py_ssize_t> 1, min(<Py_ssize_t> BLOCK, BLOCK_ELEMS // C))


def softmax_loss_forward(const floating[:, :, ::1] scores,    # IN  (N, C, S)
                         const label_t[:, ::1] labels,         # IN  (N, S) class ids
                         bint has_ignore,                      # IN
                         int64_t ignore_label,                 # IN  (used when has_ignore)
                         floating[:, :, ::1] prob,             # OUT (N, C, S) softmax
                         int32_t[:, ::1] label_index,          # OUT (N, S) class or -1
                         floating[:, ::1] inv_sum=None):       # OUT (N, S) or None
    """Softmax over C per pixel and the summed cross-entropy of the valid pixels.

    With ``inv_sum``, ``prob`` receives exp(x - max) unnormalised and inv_sum the
    reciprocal of its sum over C per pixel (prob * inv_sum is the softmax): a pass fewer,
    and softmax_loss_backward folds the scale into its per-pixel weight for free.

    Returns (loss_sum, valid_count, bad): loss_sum = -sum log prob[n, label, s] over the
    pixels whose label is not ignore_label (a float), valid_count their number, bad the flat
    index n*S + s of the first label that is neither an integer in [0, C) nor ignore_label,
    or -1. A bad label is treated as ignored, so nothing is read out of bounds; the caller
    raises. C >= 1.
    """
    cdef Py_ssize_t N = scores.shape[0]
    cdef Py_ssize_t C = scores.shape[1]
    cdef Py_ssize_t S = scores.shape[2]
    cdef Py_ssize_t B = block_length(C)
    cdef Py_ssize_t nblocks = (S + B - 1) // B
    cdef Py_ssize_t units = N * nblocks
    cdef Py_ssize_t per_thread = (C + 3) * B
    cdef int nthreads = threads_for(N * C * S)
    cdef Py_ssize_t u, n, s0, length, s, c, k, cnt, first_bad
    cdef floating v, e
    cdef floating* buf
    cdef floating* mx
    cdef floating* sm
    cdef floating* lsm
    cdef double acc, loss_sum = 0.0
    cdef Py_ssize_t count = 0, bad = -1
    cdef floating* work
    cdef double* unit_loss
    cdef Py_ssize_t* unit_count
    cdef Py_ssize_t* unit_bad
    cdef bint normalize = inv_sum is None
    cdef Py_ssize_t line = 64 // sizeof(floating)
    if units == 0:
        return 0.0, 0, -1
    work = <floating*> malloc(nthreads * per_thread * sizeof(floating))
    unit_loss = <double*> malloc(units * sizeof(double))
    unit_count = <Py_ssize_t*> malloc(units * sizeof(Py_ssize_t))
    unit_bad = <Py_ssize_t*> malloc(units * sizeof(Py_ssize_t))
    try:
        if not (work and unit_loss and unit_count and unit_bad):
            raise MemoryError()
        with nogil:
            for u in prange(units, schedule='static', num_threads=nthreads):
                # the block is copied to a contiguous buffer: its C rows lie S elements
                # apart in memory (a power of two for most images), and re-reading them
                # from there thrashes the cache sets
                buf = work + omp_get_thread_num() * per_thread
                mx = buf + C * B
                sm = mx + B
                lsm = sm + B
                n = u // nblocks
                s0 = (u - n * nblocks) * B
                length = min(B, S - s0)
                for s in range(length):
                    mx[s] = scores[n, 0, s0 + s]
                    sm[s] = 0
                for c in range(C):
                    # ask for this row of the next block now, so that its memory latency
                    # overlaps this block's exponentials (the C rows are C streams,
                    # more than the hardware prefetcher follows)
                    k = s0 + B
                    while k < min(s0 + 2 * B, S):
                        __builtin_prefetch(&scores[n, c, k])
                        k = k + line
                    for s in range(length):
                        v = scores[n, c, s0 + s]
                        buf[c * B + s] = v
                        mx[s] = v if v > mx[s] else mx[s]     # a select: vectorizes
                for c in range(C):
                    if normalize:
                        for s in range(length):
                            if floating is float:
                                e = convnet_expf_nonpos(buf[c * B + s] - mx[s])
                            else:
                                e = exp(buf[c * B + s] - mx[s])
                            buf[c * B + s] = e
                            sm[s] = sm[s] + e
                    else:
                        for s in range(length):
                            if floating is float:
                                e = convnet_expf_nonpos(buf[c * B + s] - mx[s])
                            else:
                                e = exp(buf[c * B + s] - mx[s])
                            prob[n, c, s0 + s] = e
                            sm[s] = sm[s] + e
                # the logs apart from the label loop, which does not vectorize
                for s in range(length):
                    if floating is float:
                        lsm[s] = convnet_logf_ge1(sm[s])
                    else:
                        lsm[s] = log(sm[s])
                    sm[s] = 1 / sm[s]
                acc = 0.0
                cnt = 0
                first_bad = -1
                for s in range(length):
                    k = class_of(labels[n, s0 + s], C, has_ignore, ignore_label)
                    if k >= 0:
                        acc = acc + (<double> lsm[s]
                                     - (<double> scores[n, k, s0 + s] - <double> mx[s]))
                        cnt = cnt + 1
                    elif k == BAD:
                        if first_bad < 0:
                            first_bad = n * S + s0 + s
                        k = IGNORED
                    label_index[n, s0 + s] = <int32_t> k
                if normalize:
                    for c in range(C):
                        for s in range(length):
                            prob[n, c, s0 + s] = buf[c * B + s] * sm[s]
                else:
                    for s in range(length):
                        inv_sum[n, s0 + s] = sm[s]
                unit_loss[u] = acc
                unit_count[u] = cnt
                unit_bad[u] = first_bad
            for u in range(units):
                loss_sum = loss_sum + unit_loss[u]
                count = count + unit_count[u]
                if bad < 0:
                    bad = unit_bad[u]
    finally:
        free(work)
        free(unit_loss)
        free(unit_count)
        free(unit_bad)
    return loss_sum, count, bad


def softmax_loss_backward(const floating[:, :, ::1] prob,        # IN  (N, C, S)
                          const int32_t[:, ::1] label_index,      # IN  (N, S) class or -1
                          floating weight,                        # IN
                          floating[:, :, ::1] grad,               # OUT (N, C, S)
                          const floating[:, ::1] inv_sum=None):   # IN  (N, S) or None
    """grad = weight * (prob - onehot(label)) at pixels with label_index >= 0, 0 at the
    others. label_index holds values in [-1, C) (written by softmax_loss_forward). With
    ``inv_sum`` (from softmax_loss_forward), prob holds the unnormalised exponentials and
    the softmax is prob * inv_sum."""
    cdef Py_ssize_t N = prob.shape[0]
    cdef Py_ssize_t C = prob.shape[1]
    cdef Py_ssize_t S = prob.shape[2]
    cdef Py_ssize_t B = block_length(C)
    cdef Py_ssize_t nblocks = (S + B - 1) // B
    cdef Py_ssize_t units = N * nblocks
    cdef int nthreads = threads_for(N * C * S)
    cdef Py_ssize_t u, n, s0, length, s, c, k
    cdef floating* w
    cdef floating* work
    cdef bint scaled = inv_sum is not None
    cdef Py_ssize_t line = 64 // sizeof(floating)
    if units == 0:
        return
    work = <floating*> malloc(nthreads * B * sizeof(floating))
    if not work:
        raise MemoryError()
    try:
        with nogil:
            for u in prange(units, schedule='static', num_threads=nthreads):
                w = work + omp_get_thread_num() * B
                n = u // nblocks
                s0 = (u - n * nblocks) * B
                length = min(B, S - s0)
                for s in range(length):
                    w[s] = weight if label_index[n, s0 + s] >= 0 else 0
                if scaled:
                    for s in range(length):
                        w[s] = w[s] * inv_sum[n, s0 + s]
                # one streaming pass per class row, the one-hot folded in, with the
                # next block's row prefetched as in the forward
                for c in range(C):
                    k = s0 + B
                    while k < min(s0 + 2 * B, S):
                        __builtin_prefetch(&prob[n, c, k])
                        k = k + line
                    for s in range(length):
                        grad[n, c, s0 + s] = prob[n, c, s0 + s] * w[s] - (
                            weight if label_index[n, s0 + s] == c else 0)
    finally:
        free(work)


def euclidean_loss_sum(const floating[::1] a,            # IN  (M,)
                       const floating[::1] b):           # IN  (M,)
    """sum((a - b) ** 2) as a float (accumulated in double, fixed order): the forward
    without a stored difference, for a layer that keeps its bottoms for backward."""
    cdef Py_ssize_t M = a.shape[0]
    cdef Py_ssize_t nchunks = (M + CHUNK - 1) // CHUNK
    cdef Py_ssize_t ch, start, stop
    cdef double total = 0.0
    cdef double* partial
    if nchunks == 0:
        return 0.0
    partial = <double*> malloc(nchunks * sizeof(double))
    if not partial:
        raise MemoryError()
    try:
        with nogil:
            for ch in prange(nchunks, schedule='static', num_threads=threads_for(M)):
                start = ch * CHUNK
                stop = min(start + <Py_ssize_t> CHUNK, M)
                if floating is float:
                    partial[ch] = convnet_sqdiff_sum_f(&a[start], &b[start], stop - start)
                else:
                    partial[ch] = convnet_sqdiff_sum_d(&a[start], &b[start], stop - start)
            for ch in range(nchunks):
                total = total + partial[ch]
    finally:
        free(partial)
    return total


def euclidean_loss_grad(const floating[::1] a,           # IN  (M,)
                        const floating[::1] b,           # IN  (M,)
                        floating alpha,                  # IN
                        floating[::1] grad_a,            # OUT (M,) alpha * (a - b), or None
                        floating[::1] grad_b):           # OUT (M,) -alpha * (a - b), or None
    """grad_a = alpha * (a - b) and grad_b = -alpha * (a - b), each skipped when None."""
    cdef Py_ssize_t M = a.shape[0]
    cdef Py_ssize_t nchunks = (M + CHUNK - 1) // CHUNK
    cdef bint want_a = grad_a is not None
    cdef bint want_b = grad_b is not None
    cdef Py_ssize_t ch, i, start, stop
    cdef floating g
    with nogil:
        for ch in prange(nchunks, schedule='static', num_threads=threads_for(M)):
            start = ch * CHUNK
            stop = min(start + <Py_ssize_t> CHUNK, M)
            if want_a and want_b:
                for i in range(start, stop):
                    g = alpha * (a[i] - b[i])
                    grad_a[i] = g
                    grad_b[i] = -g
            elif want_a:
                for i in range(start, stop):
                    grad_a[i] = alpha * (a[i] - b[i])
            elif want_b:
                for i in range(start, stop):
                    grad_b[i] = -(alpha * (a[i] - b[i]))


