r"""Float64 reference for the per-example and elementwise methods beyond the Group Norm paper's four:
Filter Response Normalization + TLU, EvoNorm-B0/S0, Switchable Normalization, DyT, Local Response Normalization.

- FRN (Singh & Krishnan 2019): :math:`\nu^2 = \overline{x^2}` over spatial per (n, c) (no centering),
  :math:`y = \max(\gamma x/\sqrt{\nu^2+|\epsilon|} + \beta,\ \tau)`, the max being the TLU.
- EvoNorm-B0 (Liu et al. 2020):
  :math:`y = \gamma\,\frac{x}{\max(\sqrt{\sigma^2_{batch}+\epsilon},\ v_1x+\sqrt{\sigma^2_{inst}+\epsilon})}+\beta`.
- EvoNorm-S0: :math:`y = \gamma\,\frac{x\,\mathrm{sigmoid}(v_1x)}{\sqrt{\sigma^2_{group}+\epsilon}}+\beta`.
- Switchable Normalization (Luo et al. 2018): mean and variance are softmax-weighted mixtures of the IN, LN and BN
  ones; one-hot weights give back one of them.
- DyT (Zhu et al. 2025): :math:`y = \gamma\tanh(\alpha x)+\beta`, no statistics at all.
- GRN (Woo et al. 2023, ConvNeXt V2): :math:`G_{nc} = \lVert x_{nc\cdot}\rVert_2` over spatial positions,
  :math:`N_{nc} = G_{nc}/(\frac{1}{C}\sum_{c'}G_{nc'}+\epsilon)`, :math:`y = \gamma x N + \beta + x`.
- LRN (Krizhevsky et al. 2012, torch's form):
  :math:`b_c = a_c\big/\big(k+\frac{\alpha}{n}\sum_{c'\in w(c)}a_{c'}^2\big)^\beta`
  over a window of n channels (zero-padded).
"""

from __future__ import annotations

from typing import cast

import numpy as np
import numpy.typing as npt

from .layout import Layout, batch_layout, group_layout, instance_layout
from .standardization import Saved, _affine, _channel_param, backward, standardize

__all__ = [
    "filter_response_norm",
    "filter_response_norm_backward",
    "evonorm_b0",
    "evonorm_s0",
    "switchable_norm",
    "dynamic_tanh",
    "dynamic_tanh_backward",
    "local_response_norm",
    "local_response_norm_backward",
    "evonorm_b0_backward",
    "evonorm_s0_backward",
    "switchable_norm_backward",
    "global_response_norm",
    "global_response_norm_backward",
]


def _f(a: npt.ArrayLike) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def filter_response_norm(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, tau: np.ndarray | None = None, eps: float = 1e-6
) -> tuple[np.ndarray, tuple[Saved, np.ndarray, np.ndarray | None]]:
    """FRN (+ TLU when ``tau`` is given). x ``(N, C, *spatial)``; weight, bias, tau ``(C,)``. Returns ``(y, saved)``."""
    x = _f(x)
    x_hat, _, rstd = standardize(x, instance_layout(x.shape), abs(eps), center=False)
    pre = x_hat * _channel_param(weight, x.ndim) + _channel_param(bias, x.ndim)
    y = pre if tau is None else np.maximum(pre, _channel_param(tau, x.ndim))
    saved = Saved(instance_layout(x.shape), x_hat, rstd, False, True, _channel_param(weight, x.ndim), (1,), True)
    return y, (saved, pre, tau)


def filter_response_norm_backward(
    dy: np.ndarray, saved_pre_tau: tuple[Saved, np.ndarray, np.ndarray | None]
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Gradients ``(dx, dweight, dbias, dtau)``: the TLU routes each gradient to the larger of its two inputs."""
    saved, pre, tau = saved_pre_tau
    dy = _f(dy)
    axes = (0,) + tuple(range(2, dy.ndim))
    if tau is None:
        return (*backward(dy, saved), None)
    through = pre >= _channel_param(tau, dy.ndim)
    dx, dw, db = backward(dy * through, saved)
    return dx, dw, db, (dy * ~through).sum(axis=axes)


def _var(x: np.ndarray, layout: Layout) -> np.ndarray:
    v = x.reshape(layout.view)
    var = v.var(axis=layout.axes, keepdims=True)
    return np.broadcast_to(var, layout.view).reshape(layout.input_shape)


def evonorm_b0(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    v1: np.ndarray,
    eps: float = 1e-5,
    running_var: np.ndarray | None = None,
    training: bool = True,
) -> np.ndarray:
    """EvoNorm-B0. In training the batch variance (over N, spatial) is used; in eval ``running_var``."""
    return _evonorm_b0_parts(_f(x), weight, bias, v1, eps, running_var, training)[0]


def _evonorm_b0_parts(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    v1: np.ndarray,
    eps: float,
    running_var: np.ndarray | None = None,
    training: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    nd = x.ndim
    # in eval, running_var is given
    batch_var = _var(x, batch_layout(x.shape)) if training else _channel_param(cast(np.ndarray, running_var), nd)
    batch_std = np.sqrt(batch_var + eps)
    inst_std = np.sqrt(_var(x, instance_layout(x.shape)) + eps)
    inst_term = _channel_param(v1, nd) * x + inst_std
    den = np.maximum(batch_std, inst_term)
    return x / den * _channel_param(weight, nd) + _channel_param(bias, nd), batch_std, inst_std, inst_term, den


def _std_backward(d_std: np.ndarray, x: np.ndarray, layout: Layout, eps: float) -> np.ndarray:
    """Gradient through :math:`s = \\sqrt{\\mathrm{var}_S(x)+\\epsilon}` per set S of ``layout``, given
    ``d_std`` per element (summed over each set): :math:`\\partial s/\\partial x_i = (x_i-\\mu)/(|S|\\,s)`."""
    v = x.reshape(layout.view)
    total = d_std.reshape(layout.view).sum(axis=layout.axes, keepdims=True)
    centered = v - v.mean(axis=layout.axes, keepdims=True)
    s = np.sqrt(v.var(axis=layout.axes, keepdims=True) + eps)
    return (total * centered / (layout.values_per_statistic * s)).reshape(x.shape)


def evonorm_b0_backward(
    dy: np.ndarray, x: np.ndarray, weight: np.ndarray, bias: np.ndarray, v1: np.ndarray, eps: float = 1e-5
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r"""Gradients ``(dx, dweight, dbias, dv1)`` of :func:`evonorm_b0` in training. The max routes the gradient of
    the denominator :math:`\partial L/\partial d = -\gamma\,\partial L/\partial y\; x/d^2` to the branch that won:
    the batch deviation (through the batch variance) or :math:`v_1x + \sqrt{\sigma^2_I+\epsilon}`."""
    x, dy = _f(x), _f(dy)
    nd = x.ndim
    axes = (0,) + tuple(range(2, nd))
    _, batch_std, _, inst_term, den = _evonorm_b0_parts(x, weight, bias, v1, eps)
    w = _channel_param(weight, nd)
    d_den = -dy * w * x / den**2
    batch_wins = batch_std >= inst_term
    d_batch = np.where(batch_wins, d_den, 0.0)
    d_inst = np.where(batch_wins, 0.0, d_den)
    dx = dy * w / den
    dx = dx + _std_backward(d_batch, x, batch_layout(x.shape), eps)
    dx = dx + d_inst * _channel_param(v1, nd)
    dx = dx + _std_backward(d_inst, x, instance_layout(x.shape), eps)
    return dx, (dy * x / den).sum(axes), dy.sum(axes), (d_inst * x).sum(axes)


def evonorm_s0(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, v1: np.ndarray, groups: int, eps: float = 1e-5
) -> np.ndarray:
    """EvoNorm-S0 with ``groups`` groups."""
    x = _f(x)
    nd = x.ndim
    group_std = np.sqrt(_var(x, group_layout(x.shape, groups)) + eps)
    swish = x / (1 + np.exp(-_channel_param(v1, nd) * x))
    return swish / group_std * _channel_param(weight, nd) + _channel_param(bias, nd)


def evonorm_s0_backward(
    dy: np.ndarray,
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    v1: np.ndarray,
    groups: int,
    eps: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r"""Gradients ``(dx, dweight, dbias, dv1)`` of :func:`evonorm_s0`. With :math:`\sigma = \mathrm{sigmoid}(v_1x)`,
    :math:`a = x\sigma`: :math:`\partial a/\partial x = \sigma + v_1x\sigma(1-\sigma)`,
    :math:`\partial a/\partial v_1 = x^2\sigma(1-\sigma)`, and the group deviation
    :math:`s` takes :math:`-\sum_{g}\gamma\,\partial L/\partial y\;a/s^2`."""
    x, dy = _f(x), _f(dy)
    nd = x.ndim
    axes = (0,) + tuple(range(2, nd))
    layout = group_layout(x.shape, groups)
    std = np.sqrt(_var(x, layout) + eps)
    v = _channel_param(v1, nd)
    sig = 1 / (1 + np.exp(-v * x))
    a = x * sig
    g = dy * _channel_param(weight, nd)
    dx = g * (sig + v * x * sig * (1 - sig)) / std
    dx = dx + _std_backward(-g * a / std**2, x, layout, eps)
    dv1 = (g * x * x * sig * (1 - sig) / std).sum(axes)
    return dx, (dy * a / std).sum(axes), dy.sum(axes), dv1


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(_f(z) - np.max(z))
    return e / e.sum()


def _switchable_statistics(
    x: np.ndarray,
    running_mean: np.ndarray | None = None,
    running_var: np.ndarray | None = None,
    training: bool = True,
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Means and variances of IN (per n, c), LN (per n) and BN (per c), shaped to broadcast over ``(N, C, S)``."""
    n, c = x.shape[:2]
    v = x.reshape(n, c, -1)
    means = [v.mean(2, keepdims=True), v.mean((1, 2), keepdims=True)]
    variances = [v.var(2, keepdims=True), v.var((1, 2), keepdims=True)]
    if training:
        means.append(v.mean((0, 2), keepdims=True))
        variances.append(v.var((0, 2), keepdims=True))
    else:  # running_mean and running_var are given in eval
        means.append(_f(cast(np.ndarray, running_mean)).reshape(1, c, 1))
        variances.append(_f(cast(np.ndarray, running_var)).reshape(1, c, 1))
    return v, means, variances


def switchable_norm(
    x: np.ndarray,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    mean_weight: np.ndarray,
    var_weight: np.ndarray,
    eps: float = 1e-5,
    running_mean: np.ndarray | None = None,
    running_var: np.ndarray | None = None,
    training: bool = True,
) -> np.ndarray:
    r"""Switchable Normalization: :math:`\mu = \sum_k w_k\mu_k`, :math:`\sigma^2 = \sum_k w'_k\sigma^2_k` over
    k in (IN, LN, BN), :math:`w = \mathrm{softmax}` of ``mean_weight``, :math:`w'` of ``var_weight`` (3 logits each),
    :math:`y = \gamma(x-\mu)/\sqrt{\sigma^2+\epsilon}+\beta`. In eval the BN statistics are
    ``running_mean``/``running_var``."""
    x = _f(x)
    v, means, variances = _switchable_statistics(x, running_mean, running_var, training)
    wm, wv = _softmax(mean_weight), _softmax(var_weight)
    mean = sum(w * m for w, m in zip(wm, means, strict=True))
    var = sum(w * s for w, s in zip(wv, variances, strict=True))
    y = ((v - mean) / np.sqrt(var + eps)).reshape(x.shape)
    return _affine(y, _channel_param(weight, x.ndim), _channel_param(bias, x.ndim))


def _softmax_backward(w: np.ndarray, dw: np.ndarray) -> np.ndarray:
    return w * (dw - (w * dw).sum())


def switchable_norm_backward(
    dy: np.ndarray,
    x: np.ndarray,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    mean_weight: np.ndarray,
    var_weight: np.ndarray,
    eps: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray, np.ndarray]:
    r"""Gradients ``(dx, dweight, dbias, dmean_weight, dvar_weight)`` of :func:`switchable_norm` in training.

    With :math:`g = \gamma\,\partial L/\partial y` and :math:`r = 1/\sqrt{\sigma^2+\epsilon}` per (n, c):
    :math:`\partial L/\partial\mu = -r\sum_s g`, :math:`\partial L/\partial\sigma^2 = -\frac{r^3}{2}\sum_s g(x-\mu)`;
    each statistic :math:`\mu_k, \sigma^2_k` over its set :math:`S_k` takes its weight's share, summed over what it
    is shared by, and passes :math:`1/|S_k|` and :math:`2(x-\mu_k)/|S_k|` to every x it reduced."""
    x, dy = _f(x), _f(dy)
    v, means, variances = _switchable_statistics(x)
    n, c, s = v.shape
    wm, wv = _softmax(mean_weight), _softmax(var_weight)
    mean = sum(w * m for w, m in zip(wm, means, strict=True))
    var = sum(w * q for w, q in zip(wv, variances, strict=True))
    r = 1 / np.sqrt(var + eps)
    x_hat = (v - mean) * r
    dyv = dy.reshape(v.shape)
    g = dyv * (1.0 if weight is None else _f(weight).reshape(1, c, 1))
    d_mean = -r * g.sum(2, keepdims=True)
    d_var = -0.5 * r**3 * (g * (v - mean)).sum(2, keepdims=True)
    dx = g * r
    d_logits_m, d_logits_v = np.zeros(3), np.zeros(3)
    for k, axes in enumerate([(2,), (1, 2), (0, 2)]):
        size = np.prod([v.shape[a] for a in axes])
        reduce = tuple(a for a in (0, 1) if a in axes)
        dm_k = (wm[k] * d_mean).sum(reduce, keepdims=True) if reduce else wm[k] * d_mean
        dv_k = (wv[k] * d_var).sum(reduce, keepdims=True) if reduce else wv[k] * d_var
        dx = dx + dm_k / size + dv_k * 2 * (v - means[k]) / size
        d_logits_m[k] = (d_mean * means[k]).sum()
        d_logits_v[k] = (d_var * variances[k]).sum()
    dweight = None if weight is None else (dyv * x_hat).sum((0, 2))
    dbias = None if bias is None else dyv.sum((0, 2))
    return (dx.reshape(x.shape), dweight, dbias, _softmax_backward(wm, d_logits_m), _softmax_backward(wv, d_logits_v))


def dynamic_tanh(x: np.ndarray, alpha: float, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """DyT over the trailing dims: weight and bias broadcast against x from the right."""
    return _f(weight) * np.tanh(alpha * _f(x)) + _f(bias)


def dynamic_tanh_backward(
    dy: np.ndarray, x: np.ndarray, alpha: float, weight: np.ndarray
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Gradients ``(dx, dalpha, dweight, dbias)`` of :func:`dynamic_tanh`."""
    dy, x, weight = _f(dy), _f(x), _f(weight)
    t = np.tanh(alpha * x)
    g = dy * weight * (1 - t * t)
    lead = tuple(range(dy.ndim - weight.ndim))
    return g * alpha, float((g * x).sum()), (dy * t).sum(axis=lead), dy.sum(axis=lead)


def local_response_norm(
    x: np.ndarray, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0
) -> np.ndarray:
    """LRN across channels with a window of ``size`` (torch's padding: size//2 before, (size-1)//2 after)."""
    x = _f(x)
    c = x.shape[1]
    sq = np.pad(x * x, [(0, 0), (size // 2, (size - 1) // 2)] + [(0, 0)] * (x.ndim - 2))
    window = np.stack([sq[:, i : i + size].sum(axis=1) for i in range(c)], axis=1)
    return x / (k + alpha / size * window) ** beta


def local_response_norm_backward(
    dy: np.ndarray, x: np.ndarray, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0
) -> np.ndarray:
    r"""Gradient ``dx`` of :func:`local_response_norm`. With :math:`D_c = k+\frac{\alpha}{n}\sum_{w(c)}a^2`:
    :math:`\partial L/\partial a_j = \partial L/\partial b_j\,D_j^{-\beta} - \frac{2\alpha\beta}{n}a_j
    \sum_{c:\,j\in w(c)}\partial L/\partial b_c\,a_c\,D_c^{-\beta-1}`, the sum over the mirrored window."""
    x, dy = _f(x), _f(dy)
    c = x.shape[1]
    pad = [(0, 0)] * (x.ndim - 2)
    sq = np.pad(x * x, [(0, 0), (size // 2, (size - 1) // 2)] + pad)
    den = k + alpha / size * np.stack([sq[:, i : i + size].sum(axis=1) for i in range(c)], axis=1)
    t = np.pad(dy * x * den ** (-beta - 1), [(0, 0), ((size - 1) // 2, size // 2)] + pad)
    mirrored = np.stack([t[:, i : i + size].sum(axis=1) for i in range(c)], axis=1)
    return dy * den**-beta - 2 * alpha * beta / size * x * mirrored


def global_response_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """GRN over ``(N, C, *spatial)``: each channel's L2 norm over spatial positions, divided by the mean of those
    norms across channels, scales x (``y = x + gamma * x * N + beta``)."""
    x = _f(x)
    nd = x.ndim
    g = np.sqrt((x * x).sum(axis=tuple(range(2, nd)), keepdims=True))
    n = g / (g.mean(axis=1, keepdims=True) + eps)
    return x + _channel_param(weight, nd) * x * n + _channel_param(bias, nd)


def global_response_norm_backward(
    dy: np.ndarray, x: np.ndarray, weight: np.ndarray, eps: float = 1e-6
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Gradients ``(dx, dweight, dbias)`` of :func:`global_response_norm`.
    With :math:`u = \gamma\,\partial L/\partial y`
    and :math:`a_{nc} = \sum_s u\,x`, :math:`m_n = \frac{1}{C}\sum_c G_{nc}`:
    :math:`\partial L/\partial G_{nc} = a_{nc}/(m_n+\epsilon) - \frac{1}{C}\sum_{c'}a_{nc'}G_{nc'}/(m_n+\epsilon)^2`,
    and :math:`\partial G_{nc}/\partial x_{ncs} = x_{ncs}/G_{nc}`."""
    x, dy = _f(x), _f(dy)
    nd = x.ndim
    spatial = tuple(range(2, nd))
    g = np.sqrt((x * x).sum(axis=spatial, keepdims=True))
    m = g.mean(axis=1, keepdims=True) + eps
    n = g / m
    u = dy * _channel_param(weight, nd)
    a = (u * x).sum(axis=spatial, keepdims=True)
    d_g = a / m - (a * g).sum(axis=1, keepdims=True) / (x.shape[1] * m * m)
    dx = dy + u * n + d_g * x / np.where(g > 0, g, 1.0)
    axes = (0,) + spatial
    return dx, (dy * x * n).sum(axis=axes), dy.sum(axis=axes)
