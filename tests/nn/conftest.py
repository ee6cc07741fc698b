"""Fixtures shared by the compiled-kernel tests (test_rms_norm_kernel.py, test_channels_last_kernel.py): the kernel
module, loaded once per test module, or the test skipped where it cannot be built (no C++ compiler) or is turned off
(``NORMLAB_NO_KERNELS=1``). A compiler that is present but fails is a test failure, not a skip: the kernels are
meant to build wherever a compiler is.

A test asks for one with ``@pytest.mark.usefixtures("channels_last_kernel")``, or takes it as an argument.
"""

from types import ModuleType

import pytest
from helpers import compiled

from normlab.functional import _kernels


@pytest.fixture(scope="module")
def rms_norm_kernel() -> ModuleType:
    """The compiled RMSNorm kernel (``csrc/rms_norm.cpp``)."""
    return compiled(_kernels.RMS_NORM)


@pytest.fixture(scope="module")
def channels_last_kernel() -> ModuleType:
    """The compiled channels_last kernel (``csrc/channels_last.cpp`` and the sources it links)."""
    return compiled(_kernels.CHANNELS_LAST)
