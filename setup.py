"""Build convnet: Cython CPU kernels (OpenMP when the compiler has it), the CUDA library
libconvnet_cuda.so when nvcc is found, and the host build of the same CUDA sources,
libconvnet_cuda_host.so (+ its CPU cuBLAS stand-in libconvnet_cublas_host.so), with the C++
compiler: no nvcc or GPU needed; the CUDA tests run the kernels' source through it.

Environment switches:
  CONVNET_CYTHON_DEBUG=1   bounds checks and wraparound back on (kernel tests, debugging)
  CONVNET_CUDA=0           never build the CUDA library; =1 makes a failed CUDA build fatal
  CONVNET_CUDA_HOST_BUILD=0  skip the host build of cuda/*.cu; =1 makes its failure fatal
  CXX=/path/to/c++         the C++ compiler of the host build (else Python's, else c++)
  CONVNET_EXT=a,b          build only these pyx modules (development)
  CONVNET_MARCH=...        -march for the CPU kernels (default native: pip install . builds for
                           the machine it runs on; set CONVNET_MARCH=x86-64-v2 for a portable wheel)
  NVCC=/path/to/nvcc       the CUDA compiler (else $CUDA_HOME/bin/nvcc, else nvcc on PATH)
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
DEBUG = os.environ.get("CONVNET_CYTHON_DEBUG", "0") == "1"

OPENMP_PROBE = r"""
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return n > 0 ? 0 : 1;
}
"""


def probe_openmp():
    """Compile and link a tiny OpenMP program; return the flags that made it work, or None."""
    cc = sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()[0]
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(OPENMP_PROBE)
        for flags in (["-fopenmp"], ["-Xpreprocessor", "-fopenmp", "-lomp"]):
            cmd = [cc, src, "-o", os.path.join(tmp, "probe")] + flags
            try:
                ok = subprocess.run(cmd, capture_output=True).returncode == 0
            except OSError:
                ok = False
            if ok:
                return flags
    return None


def probe_march():
    """['-march=<CONVNET_MARCH or native>'] when the compiler accepts it, else []."""
    march = os.environ.get("CONVNET_MARCH", "native")
    if not march:
        return []
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write("int main(void) { return 0; }\n")
        cmd = [cc, f"-march={march}", src, "-o", os.path.join(tmp, "probe")]
        try:
            ok = subprocess.run(cmd, capture_output=True).returncode == 0
        except OSError:
            ok = False
    return [f"-march={march}"] if ok else []


def cython_extensions():
    from Cython.Build import cythonize

    openmp = probe_openmp()
    if openmp is None:
        print("WARNING: the C compiler does not support OpenMP; convnet's CPU kernels "
              "will run on one thread (BLAS may still use several).", file=sys.stderr)
        compile_omp, link_omp = [], []
    else:
        compile_omp = [f for f in openmp if not f.startswith("-l")]
        link_omp = [f for f in openmp if f != "-Xpreprocessor"]
    march = probe_march()
    only = {m for m in os.environ.get("CONVNET_EXT", "").split(",") if m}
    extensions = []
    for path in sorted(glob.glob(os.path.join("pyx", "*.pyx"))):
        module = os.path.splitext(os.path.basename(path))[0]
        if only and module not in only:
            continue
        extensions.append(Extension(
            f"convnet._cpu.{module}",
            [path],
            include_dirs=[numpy.get_include(), "pyx"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=["-O3"] + march + compile_omp,
            extra_link_args=link_omp,
        ))
    directives = {
        "language_level": 3,
        "boundscheck": DEBUG,
        "wraparound": DEBUG,
        "initializedcheck": DEBUG,
        "cdivision": True,
        "embedsignature": True,
    }
    return cythonize(extensions, compiler_directives=directives, include_path=["pyx"],
                     build_dir=os.path.join("build", "cython-debug" if DEBUG else "cython"),
                     quiet=True)


def find_nvcc():
    explicit = os.environ.get("NVCC")
    if explicit:
        return explicit
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return os.path.join(home, "bin", "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    for guess in ("/usr/local/cuda/bin/nvcc",):
        if os.path.exists(guess):
            return guess
    return None


def find_cxx():
    explicit = os.environ.get("CXX")
    if explicit:
        return explicit.split()
    configured = sysconfig.get_config_var("CXX")
    if configured and shutil.which(configured.split()[0]):
        return configured.split()
    for name in ("c++", "g++", "clang++"):
        if shutil.which(name):
            return [name]
    return None


def run_parallel(commands, jobs):
    """Run the commands, ``jobs`` at a time; (returncode, output) of the first failure or
    (0, "")."""
    pending, running, failure = list(commands), [], (0, "")
    while pending or running:
        while pending and len(running) < jobs:
            cmd = pending.pop(0)
            running.append(subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True))
        proc = running.pop(0)
        out, _ = proc.communicate()
        if proc.returncode != 0 and failure[0] == 0:
            failure = (proc.returncode, " ".join(proc.args) + "\n" + out)
    return failure


class BuildExtWithCuda(build_ext):
    """build_ext that also compiles cuda/*.cu into convnet/cuda/libconvnet_cuda.so (nvcc) and
    into convnet/cuda/libconvnet_cuda_host.so (the C++ compiler, through cuda/host/)."""

    def run(self):
        super().run()
        self.build_cuda_library()
        self.build_host_library()

    def cuda_out_dir(self):
        if self.inplace:
            out_dir = os.path.join(ROOT, "convnet", "cuda")
        else:
            out_dir = os.path.join(self.build_lib, "convnet", "cuda")
        os.makedirs(out_dir, exist_ok=True)
        return out_dir

    def build_host_library(self):
        mode = os.environ.get("CONVNET_CUDA_HOST_BUILD", "auto")
        if mode == "0":
            print("convnet: CONVNET_CUDA_HOST_BUILD=0, host build of the CUDA sources skipped.")
            return
        sources = sorted(glob.glob(os.path.join(ROOT, "cuda", "*.cu")))
        cxx = find_cxx()
        if not sources or cxx is None:
            msg = "convnet: no C++ compiler found, host build of the CUDA sources skipped."
            if mode == "1":
                raise RuntimeError(msg)
            print(msg)
            return
        out_dir = self.cuda_out_dir()
        obj_dir = os.path.join(ROOT, "build", "cuda-host")
        os.makedirs(obj_dir, exist_ok=True)
        flags = ["-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden", "-DCONVNET_HOST_BUILD",
                 "-I", os.path.join(ROOT, "cuda", "host"), "-I", os.path.join(ROOT, "include"),
                 "-I", os.path.join(ROOT, "cuda")]
        objects, commands = [], []
        for src in sources:
            obj = os.path.join(obj_dir, os.path.basename(src) + ".o")
            objects.append(obj)
            commands.append([*cxx, *flags, "-x", "c++", "-c", src, "-o", obj])
        cublas_src = os.path.join(ROOT, "cuda", "host", "cublas.cpp")
        cublas_target = os.path.join(out_dir, "libconvnet_cublas_host.so")
        commands.append([*cxx, "-std=c++17", "-O2", "-fPIC", "-shared", "-fvisibility=hidden",
                         cublas_src, "-o", cublas_target, "-ldl"])
        print("convnet: host build of the CUDA sources with", " ".join(cxx))
        code, out = run_parallel(commands, max(1, int(self.parallel or 1)))
        if code == 0:
            target = os.path.join(out_dir, "libconvnet_cuda_host.so")
            link = [*cxx, "-shared", *objects, "-o", target, "-ldl", "-lpthread"]
            result = subprocess.run(link, capture_output=True, text=True)
            code, out = result.returncode, " ".join(link) + "\n" + result.stdout + result.stderr
        if code != 0:
            msg = "convnet: the host build of the CUDA sources failed.\n" + out
            if mode == "1":
                raise RuntimeError(msg)
            print(msg, file=sys.stderr)

    def build_cuda_library(self):
        mode = os.environ.get("CONVNET_CUDA", "auto")
        if mode == "0":
            print("convnet: CONVNET_CUDA=0, CUDA library not built (CPU-only install).")
            return
        sources = sorted(glob.glob(os.path.join(ROOT, "cuda", "*.cu")))
        if not sources:
            return
        nvcc = find_nvcc()
        if nvcc is None:
            msg = "convnet: nvcc not found, CUDA library not built (CPU-only install)."
            if mode == "1":
                raise RuntimeError(msg)
            print(msg)
            return
        out_dir = self.cuda_out_dir()
        target = os.path.join(out_dir, "libconvnet_cuda.so")
        arch = os.environ.get(
            "CONVNET_CUDA_ARCH",
            "-gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=sm_90 "
            "-gencode=arch=compute_90,code=compute_90").split()
        cmd = [nvcc, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC",
               "-Xcompiler", "-fvisibility=hidden", "-cudart", "static",
               "-I", os.path.join(ROOT, "include"), "-I", os.path.join(ROOT, "cuda"),
               *arch, *sources, "-o", target, "-ldl", "-lpthread"]
        print("convnet: building the CUDA library:", " ".join(cmd))
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            msg = ("convnet: the CUDA library failed to build; installing CPU-only.\n"
                   + result.stdout + result.stderr)
            if mode == "1":
                raise RuntimeError(msg)
            print(msg, file=sys.stderr)


setup(ext_modules=cython_extensions(), cmdclass={"build_ext": BuildExtWithCuda})
