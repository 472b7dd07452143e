"""Build and install infvideo.

The Python package installs everywhere. The C++/CUDA extension in csrc/ is built with torch's
cpp_extension and ninja when torch and a compiler are present; without them the install falls
back to pure Python (the torch and Triton backends). Build it against the torch you run with:
``pip install --no-build-isolation -e .``.

Environment flags (the flash-attention convention):
    INFVIDEO_SKIP_EXTENSION=1   never build the extension
    INFVIDEO_FORCE_EXTENSION=1  fail instead of falling back when it cannot be built
    INFVIDEO_FORCE_CUDA=1       build the CUDA sources even when no GPU is visible (needs nvcc)
    INFVIDEO_CUDA_ARCHS="9.0"   CUDA architectures (TORCH_CUDA_ARCH_LIST is honoured too)
    MAX_JOBS                    parallel compile jobs (default: from cores and memory)
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _default_jobs() -> str:
    cores = os.cpu_count() or 1
    try:
        memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory_gb = 8.0
    # A CUDA translation unit with torch headers takes about 4 GB to compile.
    return str(max(1, min(cores, int(memory_gb // 4))))


def _extension_modules():
    """The csrc extension, or [] when it cannot or should not be built here."""
    # csrc/tests/ holds the C++ test executables (CMake builds them); they are not part of the library.
    sources = sorted(path for path in glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True)
                     if os.sep + "tests" + os.sep not in path)
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    if _flag("INFVIDEO_SKIP_EXTENSION") or not sources:
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension, CUDA_HOME
    except ImportError:
        if _flag("INFVIDEO_FORCE_EXTENSION"):
            raise
        print("infvideo: torch is not importable at build time; installing pure Python "
              "(use --no-build-isolation to build the extension)", file=sys.stderr)
        return [], {}
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        if _flag("INFVIDEO_FORCE_EXTENSION"):
            raise RuntimeError("INFVIDEO_FORCE_EXTENSION=1 but no C++ compiler was found")
        print("infvideo: no C++ compiler; installing pure Python", file=sys.stderr)
        return [], {}
    os.environ.setdefault("MAX_JOBS", _default_jobs())
    # No -std flag: cpp_extension passes the C++ standard of the torch it builds against.
    # -fno-trapping-math lets the compiler vectorise loops with float selects (the CPU kernels'
    # exponential and maxima); nothing here relies on floating-point traps.
    cxx = ["-O3", "-fopenmp", "-fno-trapping-math"]
    with_cuda = bool(cuda_sources) and CUDA_HOME is not None and torch.version.cuda is not None and (
        torch.cuda.is_available() or _flag("INFVIDEO_FORCE_CUDA"))
    if with_cuda:
        archs = os.environ.get("INFVIDEO_CUDA_ARCHS")
        if archs:
            os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        ext = CUDAExtension("infvideo._C", sources + cuda_sources, extra_compile_args={
            "cxx": cxx + ["-DINFVIDEO_WITH_CUDA"], "nvcc": ["-O3", "--use_fast_math",
                                                           "-DINFVIDEO_WITH_CUDA"]},
            extra_link_args=["-fopenmp"])
    else:
        ext = CppExtension("infvideo._C", sources, extra_compile_args={"cxx": cxx},
                           extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": _optional(BuildExtension.with_options(use_ninja=True))}


def _own_libstdcxx(library: str) -> bool:
    """Whether ``library`` defines the C++ runtime's exception entry points itself.

    Some toolchains link libstdc++ statically (on the GPU test machine, a CXX wrapper whose -B paths
    lead to a directory holding only the static archive). An extension built that way throws its errors through its own copy of the
    runtime, which torch's handlers cannot catch: the process dies with a segmentation fault
    instead of raising. ``nm`` comes with the linker; without it nothing is checked.
    """
    nm = shutil.which("nm")
    if nm is None:
        return False
    listing = subprocess.run([nm, "-D", "--defined-only", library], capture_output=True, text=True)
    return listing.returncode == 0 and any(line.endswith(" __cxa_throw") for line in listing.stdout.splitlines())


def _optional(build_ext):
    """A build_ext that installs pure Python when the extension fails to compile or would crash on
    its own errors (unless forced, which makes both an error)."""
    class OptionalBuildExtension(build_ext):
        def run(self):
            try:
                super().run()
                for ext in self.extensions:
                    built = self.get_ext_fullpath(ext.name)
                    if os.path.exists(built) and _own_libstdcxx(built):
                        os.remove(built)
                        raise RuntimeError(
                            f"{built} carries its own static copy of libstdc++ (the linker {_linker(self.compiler)} "
                            "links it in), so an error raised inside it would crash the process instead of raising; "
                            "build with a compiler that links libstdc++ dynamically, e.g. "
                            "CXX=g++ pip install --no-build-isolation -e .")
            except Exception as err:  # compiler and linker errors come in several types
                if _flag("INFVIDEO_FORCE_EXTENSION"):
                    raise
                print(f"infvideo: the C++/CUDA extension did not build ({err}); installing pure Python "
                      "(INFVIDEO_FORCE_EXTENSION=1 makes this an error)", file=sys.stderr)
    return OptionalBuildExtension


def _linker(compiler) -> str:
    """The command that linked the extension: setuptools links C++ with the C++ compiler (CXX)."""
    command = getattr(compiler, "compiler_cxx", None) or getattr(compiler, "linker_so_cxx", None) or ["c++"]
    return command[0]


ext_modules, cmdclass = _extension_modules()

setup(
    name="infvideo",
    version="0.1.0",
    description="Fused kernels for the continuous-time long-term memory of ∞-Video",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["infvideo", "infvideo.reference", "infvideo.ops", "infvideo.integrations", "infvideo.models", "infvideo.kernels",
              "infvideo.benchmarks"],
    # The Triton kernels live in kernels/ but install as infvideo.kernels: a top-level
    # `kernels` module would clash with the unrelated PyPI package that transformers looks for.
    package_dir={"infvideo.kernels": "kernels"},
    install_requires=["torch>=2.4", "numpy", "tqdm"],
    extras_require={
        "triton": ["triton>=3.0"],
        "test": ["pytest", "pytest-benchmark", "hypothesis"],
        "hf": ["transformers>=4.40"],
        "plot": ["matplotlib>=3.7"],
    },
    entry_points={"console_scripts": ["infvideo=infvideo.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
