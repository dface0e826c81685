"""Build convnet: Cython CPU kernels (OpenMP when the compiler has it) and, when nvcc is
found, the CUDA library libconvnet_cuda.so.

Environment switches:
  CONVNET_CYTHON_DEBUG=1   bounds checks and wraparound back on (kernel tests, debugging)
  CONVNET_CUDA=0           never build the CUDA library; =1 makes a failed CUDA build fatal
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


class BuildExtWithCuda(build_ext):
    """build_ext that also compiles cuda/*.cu into convnet/cuda/libconvnet_cuda.so."""

    def run(self):
        super().run()
        self.build_cuda_library()

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
        if self.inplace:
            out_dir = os.path.join(ROOT, "convnet", "cuda")
        else:
            out_dir = os.path.join(self.build_lib, "convnet", "cuda")
        os.makedirs(out_dir, exist_ok=True)
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
