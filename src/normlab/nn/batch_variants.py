r"""BatchNorm's variants: Batch Renormalization, Ghost BatchNorm, PowerNorm, mean-only BatchNorm. Formulas in
:mod:`normlab.reference.batch_variants`; all keep BatchNorm's buffers and state_dict layout where they share it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor
from torch.nn import Parameter, init

from .. import _checks
from .. import functional as NF
from ._twin import Twin
from .batchnorm import _BatchNorm, _lerp_buffer

__all__ = [
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "GhostBatchNorm3d",
    "PowerNorm",
    "MeanOnlyBatchNorm",
]


def _channel_shape(x: Tensor) -> tuple[int, ...]:
    return (1, -1) + (1,) * (x.dim() - 2)


class _BatchRenorm(_BatchNorm):
    r"""Batch Renormalization (Ioffe 2017): BatchNorm whose training output is corrected towards the running
    statistics, :math:`\hat x = \frac{x-\mu_B}{\sigma_B}r + d`, with r and d clipped and carrying no gradient.

    Args:
        num_features, eps, affine, device, dtype, bias: as BatchNorm.
        momentum: running-average rate (the paper's 0.01). Default: 0.01.
        r_max, d_max: the clipping limits. Default: 3.0 and 5.0 (the paper's final values).
        warmup: follow the paper's schedule: plain BN (r_max = 1, d_max = 0) for 5k steps, then r_max rising
            linearly to its limit at 40k steps and d_max at 25k (counted by ``num_batches_tracked``). Default: False.

    With ``r_max=1, d_max=0`` it is exactly BatchNorm. Eval normalizes with the running statistics, as BN.

    Shape:
        - Input: ``(N, C)`` or ``(N, C, L)`` (1d), ``(N, C, H, W)`` (2d), ``(N, C, D, H, W)`` (3d); output: same.

    Examples::

        >>> import torch, normlab.nn as nl
        >>> brn = nl.BatchRenorm2d(8)
        >>> brn(torch.randn(4, 8, 5, 5)).shape
        torch.Size([4, 8, 5, 5])
    """

    WARMUP_STEPS, R_MAX_STEPS, D_MAX_STEPS = 5000, 40000, 25000
    # Always tracking running statistics, with a momentum: the buffers are tensors, the momentum a float.
    running_mean: Tensor
    running_var: Tensor
    num_batches_tracked: Tensor
    momentum: float

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.01,
        affine: bool = True,
        r_max: float = 3.0,
        d_max: float = 5.0,
        warmup: bool = False,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, True, device, dtype, bias=bias)
        if not r_max >= 1.0 or not d_max >= 0.0:
            raise ValueError(f"{type(self).__name__}: expected r_max >= 1 and d_max >= 0, got {r_max} and {d_max}")
        if momentum is None or not 0.0 < momentum <= 1.0:
            raise ValueError(f"{type(self).__name__}: momentum must be in (0, 1], got {momentum}")
        self.r_max, self.d_max, self.warmup = float(r_max), float(d_max), warmup

    def limits(self) -> tuple[Tensor, Tensor]:
        """Current (r_max, d_max): the limits, or the warm-up schedule's values at this step."""
        step = self.num_batches_tracked.to(torch.float64)
        if not self.warmup:
            return step.new_tensor(self.r_max), step.new_tensor(self.d_max)

        def ramp(limit: float, start_value: float, end_step: int) -> Tensor:
            t = ((step - self.WARMUP_STEPS) / (end_step - self.WARMUP_STEPS)).clamp(0.0, 1.0)
            return start_value + t * (limit - start_value)

        return ramp(self.r_max, 1.0, self.R_MAX_STEPS), ramp(self.d_max, 0.0, self.D_MAX_STEPS)

    def forward(self, input: Tensor) -> Tensor:
        if not self.training:
            return super().forward(input)
        self._check_input_dim(input)
        self._check_channels(input)
        x_hat = NF.batch_norm(input, None, None, None, None, True, 0.0, self.eps)  # validates; BN's gradient
        self.num_batches_tracked.add_(1)
        with torch.no_grad():
            r, d = self._corrections(input)
        shape = _channel_shape(input)
        out = x_hat * r.view(shape).to(x_hat.dtype) + d.view(shape).to(x_hat.dtype)
        if self.weight is not None:
            out = out * self.weight.view(shape)
        if self.bias is not None:
            out = out + self.bias.view(shape)
        return out

    def _corrections(self, input: Tensor) -> tuple[Tensor, Tensor]:
        """r and d from the batch and the running statistics, then the running update (as BatchNorm's)."""
        mean, var = NF._channel_moments(input)
        return self.corrections(mean, var, input.numel() // input.shape[1])

    def corrections(self, mean: Tensor, var: Tensor, count: int) -> tuple[Tensor, Tensor]:
        """r and d (each ``(C,)``) of a training batch whose per-channel mean and biased variance over ``count``
        values a channel are ``mean``, ``var``, then the running statistics' update with them (the variance
        unbiased, as BatchNorm's). Outside autograd; ``num_batches_tracked`` (which the warm-up reads) is the
        caller's to count first, as :meth:`forward` does."""
        running_mean, running_var = self.running_mean.to(mean.dtype), self.running_var.to(mean.dtype)
        sigma = (running_var + self.eps).sqrt()
        r_max, d_max = (t.to(mean.dtype) for t in self.limits())
        r = ((var + self.eps).sqrt() / sigma).clamp(1 / r_max, r_max)
        d = ((mean - running_mean) / sigma).clamp(-d_max, d_max)
        _lerp_buffer(self.running_mean, mean, self.momentum)
        _lerp_buffer(self.running_var, var * count / max(count - 1, 1), self.momentum)
        return r, d

    def extra_repr(self) -> str:
        return super().extra_repr() + f", r_max={self.r_max}, d_max={self.d_max}, warmup={self.warmup}"


class BatchRenorm1d(_BatchRenorm):
    __doc__ = _BatchRenorm.__doc__

    def _check_input_dim(self, input: Tensor) -> None:
        self._check_rank(input, (2, 3))


class BatchRenorm2d(_BatchRenorm):
    __doc__ = _BatchRenorm.__doc__

    def _check_input_dim(self, input: Tensor) -> None:
        self._check_rank(input, (4,))


class BatchRenorm3d(_BatchRenorm):
    __doc__ = _BatchRenorm.__doc__

    def _check_input_dim(self, input: Tensor) -> None:
        self._check_rank(input, (5,))


class _GhostBatchNorm(_BatchNorm):
    r"""Ghost Batch Normalization (Hoffer et al. 2017): in training, BatchNorm over consecutive virtual batches of
    ``virtual_batch_size`` examples (the last may be smaller), each updating the running statistics; in eval, plain
    BatchNorm. Same buffers and state_dict as BatchNorm.

    .. math:: y = \frac{x - \mathrm{E}_{v}[x]}{\sqrt{\mathrm{Var}_{v}[x] + \epsilon}}\,\gamma + \beta
              \quad\text{per channel, over each virtual batch } v

    Args:
        num_features: C, the number of channels.
        virtual_batch_size: examples per virtual batch, at least 2. Default: 32.
        eps, momentum, affine, track_running_stats, bias: as BatchNorm.

    Shape:
        - Input: ``(N, C)`` or ``(N, C, L)`` (1d), ``(N, C, H, W)`` (2d), ``(N, C, D, H, W)`` (3d); output: same.

    Examples::

        >>> import torch, normlab.nn as nl
        >>> gbn = nl.GhostBatchNorm2d(8, virtual_batch_size=4)
        >>> gbn(torch.randn(16, 8, 5, 5)).shape
        torch.Size([16, 8, 5, 5])
    """

    def __init__(
        self,
        num_features: int,
        virtual_batch_size: int = 32,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        _checks.check_num_features(type(self).__name__, virtual_batch_size, "virtual_batch_size")
        if virtual_batch_size < 2:
            raise ValueError(f"{type(self).__name__}: virtual_batch_size must be at least 2, got {virtual_batch_size}")
        self.virtual_batch_size = virtual_batch_size

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or input.shape[0] <= self.virtual_batch_size:
            return super().forward(input)
        return torch.cat(
            [super(_GhostBatchNorm, self).forward(chunk) for chunk in input.split(self.virtual_batch_size)]
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", virtual_batch_size={self.virtual_batch_size}"


class GhostBatchNorm1d(_GhostBatchNorm):
    __doc__ = _GhostBatchNorm.__doc__

    def _check_input_dim(self, input: Tensor) -> None:
        self._check_rank(input, (2, 3))


class GhostBatchNorm2d(_GhostBatchNorm):
    __doc__ = _GhostBatchNorm.__doc__

    def _check_input_dim(self, input: Tensor) -> None:
        self._check_rank(input, (4,))


class GhostBatchNorm3d(_GhostBatchNorm):
    __doc__ = _GhostBatchNorm.__doc__

    def _check_input_dim(self, input: Tensor) -> None:
        self._check_rank(input, (5,))


class _PowerNormFunction(torch.autograd.Function):
    """PowerNorm's normalization with its approximate backward (Shen et al. 2020, Algorithm 1)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        running_phi: Tensor,
        running_nu: Tensor,
        eps: float,
        alpha_fwd: float,
        alpha_bkw: float,
    ) -> Tensor:
        shape = _channel_shape(x)
        rstd = (running_phi + eps).rsqrt()
        x_hat = x * rstd.view(shape).to(x.dtype)
        with torch.no_grad():
            dims = (0,) + tuple(range(2, x.dim()))
            quad = x.detach().to(running_phi.dtype).square().mean(dim=dims)
            running_phi.mul_(alpha_fwd).add_((1 - alpha_fwd) * quad)
        ctx.save_for_backward(x_hat, rstd, running_nu)
        ctx.alpha_bkw = alpha_bkw
        return x_hat

    @staticmethod
    def backward(ctx: Any, grad_x_hat: Tensor) -> tuple[Tensor, None, None, None, None, None]:
        x_hat, rstd, running_nu = ctx.saved_tensors
        shape = _channel_shape(x_hat)
        dims = (0,) + tuple(range(2, x_hat.dim()))
        grad_x = (grad_x_hat - running_nu.view(shape).to(x_hat.dtype) * x_hat) * rstd.view(shape).to(x_hat.dtype)
        with torch.no_grad():
            gamma = (grad_x_hat * x_hat).to(running_nu.dtype).mean(dim=dims)
            running_nu.mul_(1 - (1 - ctx.alpha_bkw) * gamma).add_((1 - ctx.alpha_bkw) * gamma)
        return grad_x, None, None, None, None, None


def _power_norm_training_eager(
    x: Tensor, running_phi: Tensor, running_nu: Tensor, eps: float, alpha_fwd: float, alpha_bkw: float
) -> Tensor:
    return _PowerNormFunction.apply(x, running_phi, running_nu, eps, alpha_fwd, alpha_bkw)


_power_norm_training: Callable[..., Tensor] | None = None


def _resolve_power_norm_training() -> None:
    """Kept out of torch.compile: the backward updates ``running_nu`` in place, which compiled graphs do not replay
    (measured: compiled input gradients off by 3% from the second step on). ``torch.compiler.disable`` imports
    torch._dynamo (0.8 s), so it is applied when the first PowerNorm is built, not when normlab is imported."""
    global _power_norm_training
    if _power_norm_training is None:
        _power_norm_training = torch.compiler.disable(_power_norm_training_eager)


class PowerNorm(Twin):
    r"""PowerNorm (Shen et al. 2020): BatchNorm for transformers, without centering and with running statistics.

    .. math:: \hat x = x/\sqrt{\psi_{t-1}+\epsilon},\quad \psi_t = \alpha_f\psi_{t-1} + (1-\alpha_f)\,\overline{x^2},
              \quad y = \gamma\hat x+\beta

    The forward divides by the running quadratic mean of the previous steps, never the current batch's, which
    removes the fluctuating batch statistics from the forward pass. **Approximate backward** (the paper's): the
    gradient through :math:`\psi` is replaced by a running correction,
    :math:`\partial L/\partial x = (g - \nu_{t-1}\hat x)/\sqrt{\psi_{t-1}+\epsilon}` with
    :math:`g=\partial L/\partial\hat x` and :math:`\nu_t = \nu_{t-1}(1-(1-\alpha_b)\Gamma)+(1-\alpha_b)\Gamma`,
    :math:`\Gamma=\overline{g\,\hat x}` per channel. So its gradient is not the exact derivative of its forward.
    In training it runs outside ``torch.compile`` (a graph break): the backward's buffer update is not replayed by
    compiled graphs.

    Args:
        num_features: C. eps: > 0. alpha_fwd, alpha_bkw: the running-average rates (0.9 in the paper).
        affine: learnable per-channel weight and bias.

    Buffers: ``running_phi`` (init 1), ``running_nu`` (init 0).

    Shape:
        - Input: ``(N, C, *)``; output: same shape.

    Examples::

        >>> import torch, normlab.nn as nl
        >>> pn = nl.PowerNorm(16)
        >>> pn(torch.randn(8, 16)).shape
        torch.Size([8, 16])
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        alpha_fwd: float = 0.9,
        alpha_bkw: float = 0.9,
        affine: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        _resolve_power_norm_training()
        _checks.check_num_features("PowerNorm", num_features)
        _checks.check_eps("PowerNorm", eps)
        for name, a in (("alpha_fwd", alpha_fwd), ("alpha_bkw", alpha_bkw)):
            if not 0.0 <= a < 1.0:
                raise ValueError(f"PowerNorm: {name} must be in [0, 1), got {a}")
        self.num_features, self.eps, self.alpha_fwd, self.alpha_bkw, self.affine = (
            num_features,
            eps,
            alpha_fwd,
            alpha_bkw,
            affine,
        )
        kw = {"device": device, "dtype": dtype}
        self.weight = Parameter(torch.ones(num_features, **kw)) if affine else None
        self.bias = Parameter(torch.zeros(num_features, **kw)) if affine else None
        self.register_buffer("running_phi", torch.ones(num_features, **kw))
        self.register_buffer("running_nu", torch.zeros(num_features, **kw))
        self.running_phi: Tensor
        self.running_nu: Tensor

    def reset_parameters(self) -> None:
        self.running_phi.fill_(1)
        self.running_nu.zero_()
        if self.affine:  # then weight and bias are parameters
            init.ones_(cast(Tensor, self.weight))
            init.zeros_(cast(Tensor, self.bias))

    def forward(self, input: Tensor) -> Tensor:
        _checks.check_floating("PowerNorm", input)
        _checks.check_min_dim("PowerNorm", input, 2, "(N, C, *)")
        _checks.check_channels("PowerNorm", input, self.num_features)
        if self.training:
            _resolve_power_norm_training()  # a module unpickled in a fresh process skipped __init__
            # ignored: None is not callable; _resolve_power_norm_training() just set it
            x_hat = _power_norm_training(  # type: ignore[misc]
                input, self.running_phi, self.running_nu, self.eps, self.alpha_fwd, self.alpha_bkw
            )
        else:
            x_hat = input * (self.running_phi + self.eps).rsqrt().view(_channel_shape(input)).to(input.dtype)
        if self.affine:
            shape = _channel_shape(input)
            # ignored: None has no view; with affine, weight and bias are parameters
            x_hat = x_hat * self.weight.view(shape) + self.bias.view(shape)  # type: ignore[union-attr]
        return x_hat

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, alpha_fwd={self.alpha_fwd}, alpha_bkw={self.alpha_bkw}, "
            f"affine={self.affine}"
        )


class MeanOnlyBatchNorm(Twin):
    r"""Mean-only BatchNorm (Salimans & Kingma 2016, "Weight Normalization"), the companion of Weight Normalization.

    .. math:: y = x - \mu_c + \beta_c

    :math:`\mu_c`: the batch mean per channel over N and spatial positions in training (``running_mean`` updated
    with ``momentum``), ``running_mean`` in eval. No division: Weight Normalization already fixes the scale, and a
    mean is far less noisy over a small batch than a deviation. Batch-dependent in training.

    Args:
        num_features: C, the channels of the input.
        momentum: the running mean's update rate. Default: 0.1.

    Shape:
        - Input: :math:`(N, C, *)`. Output: the same.

    Examples::

        >>> import torch, normlab.nn as nl
        >>> mob = nl.MeanOnlyBatchNorm(3)
        >>> y = mob(torch.randn(16, 3, 4) + 5)
        >>> bool(y.mean(dim=(0, 2)).abs().max() < 1e-5)
        True
    """

    def __init__(self, num_features: int, momentum: float = 0.1, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        _checks.check_num_features("MeanOnlyBatchNorm", num_features)
        self.num_features, self.momentum = num_features, momentum
        kw = {"device": device, "dtype": dtype}
        self.bias = Parameter(torch.empty(num_features, **kw))
        self.register_buffer("running_mean", torch.empty(num_features, **kw))
        self.running_mean: Tensor
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        init.zeros_(self.running_mean)

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        _checks.check_floating("MeanOnlyBatchNorm", input)
        _checks.check_min_dim("MeanOnlyBatchNorm", input, 2, "(N, C, *)")
        _checks.check_channels("MeanOnlyBatchNorm", input, self.num_features)
        return NF.mean_only_batch_norm(input, self.running_mean, self.bias, self.training, self.momentum)

    def extra_repr(self) -> str:
        return f"{self.num_features}, momentum={self.momentum}"
