r"""Synchronized BatchNorm over ``torch.distributed``: exact for any split of the batch, on gloo (CPU) and NCCL.

Each rank reduces its own slice to a count, a mean and a sum of squared deviations (M2) per channel, and one
``all_gather`` merges them count-weighted (Chan et al.'s parallel variance):

.. math::
    n = \sum_r n_r,\qquad \mu = \frac{1}{n}\sum_r n_r\mu_r,\qquad
    M_2 = \sum_r M_{2,r} + \sum_r n_r(\mu_r-\mu)^2,\qquad \sigma^2 = M_2/n

so uneven slices (3 + 5), empty ranks and process-group subsets give the statistics of the concatenated batch,
never a mean of per-rank means. The backward needs the batch sums of :math:`\partial L/\partial y` and
:math:`\partial L/\partial y\cdot\hat x`: one ``all_reduce``. Parameter gradients stay local (DDP sums them).
Statistics travel in float64; a small header with the dtype travels with them, so ranks that disagree fail with
the same clear error instead of corrupting each other or aborting inside the backend.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .functional import _channel_moments, _channels_last_format

__all__ = ["sync_batch_norm", "check_peers", "world_size_of"]

_DTYPE_CODES = {torch.float16: 1.0, torch.bfloat16: 2.0, torch.float32: 3.0, torch.float64: 4.0}
_HEADER = 2  # channel count, dtype code


def world_size_of(process_group: Any) -> int:
    """Size of the group the statistics are synchronized over; 1 when torch.distributed is not running."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(process_group)


def _reduce_dims(x: Tensor) -> tuple[int, ...]:
    return (0,) + tuple(range(2, x.dim()))


def check_peers(input: Tensor, num_features: int, process_group: Any) -> None:
    """Fixed-size exchange of (channels, dtype) before the first synchronized step; the same ValueError on every rank.

    Needed once: gloo aborts the process when ranks gather tensors of different sizes.
    """
    mine = torch.tensor([float(num_features), _DTYPE_CODES[input.dtype]], dtype=torch.float64)
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size(process_group))]
    dist.all_gather(gathered, mine.to(_comm_device(input, process_group)), group=process_group)
    _raise_on_disagreement(torch.stack([g.cpu() for g in gathered]))


def _raise_on_disagreement(headers: Tensor) -> None:
    channels, dtypes = headers[:, 0].tolist(), headers[:, 1].tolist()
    if len(set(channels)) > 1:
        raise ValueError(
            f"SyncBatchNorm: ranks disagree on the channel count (num_features per rank: {[int(c) for c in channels]})"
        )
    if len(set(dtypes)) > 1:
        names = {v: str(k).replace("torch.", "") for k, v in _DTYPE_CODES.items()}
        raise ValueError(f"SyncBatchNorm: ranks disagree on the input dtype (per rank: {[names[d] for d in dtypes]})")


def _comm_device(input: Tensor, process_group: Any) -> torch.device:
    backend = dist.get_backend(process_group)
    return input.device if backend != "gloo" else torch.device("cpu")


def _local_stats(x: Tensor) -> Tensor:
    """``[count, mean(C), M2(C)]`` in float64 (the moments from :func:`normlab.functional._channel_moments`)."""
    channels = x.shape[1]
    count = x.numel() // channels if channels else 0
    if count == 0:
        zeros = torch.zeros(channels, dtype=torch.float64, device=x.device)
        return torch.cat([zeros.new_zeros(1), zeros, zeros])
    mean, var = _channel_moments(x)
    return torch.cat([mean.new_full((1,), float(count)), mean, var * count]).to(torch.float64)


def _merge(stats: Tensor, channels: int) -> tuple[Tensor, Tensor, Tensor]:
    """Count-weighted merge of per-rank ``[count, mean, M2]`` rows into the batch's (count, mean, biased var)."""
    counts, means, m2 = stats[:, 0], stats[:, 1 : 1 + channels], stats[:, 1 + channels :]
    total = counts.sum()
    mean = (counts[:, None] * means).sum(0) / total.clamp_min(1)
    m2_total = m2.sum(0) + (counts[:, None] * (means - mean) ** 2).sum(0)
    return total, mean, m2_total / total.clamp_min(1)


class _SyncBatchNorm(torch.autograd.Function):
    """Statistics merged across ranks; the elementwise work runs in ATen's fused eval-mode BN kernels."""

    @staticmethod
    def forward(
        ctx: Any,
        input: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        eps: float,
        factor: float | Tensor,
        process_group: Any,
    ) -> Tensor:
        channels = input.shape[1]
        header = torch.tensor([float(channels), _DTYPE_CODES[input.dtype]], dtype=torch.float64, device=input.device)
        mine = torch.cat([header, _local_stats(input)])
        device = _comm_device(input, process_group)
        gathered = [torch.empty_like(mine, device=device) for _ in range(dist.get_world_size(process_group))]
        dist.all_gather(gathered, mine.to(device), group=process_group)
        rows = torch.stack(gathered).to(input.device)
        _raise_on_disagreement(rows[:, :_HEADER].cpu())
        total, mean, var = _merge(rows[:, _HEADER:], channels)
        if int(total) == 1:
            raise ValueError(
                "SyncBatchNorm: expected more than 1 value per channel when training, got 1 over all ranks"
            )
        if running_mean is not None and int(total) > 0:
            with torch.no_grad():
                unbiased = var * total / (total - 1)
                running_mean.lerp_(mean.to(running_mean.dtype), factor)
                # ignored: the buffers come in pairs (sync_batch_norm's callers pass both or neither)
                running_var.lerp_(unbiased.to(running_var.dtype), factor)  # type: ignore[union-attr]
        stats_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
        mean, var = mean.to(stats_dtype), var.to(stats_dtype)
        # Normalizing with given statistics is eval-mode BatchNorm: one fused ATen pass.
        out = torch.nn.functional.batch_norm(input, mean, var, weight, bias, False, 0.0, eps)
        ctx.save_for_backward(input, weight, mean, var)
        ctx.total, ctx.eps, ctx.process_group = float(total), eps, process_group
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(
        ctx: Any, grad_output: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor | None, None, None, None, None, None]:
        input, weight, mean, var = ctx.saved_tensors
        grad_output = grad_output.contiguous(memory_format=_channels_last_format(input) or torch.contiguous_format)
        if input.numel() == 0:  # an empty rank still joins the all_reduce (ATen's kernel divides by its size)
            sum_dy = sum_dy_xhat = mean.new_zeros(input.shape[1])
            dx_frozen = torch.zeros_like(input)
        else:
            # Eval-mode backward: dx without the projection, and the per-channel sums dy, dy*x_hat (dbeta, dgamma).
            dx_frozen, sum_dy_xhat, sum_dy = torch.ops.aten.native_batch_norm_backward(
                grad_output, input, weight, mean, var, None, None, False, ctx.eps, [True, True, True]
            )
        channels, total = input.shape[1], max(ctx.total, 1.0)
        # A separate buffer: all_reduce works in place, and the local sums are the parameter gradients.
        summed = torch.cat([sum_dy, sum_dy_xhat]).to(_comm_device(input, ctx.process_group), torch.float64)
        dist.all_reduce(summed, group=ctx.process_group)
        summed = summed.to(input.device, mean.dtype)
        rstd = torch.rsqrt(var + ctx.eps)
        scale = rstd if weight is None else rstd * weight.to(mean.dtype)
        # dx = scale * (dy - mean(dy) - x_hat * mean(dy * x_hat)) = dx_frozen + k0 + k1 * x, per channel.
        k1 = -scale * rstd * summed[channels:] / total
        k0 = -scale * summed[:channels] / total - k1 * mean
        shape = (1, -1) + (1,) * (input.dim() - 2)
        grad_input = dx_frozen + (k0.view(shape) + k1.view(shape) * input).to(dx_frozen.dtype)
        grad_weight = sum_dy_xhat.to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        grad_bias = sum_dy.to(weight.dtype) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_input, grad_weight, grad_bias, None, None, None, None, None


def sync_batch_norm(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    eps: float,
    factor: float | Tensor,
    process_group: Any,
) -> Tensor:
    """BatchNorm in training with statistics over the whole ``process_group``'s batch (see the module docstring).

    Shapes: input ``(N_r, C, *)`` on each rank (N_r may differ, even be 0); weight, bias, buffers ``(C,)``.
    """
    return _SyncBatchNorm.apply(input, weight, bias, running_mean, running_var, eps, factor, process_group)
