r"""Spectral Normalization (Miyato et al. 2018) as a parametrization, state_dict-compatible with
``torch.nn.utils.parametrizations.spectral_norm`` (keys ``parametrizations.<name>.original`` and
``parametrizations.<name>.0._u`` / ``._v``).

.. math:: W_{SN} = W/\sigma(W),\qquad \sigma(W) \approx u^\top W v

with u, v refined by ``n_power_iterations`` steps of power iteration at every training forward (15 at creation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Module
from torch.nn.utils import parametrize

__all__ = ["spectral_norm", "SpectralNorm"]


class SpectralNorm(Module):
    """The parametrization: ``forward(W) = W / sigma(W)`` (1-d weights: ``W / ||W||``)."""

    def __init__(self, weight: Tensor, n_power_iterations: int = 1, dim: int = 0, eps: float = 1e-12) -> None:
        super().__init__()
        ndim = weight.ndim
        if not -max(ndim, 1) <= dim < max(ndim, 1):
            raise ValueError(f"spectral_norm: dim must be in [{-ndim}, {ndim - 1}], got {dim}")
        if n_power_iterations <= 0:
            raise ValueError(f"spectral_norm: n_power_iterations must be positive, got {n_power_iterations}")
        self.dim = dim if dim >= 0 else dim + ndim
        self.eps = eps
        if ndim > 1:
            self.n_power_iterations = n_power_iterations
            matrix = self._as_matrix(weight)
            h, w = matrix.shape
            self.register_buffer("_u", F.normalize(matrix.new_empty(h).normal_(0, 1), dim=0, eps=eps))
            self.register_buffer("_v", F.normalize(matrix.new_empty(w).normal_(0, 1), dim=0, eps=eps))
            self._u: Tensor
            self._v: Tensor
            self._power_method(matrix, 15)

    def _as_matrix(self, weight: Tensor) -> Tensor:
        if self.dim != 0:
            weight = weight.permute(self.dim, *(d for d in range(weight.dim()) if d != self.dim))
        return weight.flatten(1)

    @torch.no_grad()
    def _power_method(self, matrix: Tensor, iterations: int) -> None:
        for _ in range(iterations):
            self._u = F.normalize(torch.mv(matrix, self._v), dim=0, eps=self.eps, out=self._u)
            self._v = F.normalize(torch.mv(matrix.H, self._u), dim=0, eps=self.eps, out=self._v)

    def forward(self, weight: Tensor) -> Tensor:
        if weight.ndim == 1:
            return F.normalize(weight, dim=0, eps=self.eps)
        matrix = self._as_matrix(weight)
        if self.training:
            self._power_method(matrix, self.n_power_iterations)
        u = self._u.clone(memory_format=torch.contiguous_format)
        v = self._v.clone(memory_format=torch.contiguous_format)
        return weight / torch.vdot(u, torch.mv(matrix, v))

    def right_inverse(self, value: Tensor) -> Tensor:
        return value


def spectral_norm(
    module: Module, name: str = "weight", n_power_iterations: int = 1, eps: float = 1e-12, dim: int | None = None
) -> Module:
    r"""Apply Spectral Normalization (Miyato et al. 2018) to ``module.<name>``: :math:`W/\sigma_{\max}(W)`, the
    largest singular value estimated by ``n_power_iterations`` steps of power iteration per training forward.
    Returns the module. ``dim`` defaults to 0 (1 for transposed convolutions), as in torch.

    Examples::

        >>> import torch, normlab.nn as nl
        >>> conv = nl.spectral_norm(torch.nn.Conv2d(3, 8, 3))
        >>> conv(torch.randn(2, 3, 6, 6)).shape
        torch.Size([2, 8, 4, 4])
    """
    weight = getattr(module, name, None)
    if not isinstance(weight, torch.nn.Parameter):
        raise ValueError(f"spectral_norm: {type(module).__name__} has no parameter named {name!r}")
    if not weight.is_floating_point():
        raise TypeError(f"spectral_norm: parameter {name!r} must be floating point, got {weight.dtype}")
    if dim is None:
        transposed = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
        dim = 1 if isinstance(module, transposed) else 0
    parametrize.register_parametrization(module, name, SpectralNorm(weight, n_power_iterations, dim, eps))
    return module
