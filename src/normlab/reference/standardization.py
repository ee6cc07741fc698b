r"""Float64 reference for the standardizing methods: BatchNorm, LayerNorm, InstanceNorm, GroupNorm, RMSNorm.

All five are one operation over different sets S_i (see :mod:`normlab.reference.layout`):

.. math::
    \mu_i = \frac{1}{|S_i|}\sum_{k\in S_i} x_k, \qquad
    \sigma_i^2 = \frac{1}{|S_i|}\sum_{k\in S_i} (x_k-\mu_i)^2, \qquad
    \hat x_i = \frac{x_i-\mu_i}{\sqrt{\sigma_i^2+\epsilon}}, \qquad
    y_i = \gamma\,\hat x_i + \beta

RMSNorm drops the centering (:math:`\mu_i = 0`, :math:`\sigma_i^2 = \frac{1}{|S_i|}\sum x_k^2`).
The analytic backward, with means over S_i and :math:`g = \partial L/\partial \hat x = \gamma\,\partial L/\partial y`:

.. math::
    \frac{\partial L}{\partial x_i} = \frac{1}{\sqrt{\sigma_i^2+\epsilon}}
        \Big(g_i - \overline{g} - \hat x_i\,\overline{g\,\hat x}\Big)

(without the :math:`\overline{g}` term when not centering). Everything here is plain NumPy in float64: it is the
oracle the tests compare the torch modules with, and the place to read the formulas. Nothing here is fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np

from .layout import Layout, batch_layout, channel_layout, group_layout, instance_layout, layer_layout

__all__ = [
    "Saved",
    "standardize",
    "standardize_backward",
    "batch_norm",
    "batch_norm_inference",
    "layer_norm",
    "instance_norm",
    "group_norm",
    "rms_norm",
    "layer_norm_2d",
    "rms_norm_2d",
    "backward",
    "running_stats_update",
    "instance_running_stats_update",
]


@dataclass(frozen=True)
class Saved:
    """What the backward of a standardizing method needs from its forward."""

    layout: Layout
    x_hat: np.ndarray  # normalized input, input shape
    rstd: np.ndarray  # 1/sqrt(var+eps), the view's shape with reduced axes kept as size 1
    center: bool
    batch_statistics: bool  # False when the statistics were given (BN/IN in eval): they carry no gradient
    weight: np.ndarray | None  # already broadcastable against the input
    param_axes: tuple[int, ...]  # input axes the affine parameters live on
    has_bias: bool


@overload
def _f64(a: None) -> None: ...
@overload
def _f64(a: np.ndarray) -> np.ndarray: ...
def _f64(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.asarray(a, dtype=np.float64)


def standardize(
    x: np.ndarray, layout: Layout, eps: float, center: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardize ``x`` over the sets of ``layout``; returns ``(x_hat, mean, rstd)``, statistics with kept dims."""
    v = np.asarray(x, dtype=np.float64).reshape(layout.view)
    mean = v.mean(axis=layout.axes, keepdims=True) if center else np.zeros([1] * v.ndim)
    centered = v - mean
    var = (centered * centered).mean(axis=layout.axes, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    return (centered * rstd).reshape(layout.input_shape), mean, rstd


def standardize_backward(
    g: np.ndarray, x_hat: np.ndarray, rstd: np.ndarray, layout: Layout, center: bool = True
) -> np.ndarray:
    """Gradient through :func:`standardize`: ``rstd * (g - mean(g) - x_hat * mean(g * x_hat))`` over each set."""
    gv = np.asarray(g, dtype=np.float64).reshape(layout.view)
    hv = x_hat.reshape(layout.view)
    dx = gv - hv * (gv * hv).mean(axis=layout.axes, keepdims=True)
    if center:
        dx = dx - gv.mean(axis=layout.axes, keepdims=True)
    return (rstd * dx).reshape(layout.input_shape)


@overload
def _channel_param(p: None, ndim: int) -> None: ...
@overload
def _channel_param(p: np.ndarray, ndim: int) -> np.ndarray: ...
def _channel_param(p: np.ndarray | None, ndim: int) -> np.ndarray | None:
    if p is None:
        return None
    return _f64(p).reshape((1, -1) + (1,) * (ndim - 2))


def _affine(x_hat: np.ndarray, weight: np.ndarray | None, bias: np.ndarray | None) -> np.ndarray:
    y = x_hat if weight is None else x_hat * weight
    return y if bias is None else y + bias


def _channelwise(
    x: np.ndarray, layout: Layout, weight: np.ndarray | None, bias: np.ndarray | None, eps: float, center: bool = True
) -> tuple[np.ndarray, Saved]:
    x_hat, _, rstd = standardize(x, layout, eps, center)
    w, b = _channel_param(weight, x.ndim), _channel_param(bias, x.ndim)
    saved = Saved(layout, x_hat, rstd, center, True, w, (1,), bias is not None)
    return _affine(x_hat, w, b), saved


def batch_norm(
    x: np.ndarray, weight: np.ndarray | None = None, bias: np.ndarray | None = None, eps: float = 1e-5
) -> tuple[np.ndarray, Saved]:
    r"""BatchNorm in training: statistics per channel over S_i = {(n, s)}, i.e. the batch and spatial axes.

    x: ``(N, C, *spatial)``; weight, bias: ``(C,)``. Returns ``(y, saved)``; y has the shape of x.
    """
    return _channelwise(x, batch_layout(x.shape), weight, bias, eps)


def batch_norm_inference(
    x: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    eps: float = 1e-5,
) -> tuple[np.ndarray, Saved]:
    r"""BatchNorm (or InstanceNorm) in eval with running statistics:
    :math:`\hat x = (x-\hat\mu_c)/\sqrt{\hat\sigma_c^2+\epsilon}`.

    The statistics are constants, so
    :math:`\partial L/\partial x = \gamma\,\partial L/\partial y/\sqrt{\hat\sigma^2+\epsilon}`.
    x: ``(N, C, *spatial)``; running_mean, running_var, weight, bias: ``(C,)``.
    """
    x = _f64(x)
    layout = batch_layout(x.shape)
    mean = _channel_param(running_mean, x.ndim)
    rstd_b = 1.0 / np.sqrt(_channel_param(running_var, x.ndim) + eps)
    x_hat = (x - mean) * rstd_b
    rstd_view = rstd_b.reshape((1, -1, 1))
    w, b = _channel_param(weight, x.ndim), _channel_param(bias, x.ndim)
    saved = Saved(layout, x_hat, rstd_view, True, False, w, (1,), bias is not None)
    return _affine(x_hat, w, b), saved


def instance_norm(
    x: np.ndarray, weight: np.ndarray | None = None, bias: np.ndarray | None = None, eps: float = 1e-5
) -> tuple[np.ndarray, Saved]:
    r"""InstanceNorm: statistics per (n, c) over S_i = spatial positions.
    x: ``(N, C, *spatial)``, weight/bias ``(C,)``."""
    return _channelwise(x, instance_layout(x.shape), weight, bias, eps)


def group_norm(
    x: np.ndarray,
    num_groups: int,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    eps: float = 1e-5,
) -> tuple[np.ndarray, Saved]:
    r"""GroupNorm: statistics per (n, g) over the C/G channels of group g and all spatial positions.

    x: ``(N, C, *spatial)`` with C divisible by G; weight/bias ``(C,)`` (per channel, not per group).
    """
    return _channelwise(x, group_layout(x.shape, num_groups), weight, bias, eps)


def _trailing(
    x: np.ndarray,
    normalized_shape: Sequence[int],
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    eps: float,
    center: bool,
) -> tuple[np.ndarray, Saved]:
    layout = layer_layout(x.shape, normalized_shape)
    x_hat, _, rstd = standardize(x, layout, eps, center)
    k = len(normalized_shape)
    saved = Saved(layout, x_hat, rstd, center, True, _f64(weight), tuple(range(x.ndim - k, x.ndim)), bias is not None)
    return _affine(x_hat, _f64(weight), _f64(bias)), saved


def layer_norm(
    x: np.ndarray,
    normalized_shape: Sequence[int],
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    eps: float = 1e-5,
) -> tuple[np.ndarray, Saved]:
    r"""LayerNorm: statistics per row over the trailing ``normalized_shape`` dims; weight/bias of that shape."""
    return _trailing(x, tuple(normalized_shape), weight, bias, eps, center=True)


def rms_norm(
    x: np.ndarray,
    normalized_shape: Sequence[int],
    weight: np.ndarray | None = None,
    eps: float = 1.1920928955078125e-07,
) -> tuple[np.ndarray, Saved]:
    r"""RMSNorm: :math:`y = \gamma\,x/\sqrt{\frac{1}{K}\sum_k x_k^2+\epsilon}` over the trailing dims, no centering.

    The default eps is float32's machine epsilon, what torch uses for ``eps=None`` on float32 input.
    """
    return _trailing(x, tuple(normalized_shape), weight, None, eps, center=False)


def layer_norm_2d(
    x: np.ndarray, weight: np.ndarray | None = None, bias: np.ndarray | None = None, eps: float = 1e-6
) -> tuple[np.ndarray, Saved]:
    r"""LayerNorm over the channels of ``(N, C, *spatial)`` at each position (ConvNeXt's LayerNorm2d): statistics
    per (n, s) over S_i = the C channels; weight/bias ``(C,)``."""
    return _channelwise(x, channel_layout(np.shape(x)), weight, bias, eps)


def rms_norm_2d(x: np.ndarray, weight: np.ndarray | None = None, eps: float = 1e-6) -> tuple[np.ndarray, Saved]:
    r"""RMSNorm over the channels of ``(N, C, *spatial)`` at each position, no centering; weight ``(C,)``."""
    return _channelwise(x, channel_layout(np.shape(x)), weight, None, eps, center=False)


def backward(dy: np.ndarray, saved: Saved) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Analytic gradient of any method above: returns ``(dx, dweight, dbias)`` (None where there is no parameter)."""
    dy = _f64(dy)
    reduce_axes = tuple(i for i in range(dy.ndim) if i not in saved.param_axes)
    g = dy if saved.weight is None else dy * saved.weight
    if saved.batch_statistics:
        dx = standardize_backward(g, saved.x_hat, saved.rstd, saved.layout, saved.center)
    else:
        dx = (g.reshape(saved.layout.view) * saved.rstd).reshape(dy.shape)
    dweight = None if saved.weight is None else (dy * saved.x_hat).sum(axis=reduce_axes)
    dbias = dy.sum(axis=reduce_axes) if saved.has_bias else None
    return dx, dweight, dbias


def _unbiased(var: np.ndarray, count: int) -> np.ndarray:
    return var * count / max(count - 1, 1)


def running_stats_update(
    running_mean: np.ndarray, running_var: np.ndarray, x: np.ndarray, factor: float
) -> tuple[np.ndarray, np.ndarray]:
    r"""BatchNorm's buffers after one training step: :math:`r \leftarrow (1-m)\,r + m\,s` with s the batch mean and
    the *unbiased* batch variance (n/(n-1) times the one used to normalize). ``factor`` is the momentum, or
    1/num_batches_tracked for the cumulative average (``momentum=None``).
    """
    layout = batch_layout(x.shape)
    v = _f64(x).reshape(layout.view)
    mean = v.mean(axis=layout.axes)
    var = _unbiased(v.var(axis=layout.axes), layout.values_per_statistic)
    return (1 - factor) * _f64(running_mean) + factor * mean, (1 - factor) * _f64(running_var) + factor * var


def instance_running_stats_update(
    running_mean: np.ndarray, running_var: np.ndarray, x: np.ndarray, factor: float
) -> tuple[np.ndarray, np.ndarray]:
    """InstanceNorm's buffers (``track_running_stats=True``): per-instance mean and unbiased variance, averaged over
    the batch, then the same exponential update as BatchNorm."""
    layout = instance_layout(x.shape)
    v = _f64(x).reshape(layout.view)
    mean = v.mean(axis=2).mean(axis=0)
    var = _unbiased(v.var(axis=2), layout.values_per_statistic).mean(axis=0)
    return (1 - factor) * _f64(running_mean) + factor * mean, (1 - factor) * _f64(running_var) + factor * var
