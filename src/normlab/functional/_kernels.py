"""normlab's compiled CPU kernels: built on first use with ``torch.utils.cpp_extension`` into torch's extension cache
(``$TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``), so there is no build step at install.

Two kernels, each its own extension: the fused RMSNorm forward and backward of ``csrc/rms_norm.cpp`` (the
formulas are at the top of that file and in :class:`normlab.functional.rms._RMSNorm`), and the channels_last
normalization of ``csrc/channels_last.cpp`` with ``columns.cpp`` and ``batch_norm.cpp`` (InstanceNorm, GroupNorm,
training-mode BatchNorm; see :mod:`normlab.functional.channels_last`); both include ``csrc/common.h``.
:func:`rms_norm_kernel` and :func:`channels_last_kernel` return the compiled module, or None when the caller must
take its pure-ATen path:

- the environment variable ``NORMLAB_NO_KERNELS`` is ``1`` (read at every call);
- the compile failed (no C++ compiler, a compiler error, anything else): a warning names the reason and the
  fallback, once per process, and the compile is not tried again.

The compile runs once per process, under a lock (threads wait for the first one), and logs one line while it runs;
it takes tens of seconds, and later processes load the cached build in well under a second. The build targets the
CPU capability torch dispatches to (``torch.backends.cpu.get_cpu_capability()``: AVX512, AVX2 or the portable
default), which is part of the extension's name, so machines sharing a cache do not load each other's builds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["rms_norm_kernel", "channels_last_kernel", "kernels_disabled"]

_log = logging.getLogger(__name__)

DISABLE_ENV = "NORMLAB_NO_KERNELS"
"""Set to ``1`` to use the pure-ATen paths (no compile)."""

CSRC = Path(__file__).with_name("csrc")
SOURCE = CSRC / "rms_norm.cpp"
CHANNELS_LAST_SOURCE = CSRC / "channels_last.cpp"
RMS_NORM_EXTRA = ("common.h",)
"""The header :data:`SOURCE` includes, next to it."""
CHANNELS_LAST_EXTRA = ("columns.cpp", "batch_norm.cpp", "common.h", "channels_last.h")
"""The channels_last extension's other files next to :data:`CHANNELS_LAST_SOURCE`: its other sources and the
headers they include (``#include "..."``)."""

# compiler flags per torch CPU capability: ATen's vector types (at::vec::Vectorized) pick their implementation from
# the CPU_CAPABILITY_* macro, as in torch's own per-capability kernel builds
_ARCH_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2"],
}

_lock = threading.Lock()
_module: ModuleType | None = None
_failed: str | None = None  # the reason the compile failed, once it has
_cl_module: ModuleType | None = None  # the same two for the channels_last kernel
_cl_failed: str | None = None


def kernels_disabled() -> bool:
    """Whether ``NORMLAB_NO_KERNELS=1`` asks for the pure-ATen paths."""
    return os.environ.get(DISABLE_ENV, "") == "1"


def rms_norm_kernel() -> ModuleType | None:
    """The compiled RMSNorm module (``forward(input, weight, eps) -> (y, rstd)`` and ``backward(grad_output, input,
    rstd, weight, need_input, need_weight) -> (grad_input, grad_weight)`` over contiguous ``(R, K)`` rows), compiled
    on the first call; None if kernels are disabled or the compile failed (warned once)."""
    if _module is not None:
        return None if kernels_disabled() else _module
    if _failed is not None or kernels_disabled():
        return None
    return _load()


def channels_last_kernel() -> ModuleType | None:
    """The compiled channels_last module, compiled on the first call; None if kernels are disabled or the compile
    failed (warned once). For channels_last input, statistics per (group, channel): ``norm(input, weight, bias, eps,
    groups, running_mean, running_var, momentum) -> y``, differentiable (a C++ autograd Function); its parts
    ``forward(input, groups, weight, bias, eps, running_mean, running_var, momentum) -> (y, saved, rstd, var)`` and
    ``backward(grad_output, input, groups, saved, rstd, weight, need_input, need_affine) -> (grad_input,
    grad_weight, grad_bias)``; ``group_forward`` and ``group_backward`` for GroupNorm."""
    if _cl_module is not None:
        return None if kernels_disabled() else _cl_module
    if _cl_failed is not None or kernels_disabled():
        return None
    return _load_channels_last()


def _capability() -> str:
    """The CPU capability to build for: torch's own dispatch level, reduced to the ones we have flags for."""
    capability = torch.backends.cpu.get_cpu_capability()
    return capability if capability in _ARCH_FLAGS else "DEFAULT"


def _build_directory(name: str) -> Path:
    """Where the build lives: a folder of torch's extension cache named after the extension and torch's version."""
    from torch.utils import cpp_extension  # imported here: it pulls in setuptools, slow to import

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    return Path(root) / f"{name}_torch{torch.__version__.replace('+', '_')}"


def _compile(source_path: Path | None = None, what: str = "fused RMSNorm", extra: tuple[str, ...] = ()) -> ModuleType:
    """Load the extension from torch's cache (``source_path`` None: the RMSNorm kernel), or build it there first;
    raises on any failure.

    The build is named after the content of its files (``source_path``, then the ``extra`` files next to it:
    more sources, ``.cpp``, and the headers they include) and of the flags, not after the installed path, so every
    copy of normlab with the same kernel, a checkout, a clone, site-packages, loads one build: a cached one is
    imported directly, without a look at the compiler; a new one is built from a copy of the files in its own
    folder."""
    capability = _capability()
    cflags = ["-O3", "-fopenmp", f"-DCPU_CAPABILITY={capability}", *_ARCH_FLAGS.get(capability, [])]
    if source_path is None:  # the RMSNorm kernel
        source_path, extra = SOURCE, RMS_NORM_EXTRA
    contents = {name: source_path.with_name(name).read_bytes() for name in (source_path.name, *extra)}
    hashed = b"\0".join([contents[source_path.name], *(name.encode() + b"\0" + contents[name] for name in extra)])
    digest = hashlib.sha256(hashed + "\0".join(cflags).encode()).hexdigest()[:12]
    name = f"normlab_{source_path.stem}_{capability.lower()}_{digest}"
    build = _build_directory(name)
    library = build / f"{name}.so"
    if library.exists():
        _log.info("normlab: loading the %s CPU kernel from %s", what, build)
        spec = importlib.util.spec_from_file_location(name, library)
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler found ({compiler!r} is not on PATH)")
    from torch.utils import cpp_extension

    _log.warning("normlab: compiling the %s CPU kernel into %s (once; tens of seconds)", what, build)
    build.mkdir(parents=True, exist_ok=True)
    for file_name, data in contents.items():
        copy = build / file_name
        if not copy.exists() or copy.read_bytes() != data:
            copy.write_bytes(data)
    return cpp_extension.load(
        name=name,
        sources=[str(build / file) for file in contents if file.endswith(".cpp")],
        extra_cflags=cflags,
        extra_ldflags=["-fopenmp"],
        build_directory=str(build),
        verbose=False,
    )


def _reason(error: Exception) -> str:
    """One line saying why the compile failed: the compiler's first error line if there is one, else the first
    line of the message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    return f"{type(error).__name__}: {(errors or lines or ['(no message)'])[0]}"


def _load() -> ModuleType | None:
    """Compile once per process under the lock; on failure record the reason and warn once."""
    global _module, _failed
    with _lock:
        if _module is None and _failed is None:
            try:
                _module = _compile()
            except Exception as error:  # no compiler, a compiler error, a bad cache: never the user's problem
                _failed = _reason(error)
                warnings.warn(
                    f"normlab: the fused RMSNorm CPU kernel could not be compiled ({_failed}); RMSNorm runs on its "
                    f"pure-ATen path instead (set {DISABLE_ENV}=1 to skip the compile)",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return _module if _module is not None and not kernels_disabled() else None


def _load_channels_last() -> ModuleType | None:
    """:func:`_load` for the channels_last kernel: compile once per process, on failure warn once."""
    global _cl_module, _cl_failed
    with _lock:
        if _cl_module is None and _cl_failed is None:
            try:
                _cl_module = _compile(CHANNELS_LAST_SOURCE, "channels_last normalization", CHANNELS_LAST_EXTRA)
            except Exception as error:  # as in _load
                _cl_failed = _reason(error)
                warnings.warn(
                    f"normlab: the channels_last normalization CPU kernel could not be compiled ({_cl_failed}); "
                    f"InstanceNorm, GroupNorm and BatchNorm run on their pure-ATen paths instead (set {DISABLE_ENV}=1 "
                    "to skip the compile)",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return _cl_module if _cl_module is not None and not kernels_disabled() else None
