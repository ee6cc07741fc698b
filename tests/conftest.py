import os
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(__file__))

settings.register_profile(
    "normlab",
    max_examples=int(os.environ.get("NORMLAB_HYPOTHESIS_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile("normlab")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def _import_torchvision() -> None:
    """torchvision's registry wheel for torch 2.13 is a CUDA build: on the CPU torch its C ops do not load, and its
    import then fails registering fake kernels for two of them (``torchvision::nms``, ``qnms``). The models are
    pure Python: define those two schemas (never called) so that ``import torchvision`` and timm work. A torchvision
    whose ops load needs none of this."""
    try:
        import torchvision  # noqa: F401
    except RuntimeError as err:
        if "torchvision::nms" not in str(err):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "DEF")  # noqa: F841 (kept alive: the schemas live with it)
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _KEEP.append(lib)
        import torchvision  # noqa: F401,F811
    except ImportError:
        pass


_KEEP: list = []
_import_torchvision()
