r"""InstanceNorm1d/2d/3d: drop-in twins of ``torch.nn.InstanceNorm*d``.

Defaults as torch: ``affine=False, track_running_stats=False``. With ``track_running_stats=True`` the running
buffers are updated in training and used in eval. Unbatched input (no N dim) is accepted, as in torch.
Unlike torch, channels_last input gives channels_last output.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from .. import functional as NF
from .batchnorm import _NormBase

__all__ = ["InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"]


class _InstanceNorm(_NormBase):
    _spatial_dims: int

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)

    def _check_input_dim(self, input: Tensor) -> None:
        self._check_rank(input, (self._spatial_dims + 1, self._spatial_dims + 2))

    def _get_no_batch_dim(self) -> int:
        return self._spatial_dims + 1

    def _apply_instance_norm(self, input: Tensor) -> Tensor:
        use_input_stats = self.training or not self.track_running_stats
        running_mean, running_var, weight, bias = self.running_mean, self.running_var, self.weight, self.bias
        signature = (input.shape, input.dtype, type(input), use_input_stats, self.eps)
        if signature != self._checked:
            NF.check_instance_norm_args(
                "instance_norm", input, running_mean, running_var, weight, bias, use_input_stats, self.eps
            )
            self._checks_passed(signature)
        momentum = self.momentum if self.momentum is not None else 0.0
        return NF._instance_norm(input, running_mean, running_var, weight, bias, use_input_stats, momentum, self.eps)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        version = local_metadata.get("version", None)
        # Checkpoints from before torch 0.4 stored running stats that IN without tracking does not have.
        if version is None and not self.track_running_stats:
            keys = [prefix + n for n in ("running_mean", "running_var") if prefix + n in state_dict]
            if keys:
                error_msgs.append(
                    "Unexpected running stats buffer(s) {names} for {klass} with track_running_stats=False. "
                    "If state_dict is a checkpoint saved before 0.4.0, this may be expected because {klass} does "
                    "not track running stats by default since 0.4.0. Please remove these keys from state_dict. If "
                    "the running stats are actually needed, instead set track_running_stats=True in {klass}.".format(
                        names=" and ".join(f'"{k}"' for k in keys), klass=type(self).__name__
                    )
                )
                for key in keys:
                    state_dict.pop(key)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        feature_dim = input.dim() - self._get_no_batch_dim()
        if input.shape[feature_dim] != self.num_features:
            if self.affine or self.track_running_stats:
                self._check_channels(input, feature_dim)
            warnings.warn(
                f"input's size at dim={feature_dim} does not match num_features. You can silence this warning by "
                "not passing in num_features, which is not used because affine=False",
                stacklevel=2,
            )
        if input.dim() == self._get_no_batch_dim():
            return self._apply_instance_norm(input.unsqueeze(0)).squeeze(0)
        return self._apply_instance_norm(input)


_INSTANCE_NORM_DOC = r"""Instance Normalization (Ulyanov et al. 2016) over a {shape} input.

    .. math:: y = \frac{{x - \mathrm{{E}}[x]}}{{\sqrt{{\mathrm{{Var}}[x] + \epsilon}}}}\,\gamma + \beta

    Statistics per (example, channel) over S_i = ({axes}): independent of the batch. It needs a spatial extent of
    more than one element in training; feature vectors (MLP/RNN activations) have none, which is why IN does not
    apply there.

    Args:
        num_features: C, the number of channels.
        eps: added to the variance, > 0. Default: 1e-5.
        momentum: running-estimate update weight (``None`` means no update, as torch). Default: 0.1.
        affine: learnable per-channel ``weight`` and ``bias``. Default: False.
        track_running_stats: keep running estimates and use them in eval. Default: False.

    Shape:
        - Input: {shape_in}; output: same shape.

    Examples::

        >>> import torch, normlab.nn as nl
        >>> inorm = nl.{name}(8, affine=True)
        >>> inorm(torch.randn({example})).shape
        torch.Size([{example}])
    """


class InstanceNorm1d(_InstanceNorm, torch.nn.InstanceNorm1d):
    __doc__ = _INSTANCE_NORM_DOC.format(
        shape="2D (unbatched) or 3D",
        axes="L",
        shape_in="``(N, C, L)`` or ``(C, L)``",
        name="InstanceNorm1d",
        example="4, 8, 10",
    )
    _spatial_dims = 1


class InstanceNorm2d(_InstanceNorm, torch.nn.InstanceNorm2d):
    __doc__ = _INSTANCE_NORM_DOC.format(
        shape="3D (unbatched) or 4D",
        axes="H, W",
        shape_in="``(N, C, H, W)`` or ``(C, H, W)``",
        name="InstanceNorm2d",
        example="4, 8, 5, 5",
    )
    _spatial_dims = 2


class InstanceNorm3d(_InstanceNorm, torch.nn.InstanceNorm3d):
    __doc__ = _INSTANCE_NORM_DOC.format(
        shape="4D (unbatched) or 5D",
        axes="D, H, W",
        shape_in="``(N, C, D, H, W)`` or ``(C, D, H, W)``",
        name="InstanceNorm3d",
        example="2, 8, 3, 4, 4",
    )
    _spatial_dims = 3
