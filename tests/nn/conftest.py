"""Fixtures shared by the compiled-kernel tests (test_rms_norm_kernel.py, test_channels_last_kernel.py): the kernel
module, loaded once per test module, or the test skipped where it cannot be built (no C++ compiler) or is turned off
(``NORMLAB_NO_KERNELS=1``). A compiler that is present but fails is a test failure, not a skip: the kernels are
meant to build wherever a compiler is.

A test asks for one with ``@pytest.mark.usefixtures("channels_last_kernel")``, or takes it as an argument.
"""

import os
import shutil
from collections.abc import Callable
from types import ModuleType

import pytest

from normlab.functional import _kernels

HAS_COMPILER = shutil.which(os.environ.get("CXX", "c++")) is not None


def _load(load: Callable[[], ModuleType | None], failure: Callable[[], str | None], what: str) -> ModuleType:
    if not HAS_COMPILER:
        pytest.skip(f"no C++ compiler: the {what} kernel cannot be built")
    if _kernels.kernels_disabled():
        pytest.skip(f"{_kernels.DISABLE_ENV}=1 is set")
    kernel = load()
    if kernel is None:
        pytest.fail(f"the {what} kernel did not compile: {failure()}")
    return kernel


@pytest.fixture(scope="module")
def rms_norm_kernel() -> ModuleType:
    """The compiled RMSNorm kernel (``csrc/rms_norm.cpp``)."""
    return _load(_kernels.rms_norm_kernel, lambda: _kernels._failed, "RMSNorm")


@pytest.fixture(scope="module")
def channels_last_kernel() -> ModuleType:
    """The compiled channels_last kernel (``csrc/channels_last.cpp`` and the sources it links)."""
    return _load(_kernels.channels_last_kernel, lambda: _kernels._cl_failed, "channels_last")
