"""torch's own tools on normlab's twins, where isinstance is not enough.

The twins are instances of torch's classes (``normlab.nn.BatchNorm2d`` is a ``torch.nn.BatchNorm2d``), so tools that
test with ``isinstance`` (``convert_sync_batchnorm``, ``fuse_conv_bn_eval``, timm's ``freeze_batch_norm_2d``) take
them as they are. ``torch.ao.quantization.fuse_modules`` looks fusion patterns up by exact type: this module adds
each torch pattern with a BatchNorm again with the normlab twin in its place, calling torch's own fuser on the
torch twin that holds the same parameters and buffers (so QAT fusion, which builds ``nni.ConvBn2d`` and friends,
gets the class it checks for). Registered when normlab is imported; torch already imports the table.
"""

from __future__ import annotations

from collections.abc import Callable

from torch.ao.quantization import fuser_method_mappings
from torch.nn import Module

from .convert import TWINS, _build_twin

__all__ = ["register_fusion_patterns", "FUSION_PATTERNS"]

FUSION_PATTERNS: dict[tuple[type, ...], Callable[..., Module]] = {}
"""The patterns normlab added to torch's default fusion table."""


_TO_TORCH = {ours: theirs for theirs, ours in TWINS}


def _on_torch_twins(fuser: Callable[..., Module]) -> Callable[..., Module]:
    def fuse(is_qat: bool, *modules: Module) -> Module:
        return fuser(is_qat, *(_build_twin(m, _TO_TORCH[type(m)]) if type(m) in _TO_TORCH else m for m in modules))

    fuse.__name__ = getattr(fuser, "__name__", "fuser")
    return fuse


def register_fusion_patterns() -> None:
    """Add, to torch's default fusion table, every pattern with a torch norm again with normlab's twin."""
    table = fuser_method_mappings._DEFAULT_OP_LIST_TO_FUSER_METHOD
    twins = {theirs: ours for theirs, ours in TWINS}
    for pattern, fuser in list(table.items()):
        if not any(t in twins for t in pattern):
            continue
        ours = tuple(twins.get(t, t) for t in pattern)
        if ours not in table:
            table[ours] = FUSION_PATTERNS[ours] = _on_torch_twins(fuser)


register_fusion_patterns()
