"""normlab's compiled CPU kernels: built on first use with ``torch.utils.cpp_extension`` into torch's extension cache
(``$TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``), so there is no build step at install.

Two kernels, each its own extension: the fused RMSNorm forward and backward of ``csrc/rms_norm.cpp`` (the
formulas are at the top of that file and in :class:`normlab.functional.rms._RMSNorm`), and the channels_last
normalization of ``csrc/channels_last.cpp`` with ``columns.cpp`` and ``batch_norm.cpp`` (InstanceNorm, GroupNorm,
training-mode BatchNorm; see :mod:`normlab.functional.channels_last`); both include ``csrc/common.h``.
Each is a :class:`Kernel` (so are the lab's two: the channel-major norm kernel,
:mod:`normlab.lab.training.channel_major_kernel`, and the language model's causal attention,
:mod:`normlab.lab.training.attention_kernel`): :func:`rms_norm_kernel` and :func:`channels_last_kernel` return
the compiled module, or None when the caller must take its pure-ATen path:

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

__all__ = ["Kernel", "rms_norm_kernel", "channels_last_kernel", "kernels_disabled"]

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


def kernels_disabled() -> bool:
    """Whether ``NORMLAB_NO_KERNELS=1`` asks for the pure-ATen paths."""
    return os.environ.get(DISABLE_ENV, "") == "1"


class Kernel:
    """One compiled extension and its per-process state: ``source`` (its main file) with the ``extra`` files next to
    it, ``what`` it computes (for the log and the warning), ``fallback`` (what runs instead, for the warning).
    :meth:`module` compiles it on its first call (once a process, under one lock: threads wait for the first
    compile), or returns None where the caller takes its pure-ATen path: kernels disabled (read at every call), or
    the compile failed (``failed`` says why; warned once, not tried again)."""

    def __init__(self, source: Path, what: str, fallback: str, extra: tuple[str, ...] = ()) -> None:
        self.source, self.what, self.fallback, self.extra = source, what, fallback, extra
        self.loaded: ModuleType | None = None
        self.failed: str | None = None  # the reason the compile failed, once it has

    def module(self) -> ModuleType | None:
        """The compiled module, or None (see the class)."""
        if kernels_disabled():
            return None
        if self.loaded is not None or self.failed is not None:
            return self.loaded
        with _lock:
            if self.loaded is None and self.failed is None:
                try:
                    self.loaded = _compile(self.source, self.what, self.extra)
                except Exception as error:  # no compiler, a compiler error, a bad cache: never the user's problem
                    self.failed = _reason(error)
                    warnings.warn(
                        f"normlab: the {self.what} CPU kernel could not be compiled ({self.failed}); {self.fallback} "
                        f"instead (set {DISABLE_ENV}=1 to skip the compile)",
                        RuntimeWarning,
                        stacklevel=3,
                    )
        return self.loaded


RMS_NORM = Kernel(SOURCE, "fused RMSNorm", "RMSNorm runs on its pure-ATen path", RMS_NORM_EXTRA)
CHANNELS_LAST = Kernel(
    CHANNELS_LAST_SOURCE,
    "channels_last normalization",
    "InstanceNorm, GroupNorm and BatchNorm run on their pure-ATen paths",
    CHANNELS_LAST_EXTRA,
)


def rms_norm_kernel() -> ModuleType | None:
    """The compiled RMSNorm module (``forward(input, weight, eps) -> (y, rstd)`` and ``backward(grad_output, input,
    rstd, weight, need_input, need_weight) -> (grad_input, grad_weight)`` over contiguous ``(R, K)`` rows), compiled
    on the first call; None if kernels are disabled or the compile failed (warned once)."""
    return RMS_NORM.module()


def channels_last_kernel() -> ModuleType | None:
    """The compiled channels_last module, compiled on the first call; None if kernels are disabled or the compile
    failed (warned once). For channels_last input, statistics per (group, channel): ``norm(input, weight, bias, eps,
    groups, running_mean, running_var, momentum) -> y``, differentiable (a C++ autograd Function); its parts
    ``forward(input, groups, weight, bias, eps, running_mean, running_var, momentum) -> (y, saved, rstd, var)`` and
    ``backward(grad_output, input, groups, saved, rstd, weight, need_input, need_affine) -> (grad_input,
    grad_weight, grad_bias)``; ``group_forward`` and ``group_backward`` for GroupNorm."""
    return CHANNELS_LAST.module()


def _capability() -> str:
    """The CPU capability to build for: torch's own dispatch level, reduced to the ones we have flags for."""
    capability = torch.backends.cpu.get_cpu_capability()
    return capability if capability in _ARCH_FLAGS else "DEFAULT"


def _build_directory(name: str) -> Path:
    """Where the build lives: a folder of torch's extension cache named after the extension and torch's version."""
    from torch.utils import cpp_extension  # imported here: it pulls in setuptools, slow to import

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    return Path(root) / f"{name}_torch{torch.__version__.replace('+', '_')}"


def _compile(source_path: Path, what: str, extra: tuple[str, ...] = ()) -> ModuleType:
    """Load the extension from torch's cache, or build it there first; raises on any failure.

    The build is named after the content of its files (``source_path``, then the ``extra`` files next to it:
    more sources, ``.cpp``, and the headers they include) and of the flags, not after the installed path, so every
    copy of normlab with the same kernel, a checkout, a clone, site-packages, loads one build: a cached one is
    imported directly, without a look at the compiler; a new one is built from a copy of the files in its own
    folder."""
    capability = _capability()
    cflags = ["-O3", "-fopenmp", f"-DCPU_CAPABILITY={capability}", *_ARCH_FLAGS.get(capability, [])]
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
