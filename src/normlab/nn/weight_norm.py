r"""Weight Normalization as a parametrization, state_dict-compatible with
``torch.nn.utils.parametrizations.weight_norm``.

.. math:: w = g\,\frac{v}{\lVert v\rVert}

The parameter ``name`` is replaced by ``parametrizations.<name>.original0`` (g, the magnitude, shaped like
``norm_except_dim(w, 2, dim)``) and ``parametrizations.<name>.original1`` (v, the direction, shaped like w):
the same keys torch uses, so checkpoints move both ways. Old-style ``<name>_g`` / ``<name>_v`` keys (from
``torch.nn.utils.weight_norm``) are accepted on load, as torch does.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor
from torch.nn import Module, ModuleDict
from torch.nn.utils import parametrize

from .. import functional as NF

__all__ = ["weight_norm", "WeightNorm", "data_dependent_init"]


class WeightNorm(Module):
    """The parametrization itself: ``forward(g, v) = g * v / ||v||`` with the norm over every dim but ``dim``."""

    def __init__(self, dim: int | None = 0) -> None:
        super().__init__()
        self.dim = -1 if dim is None else dim

    def forward(self, weight_g: Tensor, weight_v: Tensor) -> Tensor:
        return NF.weight_norm(weight_v, weight_g, self.dim)

    def right_inverse(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        return torch.norm_except_dim(weight, 2, self.dim), weight


def _check_target(module: Module, name: str, dim: int | None) -> None:
    if not isinstance(module, Module):
        raise TypeError(f"weight_norm: module must be a torch.nn.Module, got {type(module).__name__}")
    param = getattr(module, name, None)
    if not isinstance(param, torch.nn.Parameter):
        raise ValueError(f"weight_norm: {type(module).__name__} has no parameter named {name!r}")
    if not param.is_floating_point():
        raise TypeError(f"weight_norm: parameter {name!r} must be floating point, got {param.dtype}")
    if dim is not None and not -param.dim() <= dim < max(param.dim(), 1):
        raise ValueError(
            f"weight_norm: dim must be None or in [{-param.dim()}, {param.dim() - 1}] for the "
            f"{param.dim()}-d parameter {name!r}, got {dim}"
        )


def weight_norm(module: Module, name: str = "weight", dim: int | None = 0) -> Module:
    r"""Apply Weight Normalization (Salimans & Kingma 2016) to ``module.<name>``; returns the module.

    Args:
        module: the module holding the parameter.
        name: the parameter's name. Default: ``"weight"``.
        dim: the dim kept by the norm (one g per slice along it); ``None`` for one norm over the whole tensor
            (as in torch, ``-1`` means the same). Default: 0 (one g per output unit).

    Examples::

        >>> import torch, normlab.nn as nl
        >>> layer = nl.weight_norm(torch.nn.Linear(16, 4))
        >>> sorted(name for name, _ in layer.named_parameters())
        ['bias', 'parametrizations.weight.original0', 'parametrizations.weight.original1']
    """
    _check_target(module, name, dim)
    parametrize.register_parametrization(module, name, WeightNorm(dim), unsafe=True)

    def _accept_legacy_keys(
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        g_key, v_key = f"{prefix}{name}_g", f"{prefix}{name}_v"
        if g_key in state_dict and v_key in state_dict:
            state_dict[f"{prefix}parametrizations.{name}.original0"] = state_dict.pop(g_key)
            state_dict[f"{prefix}parametrizations.{name}.original1"] = state_dict.pop(v_key)

    module._register_load_state_dict_pre_hook(_accept_legacy_keys)
    return module


def _weight_normalized(model: Module) -> list[Module]:
    """The layers of ``model`` whose ``weight`` is reparametrized by :class:`WeightNorm`."""
    return [
        m
        for m in model.modules()
        if parametrize.is_parametrized(m, "weight")
        and any(
            isinstance(p, WeightNorm)
            for p in cast(parametrize.ParametrizationList, cast(ModuleDict, m.parametrizations)["weight"])
        )
    ]


@torch.no_grad()
def data_dependent_init(model: Module, input: Tensor, eps: float = 1e-6) -> Module:
    r"""Weight Normalization's data-dependent initialization (Salimans & Kingma 2016, section 3); returns ``model``.

    Layer by layer in the order the forward reaches them, each weight-normalized layer's pre-activations
    :math:`t = v \cdot x / \lVert v\rVert` on the batch ``input`` (the layers before it already initialized) set

    .. math:: g \leftarrow \frac{1}{\sigma[t]}, \qquad b \leftarrow -\frac{\mu[t]}{\sigma[t]}

    per output unit (mean and standard deviation over the batch and the spatial positions), so that every
    such layer starts with outputs of zero mean and unit variance. Layers without a bias get the scale only.

    Args:
        model: a module holding layers made with :func:`weight_norm` (``dim=0``).
        input: a batch the model takes, of more than one example.
        eps: added to the standard deviation.

    Examples::

        >>> import torch, normlab.nn as nl
        >>> layer = nl.weight_norm(torch.nn.Linear(8, 4))
        >>> x = 3 + 5 * torch.randn(256, 8)
        >>> _ = nl.data_dependent_init(layer, x)
        >>> y = layer(x)
        >>> bool(y.mean(0).abs().max() < 1e-4), bool((y.std(0, unbiased=False) - 1).abs().max() < 1e-3)
        (True, True)
    """
    if not isinstance(input, Tensor) or input.dim() < 2 or input.shape[0] < 2:
        raise ValueError("data_dependent_init: input must be a batch of at least 2 examples")
    layers = _weight_normalized(model)
    if not layers:
        raise ValueError("data_dependent_init: the model has no weight-normalized layer (normlab.nn.weight_norm)")
    order: list[Module] = []
    hooks = [m.register_forward_hook(lambda m, _a, _o: order.append(m) if m not in order else None) for m in layers]
    try:
        model(input)
    finally:
        for h in hooks:
            h.remove()
    for layer in order:
        g = cast(Tensor, cast(ModuleDict, layer.parametrizations)["weight"].original0)
        bias = getattr(layer, "bias", None)
        g.fill_(1.0)
        if bias is not None:
            bias.zero_()
        captured: list[Tensor] = []
        hook = layer.register_forward_hook(lambda _m, _a, out, into=captured: into.append(out))
        try:
            model(input)
        finally:
            hook.remove()
        t = captured[0].movedim(-1 if captured[0].dim() == 2 else 1, 0).reshape(g.shape[0], -1)
        mean, std = t.mean(1), t.std(1, unbiased=False) + eps
        g.copy_((1.0 / std).view(g.shape))
        if bias is not None:
            bias.copy_(-mean / std)
    return model
