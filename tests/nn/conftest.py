"""Fixtures shared by the compiled-kernel tests (test_rms_norm_kernel.py, test_channels_last_kernel.py): the kernel
module, loaded once per test module, or the test skipped where it cannot be built (no C++ compiler) or is turned off
(``NORMLAB_NO_KERNELS=1``). A compiler that is present but fails is a test failure, not a skip: the kernels are
meant to build wherever a compiler is.

A test asks for one with ``@pytest.mark.usefixtures("channels_last_kernel")``, or takes it as an argument.
"""

import os
import shutil
from types import ModuleType

import pytest

from normlab.functional import _kernels

HAS_COMPILER = shutil.which(os.environ.get("CXX", "c++")) is not None


def _load(kernel: _kernels.Kernel) -> ModuleType:
    if not HAS_COMPILER:
        pytest.skip(f"no C++ compiler: the {kernel.what} kernel cannot be built")
    if _kernels.kernels_disabled():
        pytest.skip(f"{_kernels.DISABLE_ENV}=1 is set")
    module = kernel.module()
    if module is None:
        pytest.fail(f"the {kernel.what} kernel did not compile: {kernel.failed}")
    return module


@pytest.fixture(scope="module")
def rms_norm_kernel() -> ModuleType:
    """The compiled RMSNorm kernel (``csrc/rms_norm.cpp``)."""
    return _load(_kernels.RMS_NORM)


@pytest.fixture(scope="module")
def channels_last_kernel() -> ModuleType:
    """The compiled channels_last kernel (``csrc/channels_last.cpp`` and the sources it links)."""
    return _load(_kernels.CHANNELS_LAST)
