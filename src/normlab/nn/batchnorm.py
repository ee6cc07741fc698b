r"""BatchNorm1d/2d/3d: drop-in twins of ``torch.nn.BatchNorm*d``.

Same constructor signatures and defaults, same parameters and buffers (``weight``, ``bias``, ``running_mean``,
``running_var``, ``num_batches_tracked``) with the same names, dtypes and shapes, the same ``_version = 2``
state_dict hook, and the same train/eval semantics, so checkpoints load both ways.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
from torch import Tensor
from torch.nn import Module, Parameter, init

from .. import _checks
from .. import functional as NF
from ._state import carry_state
from ._twin import Twin, torch_base

if TYPE_CHECKING:

    class _NormAct(Protocol):
        """What convert_sync_batchnorm uses of a norm+act module (norm_act imports this module, not the reverse)."""

        def split(self) -> tuple[Module, Module]: ...

        @staticmethod
        def join(norm: Module, act: Module) -> Module: ...


__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"]


class _NormBase(Twin):
    """Parameters, buffers and state_dict contract shared by BatchNorm and InstanceNorm (as torch's _NormBase)."""

    _version = 2
    __constants__ = ["track_running_stats", "momentum", "eps", "num_features", "affine"]
    num_features: int
    eps: float
    momentum: float | None
    affine: bool
    track_running_stats: bool

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()  # Twin's: Module's own, not torch's (this one builds the same state, with checks)
        _checks.check_num_features(type(self).__name__, num_features)
        _checks.check_real(type(self).__name__, "eps", eps)  # its range is checked at forward, as torch does
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if self.affine:
            self.weight = Parameter(torch.empty(num_features, **factory_kwargs))
            if bias:
                self.bias = Parameter(torch.empty(num_features, **factory_kwargs))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory_kwargs))
            self.register_buffer("running_var", torch.ones(num_features, **factory_kwargs))
            self.running_mean: Tensor | None
            self.running_var: Tensor | None
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
            self.num_batches_tracked: Tensor | None
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:  # then the buffers are tensors
            cast(Tensor, self.running_mean).zero_()
            cast(Tensor, self.running_var).fill_(1)
            cast(Tensor, self.num_batches_tracked).zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def _check_input_dim(self, input: Tensor) -> None:
        raise NotImplementedError

    def _check_rank(self, input: Tensor, ranks: tuple[int, ...]) -> None:
        if input.dim() not in ranks:
            expected = " or ".join(f"{r}D" for r in ranks)
            raise ValueError(f"{type(self).__name__}: expected {expected} input (got {input.dim()}D input)")

    def _check_channels(self, input: Tensor, channel_dim: int = 1) -> None:
        _checks.check_channels(type(self).__name__, input, self.num_features, dim=channel_dim)

    def extra_repr(self) -> str:
        return (
            "{num_features}, eps={eps}, momentum={momentum}, affine={affine}, "
            "bias={use_bias}, track_running_stats={track_running_stats}".format(
                **self.__dict__, use_bias=self.bias is not None
            )
        )

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
        if (version is None or version < 2) and self.track_running_stats:
            # Version 2 added num_batches_tracked; older checkpoints start it at 0.
            key = prefix + "num_batches_tracked"
            if key not in state_dict:
                state_dict[key] = (
                    self.num_batches_tracked
                    if self.num_batches_tracked is not None and self.num_batches_tracked.device != torch.device("meta")
                    else torch.tensor(0, dtype=torch.long)
                )
        super()._load_from_state_dict(  # Twin's: Module's, so torch's does not repeat the version handling
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def _lerp_buffer(buffer: Tensor, batch_value: Tensor, factor: float | Tensor) -> None:
    """``buffer <- (1 - factor) * buffer + factor * batch_value``, computed in the statistics' precision (at least
    float32, as ATen) and stored in the buffer's dtype."""
    buffer.copy_(buffer.to(batch_value.dtype).lerp(batch_value, factor))


class _BatchNorm(_NormBase):
    def _forward_cumulative(self, input: Tensor) -> Tensor:
        """Training with ``momentum=None``: running stats are the plain average over all batches so far.

        torch computes the factor as ``1 / float(num_batches_tracked)``, a host read of a tensor that breaks
        ``torch.compile(fullgraph=True)``; here the factor stays a tensor and the update is a lerp.
        """
        # tracking running statistics: the buffers are tensors
        cast(Tensor, self.num_batches_tracked).add_(1)
        out = NF.batch_norm(input, None, None, self.weight, self.bias, True, 0.0, self.eps)
        if input.numel() > 0:  # ATen leaves the buffers alone for an empty batch
            with torch.no_grad():
                mean, var = NF._channel_moments(input)
                count = input.numel() // input.shape[1]
                factor = cast(Tensor, self.num_batches_tracked).to(mean.dtype).reciprocal()
                _lerp_buffer(cast(Tensor, self.running_mean), mean, factor)
                _lerp_buffer(cast(Tensor, self.running_var), var * count / max(count - 1, 1), factor)
        return out

    def forward(self, input: Tensor) -> Tensor:
        training, momentum = self.training, self.momentum
        if training and momentum is None and self.track_running_stats:
            self._check_input_dim(input)
            self._check_channels(input)
            return self._forward_cumulative(input)
        running_mean, running_var, weight, bias = self.running_mean, self.running_var, self.weight, self.bias
        # Batch statistics in training, and in eval when there are no running buffers to use.
        use_batch_stats = training or (running_mean is None and running_var is None)
        if training and self.track_running_stats:
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
        elif training:  # buffers are passed only to be updated (training and tracking) or to normalize (eval)
            running_mean = running_var = None
        # The checks look at shapes, dtypes and Python numbers only: they run again when one of those changes.
        signature = (
            input.shape,
            input.dtype,
            type(input),
            use_batch_stats,
            self.eps,
            running_mean is None,
            weight is None,
        )
        if signature != self._checked:
            self._check_input_dim(input)
            self._check_channels(input)
            NF.check_batch_norm_args(
                "batch_norm", input, running_mean, running_var, weight, bias, use_batch_stats, self.eps
            )
            self._checks_passed(signature)
        return NF._batch_norm(
            input,
            running_mean,
            running_var,
            weight,
            bias,
            use_batch_stats,
            0.0 if momentum is None else momentum,
            self.eps,
        )


_BATCH_NORM_DOC = r"""Batch Normalization (Ioffe & Szegedy 2015) over a {shape} input.

    .. math:: y = \frac{{x - \mathrm{{E}}[x]}}{{\sqrt{{\mathrm{{Var}}[x] + \epsilon}}}}\,\gamma + \beta

    Statistics per channel over S_i = (N, {axes}): batch-dependent. In training the biased batch variance
    normalizes, and the running estimates are updated with momentum (``None``: cumulative average) using the
    unbiased one; in eval the running estimates normalize. ``track_running_stats=False`` sets the buffers to None
    and uses batch statistics in eval too.

    Args:
        num_features: C, the number of channels.
        eps: added to the variance; > 0 in training, >= 0 in eval (checked at forward, as torch does). Default: 1e-5.
        momentum: weight of the current batch in the running estimates, or None. Default: 0.1.
        affine: learnable per-channel ``weight`` (gamma, init 1) and ``bias`` (beta, init 0). Default: True.
        track_running_stats: keep ``running_mean``, ``running_var``, ``num_batches_tracked``. Default: True.
        bias: with ``affine``, also learn ``bias``. Default: True.

    Shape:
        - Input: {shape_in}; output: same shape (channels_last stays channels_last).

    Examples::

        >>> import torch, normlab.nn as nl
        >>> bn = nl.{name}(8)
        >>> bn(torch.randn({example})).shape
        torch.Size([{example}])
    """


class BatchNorm1d(_BatchNorm, torch.nn.BatchNorm1d):
    __doc__ = _BATCH_NORM_DOC.format(
        shape="2D or 3D", axes="L", shape_in="``(N, C)`` or ``(N, C, L)``", name="BatchNorm1d", example="4, 8, 10"
    )

    def _check_input_dim(self, input: Tensor) -> None:
        self._check_rank(input, (2, 3))


class BatchNorm2d(_BatchNorm, torch.nn.BatchNorm2d):
    __doc__ = _BATCH_NORM_DOC.format(
        shape="4D", axes="H, W", shape_in="``(N, C, H, W)``", name="BatchNorm2d", example="4, 8, 5, 5"
    )

    def _check_input_dim(self, input: Tensor) -> None:
        self._check_rank(input, (4,))


class BatchNorm3d(_BatchNorm, torch.nn.BatchNorm3d):
    __doc__ = _BATCH_NORM_DOC.format(
        shape="5D", axes="D, H, W", shape_in="``(N, C, D, H, W)``", name="BatchNorm3d", example="2, 8, 3, 4, 4"
    )

    def _check_input_dim(self, input: Tensor) -> None:
        self._check_rank(input, (5,))


_TORCH_BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)


def _converts_to_sync(cls: type) -> bool:
    """Whether convert_sync_batchnorm replaces a module of class ``cls``: torch's BatchNorm classes and normlab's
    twins of them, by exact class (a subclass, timm's ``BatchNormAct2d`` say, has behaviour a SyncBatchNorm drops)."""
    return cls in _TORCH_BATCH_NORMS or torch_base(cls) in _TORCH_BATCH_NORMS


# Not a torch.nn.SyncBatchNorm: DistributedDataParallel refuses any instance of that class on CPU ("SyncBatchNorm
# layers only work with GPU modules"), and running on CPU with gloo is what this one is for. It is a torch
# _BatchNorm, as torch's SyncBatchNorm is, so tools that look for batch norms by that base find it.
class SyncBatchNorm(_BatchNorm, torch.nn.modules.batchnorm._BatchNorm):
    r"""Batch Normalization with statistics over the whole batch of a ``torch.distributed`` process group.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}}\,\gamma + \beta

    with the mean and variance per channel over every rank's examples and spatial positions.

    Drop-in for ``torch.nn.SyncBatchNorm`` (same signature, buffers and state_dict), and it also runs on CPU with
    gloo. In training with more than one rank, each rank's slice is reduced to (count, mean, M2) per channel and
    one ``all_gather`` merges them count-weighted, so any split of the batch (uneven, empty ranks, a subset group)
    gives exactly the statistics of the concatenated batch; the backward takes one ``all_reduce``. In eval, or when
    torch.distributed is not initialized, or the group has one rank, it is plain BatchNorm: no collective.

    Args:
        as :class:`BatchNorm2d`, plus ``process_group``: the group to synchronize over (default: the whole world).

    Shape:
        - Input: ``(N, C, *)`` with N allowed to differ between ranks (also 0); output: same shape.

    Examples::

        >>> import torch, normlab.nn as nl
        >>> sbn = nl.SyncBatchNorm(8)  # without an initialized process group: plain BatchNorm
        >>> sbn(torch.randn(4, 8, 5, 5)).shape
        torch.Size([4, 8, 5, 5])
        >>> model = nl.SyncBatchNorm.convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(8)))
        >>> type(model[0]).__name__
        'SyncBatchNorm'
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any | None = None,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self.process_group = process_group
        self._peers_checked = False

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"SyncBatchNorm: expected at least 2D input (got {input.dim()}D input)")

    def _group(self) -> Any:
        import torch.distributed as dist

        if self.process_group is not None and not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "SyncBatchNorm: process_group is set but torch.distributed is not initialized; call "
                "torch.distributed.init_process_group first (or leave process_group=None for single-process BN)"
            )
        return self.process_group

    def forward(self, input: Tensor) -> Tensor:
        from .. import distributed

        self._check_input_dim(input)
        self._check_channels(input)
        group = self._group()
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        if not (use_batch_stats and self.training and distributed.world_size_of(group) > 1):
            return super().forward(input)
        if group is None:
            import torch.distributed as dist

            group = dist.group.WORLD
        _checks.check_batch_norm_eps(type(self).__name__, self.eps, training=True)
        if not self._peers_checked:
            distributed.check_peers(input, self.num_features, group)
            self._peers_checked = True
        factor: float | Tensor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:  # then the buffers are tensors
            num_batches_tracked = cast(Tensor, self.num_batches_tracked)
            num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = num_batches_tracked.to(cast(Tensor, self.running_mean).dtype).reciprocal()
        tracked = self.track_running_stats
        return distributed.sync_batch_norm(
            input,
            self.weight,
            self.bias,
            self.running_mean if tracked else None,
            self.running_var if tracked else None,
            self.eps,
            factor,
            group,
        )

    @classmethod
    def convert_sync_batchnorm(cls, module: Module, process_group: Any | None = None) -> Module:
        """Replace every BatchNorm1d/2d/3d (torch's or normlab's) in ``module`` by a SyncBatchNorm over
        ``process_group``, carrying the same parameter and buffer objects; returns the module (or the new layer if
        ``module`` itself is a BatchNorm). A norm+act BatchNorm (``BatchNormAct2d``) becomes ``SyncBatchNormAct``
        with the same activation (torch's ``convert_sync_batchnorm`` would drop the activation)."""

        norm_class = getattr(type(module), "norm_class", None)  # norm+act (normlab.nn.norm_act)
        if norm_class is not None and _converts_to_sync(norm_class):
            norm_act = cast("_NormAct", module)
            norm, act = norm_act.split()
            return type(norm_act).join(cls.convert_sync_batchnorm(norm, process_group), act)
        if _converts_to_sync(type(module)):
            bn = cast(torch.nn.modules.batchnorm._BatchNorm, module)  # torch's BatchNorm or a twin of one
            converted = cls(
                bn.num_features,
                bn.eps,
                bn.momentum,
                bn.affine,
                bn.track_running_stats,
                process_group,
                device="meta",
                bias=bn.bias is not None or not bn.affine,
            )
            carry_state(module, converted)
            if hasattr(module, "qconfig"):
                converted.qconfig = module.qconfig
            return converted
        for name, child in module.named_children():
            new_child = cls.convert_sync_batchnorm(child, process_group)
            if new_child is not child:
                setattr(module, name, new_child)
        return module
