"""The only module that touches ctypes: loads libconvnet_cuda.so and declares its C API.

``FUNCTIONS`` is one table of (name, restype, argtypes), each entry beside its C prototype, in
the order of ``include/convnet_cuda.h``. Device pointers travel as ``c_void_p`` (Python ints),
host outputs as ctypes byrefs. :func:`call` runs an entry point and raises :class:`CudaError`
with the status name and the library's last error when it fails.
"""

import ctypes
import os
import site
import sys
import threading
from ctypes import POINTER, c_char_p, c_double, c_float, c_int, c_int32, c_int64, c_uint64, \
    c_void_p

from convnet.errors import ConvnetError

#: must equal CONVNET_CUDA_ABI_VERSION of the loaded library
ABI_VERSION = 1

# convnet_status values (include/convnet_cuda.h)
OK = 0
ERR_CUDA = 1
ERR_INVALID_ARGUMENT = 2
ERR_BAD_INDEX = 3
ERR_CUBLAS_MISSING = 4
ERR_CUBLAS = 5
ERR_OUT_OF_MEMORY = 6

# convnet_dtype values
INT32, INT64, FLOAT32, FLOAT64 = 0, 1, 2, 3

LIBRARY_NAME = "libconvnet_cuda.so"
#: the same cuda/*.cu sources built for the host by the C++ compiler (cuda/host/): every
#: kernel runs on the CPU, one thread per block; CI runs the CUDA tests against it
HOST_LIBRARY_NAME = "libconvnet_cuda_host.so"
#: CONVNET_CUDA_HOST=1 selects the host build (as use_host_build() does)
HOST_ENV = "CONVNET_CUDA_HOST"


class CudaError(ConvnetError, RuntimeError):
    """A CUDA call failed; the message has the status name and CUDA's (or cuBLAS's) message.
    ``status`` holds the numeric convnet_status."""

    def __init__(self, message, status=ERR_CUDA):
        super().__init__(message)
        self.status = status


status_t = c_int
ptr = c_void_p
i64 = c_int64
i32 = c_int32
f32 = c_float
stream = c_void_p
out_i64 = POINTER(c_int64)
out_f64 = POINTER(c_double)

_POOL = [ptr, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, stream]
_CONV_GEOMETRY = [i64] * 16 + [stream]

FUNCTIONS = [
    # ---------------------------------------------------------------- runtime
    # int convnet_abi_version(void);
    ("convnet_abi_version", c_int, []),
    # const char* convnet_status_string(convnet_status status);
    ("convnet_status_string", c_char_p, [status_t]),
    # const char* convnet_last_error(void);
    ("convnet_last_error", c_char_p, []),
    # convnet_status convnet_device_count(int* count);
    ("convnet_device_count", status_t, [POINTER(c_int)]),
    # convnet_status convnet_malloc(void** ptr, int64_t nbytes);
    ("convnet_malloc", status_t, [POINTER(c_void_p), i64]),
    # convnet_status convnet_free(void* ptr);
    ("convnet_free", status_t, [ptr]),
    # convnet_status convnet_memcpy_htod(void* dst, const void* src, int64_t nbytes, void* stream);
    ("convnet_memcpy_htod", status_t, [ptr, ptr, i64, stream]),
    # convnet_status convnet_memcpy_dtoh(void* dst, const void* src, int64_t nbytes, void* stream);
    ("convnet_memcpy_dtoh", status_t, [ptr, ptr, i64, stream]),
    # convnet_status convnet_memcpy_dtod(void* dst, const void* src, int64_t nbytes, void* stream);
    ("convnet_memcpy_dtod", status_t, [ptr, ptr, i64, stream]),
    # convnet_status convnet_memset(void* dst, int value, int64_t nbytes, void* stream);
    ("convnet_memset", status_t, [ptr, c_int, i64, stream]),
    # convnet_status convnet_fill(void* dst, int64_t count, int64_t itemsize, const void* value,
    #                             void* stream);
    ("convnet_fill", status_t, [ptr, i64, i64, ptr, stream]),
    # convnet_status convnet_synchronize(void* stream);
    ("convnet_synchronize", status_t, [stream]),
    # convnet_status convnet_set_cublas_search_path(const char* paths);
    ("convnet_set_cublas_search_path", status_t, [c_char_p]),
    # convnet_status convnet_cublas_load(void);
    ("convnet_cublas_load", status_t, []),
    # convnet_status convnet_host_waits(int64_t* count);
    ("convnet_host_waits", status_t, [out_i64]),
    # int convnet_is_host_build(void);
    ("convnet_is_host_build", c_int, []),
    # convnet_status convnet_memory_in_use(int64_t* bytes);
    ("convnet_memory_in_use", status_t, [out_i64]),
    # ---------------------------------------------------------------- blas
    # convnet_status convnet_gemm(int32_t trans_a, int32_t trans_b, int64_t m, int64_t n,
    #     int64_t k, float alpha, const float* a, int64_t lda, const float* b, int64_t ldb,
    #     float beta, float* c, int64_t ldc, void* stream);
    ("convnet_gemm", status_t, [i32, i32, i64, i64, i64, f32, ptr, i64, ptr, i64, f32, ptr, i64,
                                stream]),
    # convnet_status convnet_axpby(int64_t n, float alpha, const float* x, float beta, float* y,
    #                              void* stream);
    ("convnet_axpby", status_t, [i64, f32, ptr, f32, ptr, stream]),
    # convnet_status convnet_scale(int64_t n, float alpha, float* x, void* stream);
    ("convnet_scale", status_t, [i64, f32, ptr, stream]),
    # convnet_status convnet_sub(int64_t n, const float* a, const float* b, float* out,
    #                            void* stream);
    ("convnet_sub", status_t, [i64, ptr, ptr, ptr, stream]),
    # convnet_status convnet_mul(int64_t n, const float* a, const float* b, float* out,
    #                            void* stream);
    ("convnet_mul", status_t, [i64, ptr, ptr, ptr, stream]),
    # convnet_status convnet_dot(int64_t n, const float* a, const float* b, double* result,
    #                            void* stream);
    ("convnet_dot", status_t, [i64, ptr, ptr, out_f64, stream]),
    # ---------------------------------------------------------------- conv
    # convnet_status convnet_im2col(const float* im, int64_t channels, int64_t height,
    #     int64_t width, int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w,
    #     int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w, int64_t out_h,
    #     int64_t out_w, float* col, void* stream);
    ("convnet_im2col", status_t, [ptr] + [i64] * 13 + [ptr, stream]),
    # convnet_status convnet_col2im(const float* col, <the same 13 sizes>, float* im,
    #                               void* stream);
    ("convnet_col2im", status_t, [ptr] + [i64] * 13 + [ptr, stream]),
    # convnet_status convnet_conv_forward(const float* x, const float* weight,
    #     const float* bias, float* y, float* col, int64_t batch, int64_t channels,
    #     int64_t height, int64_t width, int64_t num_output, int64_t out_h, int64_t out_w,
    #     int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h,
    #     int64_t pad_w, int64_t dilation_h, int64_t dilation_w, int64_t group, void* stream);
    ("convnet_conv_forward", status_t, [ptr] * 5 + _CONV_GEOMETRY),
    # convnet_status convnet_conv_backward_data(const float* y, const float* weight,
    #     const float* bias, float* x, float* col, <the same geometry>, void* stream);
    ("convnet_conv_backward_data", status_t, [ptr] * 5 + _CONV_GEOMETRY),
    # convnet_status convnet_conv_backward_weight(const float* x, const float* y,
    #     float* weight, float* col, <the same geometry>, void* stream);
    ("convnet_conv_backward_weight", status_t, [ptr] * 4 + _CONV_GEOMETRY),
    # convnet_status convnet_conv_backward_bias(const float* dy, float* dbias, int64_t batch,
    #     int64_t num_output, int64_t spatial, void* stream);
    ("convnet_conv_backward_bias", status_t, [ptr, ptr, i64, i64, i64, stream]),
    # ---------------------------------------------------------------- pooling
    # convnet_status convnet_max_pool_forward(const float* x, float* y, void* argmax,
    #     int32_t argmax_is_int64, float* mask, int64_t planes, int64_t height, int64_t width,
    #     int64_t out_h, int64_t out_w, int64_t kernel_h, int64_t kernel_w, int64_t stride_h,
    #     int64_t stride_w, int64_t pad_h, int64_t pad_w, void* stream);
    ("convnet_max_pool_forward", status_t, [ptr, ptr, ptr, i32] + _POOL),
    # convnet_status convnet_max_pool_backward(const float* dy, const void* argmax,
    #     int32_t argmax_is_int64, float* dx, <planes ... pad_w as forward>, void* stream);
    ("convnet_max_pool_backward", status_t, [ptr, ptr, i32] + _POOL),
    # convnet_status convnet_ave_pool_forward(const float* x, float* y, int64_t planes,
    #     int64_t height, int64_t width, int64_t out_h, int64_t out_w, int64_t kernel_h,
    #     int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    #     void* stream);
    ("convnet_ave_pool_forward", status_t, [ptr] + _POOL),
    # convnet_status convnet_ave_pool_backward(const float* dy, float* dx, <as forward>);
    ("convnet_ave_pool_backward", status_t, [ptr] + _POOL),
    # convnet_status convnet_unpool_forward(const float* x, const void* mask, int32_t mask_type,
    #     float* y, void* index, int32_t index_is_int64, int64_t planes, int64_t in_size,
    #     int64_t out_size, int64_t* bad_position, void* stream);
    ("convnet_unpool_forward", status_t,
     [ptr, ptr, i32, ptr, ptr, i32, i64, i64, i64, out_i64, stream]),
    # convnet_status convnet_unpool_backward(const float* dy, const void* mask,
    #     int32_t mask_type, float* dx, int64_t planes, int64_t in_size, int64_t out_size,
    #     int64_t* bad_position, void* stream);
    ("convnet_unpool_backward", status_t, [ptr, ptr, i32, ptr, i64, i64, i64, out_i64, stream]),
    # ---------------------------------------------------------------- interp
    # convnet_status convnet_interp_bilinear_forward(const float* x, float* y, int64_t planes,
    #     int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w, const int64_t* rows,
    #     const float* row_weights, const int64_t* cols, const float* col_weights,
    #     void* stream);
    ("convnet_interp_bilinear_forward", status_t, [ptr, ptr] + [i64] * 5 + [ptr] * 4 + [stream]),
    # convnet_status convnet_interp_bilinear_backward(const float* dy, float* dx, <as forward>);
    ("convnet_interp_bilinear_backward", status_t,
     [ptr, ptr] + [i64] * 5 + [ptr] * 4 + [stream]),
    # convnet_status convnet_interp_nearest_forward(const void* x, void* y, int64_t itemsize,
    #     int64_t planes, int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w,
    #     const int64_t* rows, const int64_t* cols, void* stream);
    ("convnet_interp_nearest_forward", status_t, [ptr, ptr] + [i64] * 6 + [ptr, ptr, stream]),
    # convnet_status convnet_interp_nearest_backward(const float* dy, float* dx, int64_t planes,
    #     int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w, const int64_t* rows,
    #     const int64_t* cols, void* stream);
    ("convnet_interp_nearest_backward", status_t, [ptr, ptr] + [i64] * 5 + [ptr, ptr, stream]),
    # ---------------------------------------------------------------- loss
    # convnet_status convnet_softmax_loss_forward(const float* scores, const void* labels,
    #     int32_t label_type, int32_t has_ignore, int64_t ignore_label, float* prob,
    #     int32_t* label_index, int64_t batch, int64_t classes, int64_t spatial,
    #     double* loss_sum, int64_t* valid_count, int64_t* bad_position, void* stream);
    ("convnet_softmax_loss_forward", status_t,
     [ptr, ptr, i32, i32, i64, ptr, ptr, i64, i64, i64, out_f64, out_i64, out_i64, stream]),
    # convnet_status convnet_softmax_loss_backward(const float* prob,
    #     const int32_t* label_index, float weight, float* grad, int64_t batch, int64_t classes,
    #     int64_t spatial, void* stream);
    ("convnet_softmax_loss_backward", status_t, [ptr, ptr, f32, ptr, i64, i64, i64, stream]),
    # ---------------------------------------------------------------- activation
    # convnet_status convnet_relu_forward(const float* x, float negative_slope, float* y,
    #                                     int64_t n, void* stream);
    ("convnet_relu_forward", status_t, [ptr, f32, ptr, i64, stream]),
    # convnet_status convnet_relu_backward(const float* dy, const float* x,
    #     float negative_slope, float* dx, int64_t n, void* stream);
    ("convnet_relu_backward", status_t, [ptr, ptr, f32, ptr, i64, stream]),
    # convnet_status convnet_dropout_apply(const float* x, const uint8_t* keep, float scale,
    #                                      float* y, int64_t n, void* stream);
    ("convnet_dropout_apply", status_t, [ptr, ptr, f32, ptr, i64, stream]),
    # convnet_status convnet_dropout_mask(uint64_t seed, uint64_t offset, float ratio,
    #                                     uint8_t* keep, int64_t n, void* stream);
    ("convnet_dropout_mask", status_t, [c_uint64, c_uint64, f32, ptr, i64, stream]),
    # ---------------------------------------------------------------- normalization
    # convnet_status convnet_batch_norm_stats(const float* x, float* mean, float* var,
    #     int64_t batch, int64_t channels, int64_t spatial, void* stream);
    ("convnet_batch_norm_stats", status_t, [ptr, ptr, ptr, i64, i64, i64, stream]),
    # convnet_status convnet_batch_norm_update(float* running_mean, float* running_var,
    #     const float* mean, const float* var, float fraction, float var_correction,
    #     int64_t channels, void* stream);
    ("convnet_batch_norm_update", status_t, [ptr, ptr, ptr, ptr, f32, f32, i64, stream]),
    # convnet_status convnet_batch_norm_forward(const float* x, const float* mean,
    #     const float* var, float eps, const float* scale, const float* bias, float* y,
    #     int64_t batch, int64_t channels, int64_t spatial, void* stream);
    ("convnet_batch_norm_forward", status_t,
     [ptr, ptr, ptr, f32, ptr, ptr, ptr, i64, i64, i64, stream]),
    # convnet_status convnet_batch_norm_backward(const float* dy, const float* x,
    #     const float* mean, const float* var, float eps, const float* scale, float* dx,
    #     float* dscale, float* dbias, int32_t batch_stats, int64_t batch, int64_t channels,
    #     int64_t spatial, void* stream);
    ("convnet_batch_norm_backward", status_t,
     [ptr, ptr, ptr, ptr, f32, ptr, ptr, ptr, ptr, i32, i64, i64, i64, stream]),
    # ---------------------------------------------------------------- structure
    # convnet_status convnet_copy_strided(void* dst, const void* src, int64_t itemsize,
    #     int32_t ndim, const int64_t* shape, const int64_t* dst_strides,
    #     const int64_t* src_strides, void* stream);
    ("convnet_copy_strided", status_t,
     [ptr, ptr, i64, i32, POINTER(c_int64), POINTER(c_int64), POINTER(c_int64), stream]),
    # convnet_status convnet_eltwise_max_step(const float* x, int32_t index, float* y,
    #     int32_t* argmax, int64_t n, void* stream);
    ("convnet_eltwise_max_step", status_t, [ptr, i32, ptr, ptr, i64, stream]),
    # convnet_status convnet_eltwise_max_backward(const float* dy, const int32_t* argmax,
    #     int32_t index, float* dx, int64_t n, void* stream);
    ("convnet_eltwise_max_backward", status_t, [ptr, ptr, i32, ptr, i64, stream]),
    # ---------------------------------------------------------------- solvers
    # convnet_status convnet_sgd_update(float* data, const float* diff, float* history,
    #     float local_rate, float momentum, float local_decay, int64_t n, void* stream);
    ("convnet_sgd_update", status_t, [ptr, ptr, ptr, f32, f32, f32, i64, stream]),
    # convnet_status convnet_adam_update(float* data, const float* diff, float* m, float* v,
    #     float step, float beta1, float beta2, float delta, float local_decay, int64_t n,
    #     void* stream);
    ("convnet_adam_update", status_t, [ptr, ptr, ptr, ptr, f32, f32, f32, f32, f32, i64,
                                       stream]),
    # convnet_status convnet_flag_nonfinite(const float* x, int64_t n, int32_t* flag,
    #                                       void* stream);
    ("convnet_flag_nonfinite", status_t, [ptr, i64, ptr, stream]),

    # ---------------------------------------------------------------- sequence layers
    # convnet_status convnet_bias_add(float* y, const float* bias, int64_t rows, int64_t cols,
    #                                 void* stream);
    ("convnet_bias_add", status_t, [ptr, ptr, i64, i64, stream]),
    # convnet_status convnet_bias_grad(const float* dy, float* dbias, int64_t rows,
    #                                  int64_t cols, void* stream);
    ("convnet_bias_grad", status_t, [ptr, ptr, i64, i64, stream]),
    # convnet_status convnet_embed_forward(const void* index, int32_t index_type,
    #     const float* weight, const float* bias, float* y, int64_t n, int64_t rows,
    #     int64_t dim, int64_t* bad_position, void* stream);
    ("convnet_embed_forward", status_t, [ptr, i32, ptr, ptr, ptr, i64, i64, i64, out_i64,
                                         stream]),
    # convnet_status convnet_embed_backward(const void* index, int32_t index_type,
    #     const float* dy, float* dweight, int64_t n, int64_t rows, int64_t dim, void* stream);
    ("convnet_embed_backward", status_t, [ptr, i32, ptr, ptr, i64, i64, i64, stream]),
    # convnet_status convnet_sigmoid_forward(const float* x, float* y, int64_t n, void* stream);
    ("convnet_sigmoid_forward", status_t, [ptr, ptr, i64, stream]),
    # convnet_status convnet_sigmoid_backward(const float* dy, const float* y, float* dx,
    #                                         int64_t n, void* stream);
    ("convnet_sigmoid_backward", status_t, [ptr, ptr, ptr, i64, stream]),
    # convnet_status convnet_tanh_forward(const float* x, float* y, int64_t n, void* stream);
    ("convnet_tanh_forward", status_t, [ptr, ptr, i64, stream]),
    # convnet_status convnet_tanh_backward(const float* dy, const float* y, float* dx,
    #                                      int64_t n, void* stream);
    ("convnet_tanh_backward", status_t, [ptr, ptr, ptr, i64, stream]),
    # convnet_status convnet_softmax_forward(const float* x, float* y, int64_t outer,
    #     int64_t channels, int64_t inner, void* stream);
    ("convnet_softmax_forward", status_t, [ptr, ptr, i64, i64, i64, stream]),
    # convnet_status convnet_softmax_backward(const float* dy, const float* y, float* dx,
    #     int64_t outer, int64_t channels, int64_t inner, void* stream);
    ("convnet_softmax_backward", status_t, [ptr, ptr, ptr, i64, i64, i64, stream]),
    # convnet_status convnet_scale_forward(const float* x, const float* scale,
    #     const float* bias, float* y, int64_t outer, int64_t size, int64_t inner, void* stream);
    ("convnet_scale_forward", status_t, [ptr, ptr, ptr, ptr, i64, i64, i64, stream]),
    # convnet_status convnet_scale_backward(const float* dy, const float* x, const float* scale,
    #     float* dx, float* dscale, float* dbias, int64_t outer, int64_t size, int64_t inner,
    #     void* stream);
    ("convnet_scale_backward", status_t, [ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, stream]),
    # convnet_status convnet_lstm_unit_forward(const float* c_prev, const float* gates,
    #     const float* cont, float forget_bias, float* act, float* tanh_c, float* c, float* h,
    #     int64_t rows, int64_t dim, void* stream);
    ("convnet_lstm_unit_forward", status_t, [ptr, ptr, ptr, f32, ptr, ptr, ptr, ptr, i64, i64,
                                             stream]),
    # convnet_status convnet_lstm_unit_backward(const float* c_prev, const float* cont,
    #     const float* act, const float* tanh_c, const float* dc, const float* dh,
    #     float* dc_prev, float* dgates, int64_t rows, int64_t dim, void* stream);
    ("convnet_lstm_unit_backward", status_t, [ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i64, i64,
                                              stream]),
]

_lock = threading.RLock()
_lib = None
_load_error = None
_use_host = None   # None: follow $CONVNET_CUDA_HOST


def host_build_selected():
    """True when the host build (libconvnet_cuda_host.so) is the library to load."""
    if _use_host is not None:
        return _use_host
    return os.environ.get(HOST_ENV, "0") not in ("", "0")


def select_host_build(enabled):
    """Load the host build (True), the GPU build (False) or follow $CONVNET_CUDA_HOST (None)
    from the next call on. Arrays made by the other library must not be used afterwards."""
    global _use_host, _lib, _load_error
    with _lock:
        _use_host = None if enabled is None else bool(enabled)
        _lib = None
        _load_error = None


def library_path():
    """$CONVNET_CUDA_LIB, else libconvnet_cuda.so (or, with the host build selected,
    libconvnet_cuda_host.so) beside this module."""
    explicit = os.environ.get("CONVNET_CUDA_LIB")
    if explicit:
        return explicit
    name = HOST_LIBRARY_NAME if host_build_selected() else LIBRARY_NAME
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), name)


def cublas_search_dirs():
    """Folders where the nvidia-cublas wheels put libcublas (searched after the system's)."""
    roots = []
    try:
        roots += site.getsitepackages()
    except AttributeError:      # some virtualenv builds lack it
        pass
    try:
        roots.append(site.getusersitepackages())
    except AttributeError:
        pass
    roots += [p for p in sys.path if p]
    dirs = []
    for root in roots:
        for sub in (("nvidia", "cublas", "lib"), ("nvidia", "cu13", "lib"),
                    ("nvidia", "cu12", "lib")):
            d = os.path.join(root, *sub)
            if os.path.isdir(d) and d not in dirs:
                dirs.append(d)
    return dirs


_opened = {}   # path -> library: a library is loaded (and its table applied) once per process


def _open(path):
    real = os.path.realpath(path)
    if real in _opened:
        return _opened[real]
    if not os.path.exists(path):
        if os.path.basename(path) == HOST_LIBRARY_NAME:
            raise OSError(f"{path} does not exist (setup.py builds the host build with the C++ "
                          f"compiler: pip install ., or python setup.py build_ext --inplace)")
        raise OSError(f"{path} does not exist (build it with nvcc: CONVNET_CUDA=1 pip install ., "
                      f"or point CONVNET_CUDA_LIB at it)")
    lib = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
    for name, restype, argtypes in FUNCTIONS:
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    version = lib.convnet_abi_version()
    if version != ABI_VERSION:
        raise OSError(f"{path} has ABI version {version}, this convnet needs {ABI_VERSION}; "
                      f"rebuild the CUDA library")
    lib.convnet_set_cublas_search_path(":".join(cublas_search_dirs()).encode())
    _opened[real] = lib
    return lib


def load():
    """The loaded library (cached). Raises OSError with the reason when it cannot be loaded."""
    global _lib, _load_error
    lib = _lib
    if lib is not None:
        return lib
    with _lock:
        if _lib is None and _load_error is None:
            try:
                _lib = _open(library_path())
            except (OSError, AttributeError) as exc:
                _load_error = f"cannot load the CUDA library: {exc}"
        if _lib is None:
            raise OSError(_load_error)
        return _lib


def current():
    """The loaded library, or None (never loads)."""
    return _lib


def last_error():
    return load().convnet_last_error().decode(errors="replace")


def _check(status, name):
    """Raise CudaError for a failed status of entry point ``name``."""
    if status != OK:
        lib = load()
        text = lib.convnet_status_string(status).decode()
        message = lib.convnet_last_error().decode(errors="replace")
        raise CudaError(f"{name} failed: {text}: {message}", status)


def call(name, *args):
    """Run entry point ``name`` and check its status."""
    _check(getattr(load(), name)(*args), name)


def call_status(name, *args):
    """Run entry point ``name``; return its status (for the data-dependent BAD_INDEX)."""
    return getattr(load(), name)(*args)


def device_count():
    """The number of CUDA devices; raises CudaError without a driver."""
    count = c_int(0)
    call("convnet_device_count", ctypes.byref(count))
    return count.value


def int64_array(values):
    """A host int64 array (ctypes) for shape and stride arguments."""
    values = [int(v) for v in values]
    return (c_int64 * max(len(values), 1))(*values)


def byref_int64(value=0):
    return c_int64(value)


def byref_double(value=0.0):
    return c_double(value)


def ref(obj):
    return ctypes.byref(obj)


def void_p():
    return c_void_p()


def host_address(buffer):
    """The address of a writable or read-only host buffer (a NumPy array's data)."""
    return buffer.ctypes.data
