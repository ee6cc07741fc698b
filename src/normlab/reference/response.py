r"""Float64 reference for the per-example and elementwise methods beyond the Group Norm paper's four:
Filter Response Normalization + TLU, EvoNorm-B0/S0, Switchable Normalization, DyT, Local Response Normalization.

- FRN (Singh & Krishnan 2019): :math:`\nu^2 = \overline{x^2}` over spatial per (n, c) (no centering),
  :math:`y = \max(\gamma x/\sqrt{\nu^2+|\epsilon|} + \beta,\ \tau)`, the max being the TLU.
- EvoNorm-B0 (Liu et al. 2020): :math:`y = \gamma\,\frac{x}{\max(\sqrt{\sigma^2_{batch}+\epsilon},\ v_1x+\sqrt{\sigma^2_{inst}+\epsilon})}+\beta`.
- EvoNorm-S0: :math:`y = \gamma\,\frac{x\,\mathrm{sigmoid}(v_1x)}{\sqrt{\sigma^2_{group}+\epsilon}}+\beta`.
- Switchable Normalization (Luo et al. 2018): mean and variance are softmax-weighted mixtures of the IN, LN and BN
  ones; one-hot weights give back one of them.
- DyT (Zhu et al. 2025): :math:`y = \gamma\tanh(\alpha x)+\beta`, no statistics at all.
- LRN (Krizhevsky et al. 2012, torch's form): :math:`b_c = a_c\big/\big(k+\frac{\alpha}{n}\sum_{c'\in w(c)}a_{c'}^2\big)^\beta`
  over a window of n channels (zero-padded).
"""

from __future__ import annotations

import numpy as np

from .layout import batch_layout, group_layout, instance_layout
from .standardization import Saved, _channel_param, backward, standardize

__all__ = [
    "filter_response_norm",
    "filter_response_norm_backward",
    "evonorm_b0",
    "evonorm_s0",
    "switchable_norm",
    "dynamic_tanh",
    "dynamic_tanh_backward",
    "local_response_norm",
]


def _f(a):
    return np.asarray(a, dtype=np.float64)


def filter_response_norm(x, weight, bias, tau=None, eps: float = 1e-6) -> tuple[np.ndarray, tuple]:
    """FRN (+ TLU when ``tau`` is given). x ``(N, C, *spatial)``; weight, bias, tau ``(C,)``. Returns ``(y, saved)``."""
    x = _f(x)
    x_hat, _, rstd = standardize(x, instance_layout(x.shape), abs(eps), center=False)
    pre = x_hat * _channel_param(weight, x.ndim) + _channel_param(bias, x.ndim)
    y = pre if tau is None else np.maximum(pre, _channel_param(tau, x.ndim))
    saved = Saved(instance_layout(x.shape), x_hat, rstd, False, True, _channel_param(weight, x.ndim), (1,), True)
    return y, (saved, pre, tau)


def filter_response_norm_backward(dy, saved_pre_tau) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Gradients ``(dx, dweight, dbias, dtau)``: the TLU routes each gradient to the larger of its two inputs."""
    saved, pre, tau = saved_pre_tau
    dy = _f(dy)
    axes = (0,) + tuple(range(2, dy.ndim))
    if tau is None:
        return (*backward(dy, saved), None)
    through = pre >= _channel_param(tau, dy.ndim)
    dx, dw, db = backward(dy * through, saved)
    return dx, dw, db, (dy * ~through).sum(axis=axes)


def _var(x, layout):
    v = x.reshape(layout.view)
    var = v.var(axis=layout.axes, keepdims=True)
    return np.broadcast_to(var, layout.view).reshape(layout.input_shape)


def evonorm_b0(x, weight, bias, v1, eps: float = 1e-5, running_var=None, training: bool = True) -> np.ndarray:
    """EvoNorm-B0. In training the batch variance (over N, spatial) is used; in eval ``running_var``."""
    x = _f(x)
    nd = x.ndim
    batch_var = _var(x, batch_layout(x.shape)) if training else _channel_param(running_var, nd)
    inst_std = np.sqrt(_var(x, instance_layout(x.shape)) + eps)
    den = np.maximum(np.sqrt(batch_var + eps), _channel_param(v1, nd) * x + inst_std)
    return x / den * _channel_param(weight, nd) + _channel_param(bias, nd)


def evonorm_s0(x, weight, bias, v1, groups: int, eps: float = 1e-5) -> np.ndarray:
    """EvoNorm-S0 with ``groups`` groups."""
    x = _f(x)
    nd = x.ndim
    group_std = np.sqrt(_var(x, group_layout(x.shape, groups)) + eps)
    swish = x / (1 + np.exp(-_channel_param(v1, nd) * x))
    return swish / group_std * _channel_param(weight, nd) + _channel_param(bias, nd)


def _softmax(z):
    e = np.exp(_f(z) - np.max(z))
    return e / e.sum()


def switchable_norm(
    x, weight, bias, mean_weight, var_weight, eps: float = 1e-5, running_mean=None, running_var=None,
    training: bool = True,
) -> np.ndarray:
    """Switchable Normalization (IN, LN, BN mixture). ``mean_weight``/``var_weight`` are the 3 logits (IN, LN, BN);
    in eval the BN statistics come from ``running_mean``/``running_var``."""
    x = _f(x)
    n, c = x.shape[:2]
    v = x.reshape(n, c, -1)
    mean_in, var_in = v.mean(2, keepdims=True), v.var(2, keepdims=True)
    second_in = var_in + mean_in**2
    mean_ln = mean_in.mean(1, keepdims=True)
    var_ln = second_in.mean(1, keepdims=True) - mean_ln**2
    if training:
        mean_bn = mean_in.mean(0, keepdims=True)
        var_bn = second_in.mean(0, keepdims=True) - mean_bn**2
    else:
        mean_bn, var_bn = _f(running_mean).reshape(1, c, 1), _f(running_var).reshape(1, c, 1)
    wm, wv = _softmax(mean_weight), _softmax(var_weight)
    mean = wm[0] * mean_in + wm[1] * mean_ln + wm[2] * mean_bn
    var = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn
    y = ((v - mean) / np.sqrt(var + eps)).reshape(x.shape)
    return y * _channel_param(weight, x.ndim) + _channel_param(bias, x.ndim)


def dynamic_tanh(x, alpha: float, weight, bias) -> np.ndarray:
    """DyT over the trailing dims: weight and bias broadcast against x from the right."""
    return _f(weight) * np.tanh(alpha * _f(x)) + _f(bias)


def dynamic_tanh_backward(dy, x, alpha: float, weight):
    """Gradients ``(dx, dalpha, dweight, dbias)`` of :func:`dynamic_tanh`."""
    dy, x, weight = _f(dy), _f(x), _f(weight)
    t = np.tanh(alpha * x)
    g = dy * weight * (1 - t * t)
    lead = tuple(range(dy.ndim - weight.ndim))
    return g * alpha, float((g * x).sum()), (dy * t).sum(axis=lead), dy.sum(axis=lead)


def local_response_norm(x, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> np.ndarray:
    """LRN across channels with a window of ``size`` (torch's padding: size//2 before, (size-1)//2 after)."""
    x = _f(x)
    c = x.shape[1]
    sq = np.pad(x * x, [(0, 0), (size // 2, (size - 1) // 2)] + [(0, 0)] * (x.ndim - 2))
    window = np.stack([sq[:, i : i + size].sum(axis=1) for i in range(c)], axis=1)
    return x / (k + alpha / size * window) ** beta
