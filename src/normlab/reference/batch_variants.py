r"""Float64 reference for BatchNorm's variants: Batch Renormalization, Ghost BatchNorm, PowerNorm.

Batch Renormalization (Ioffe 2017). With batch statistics :math:`\mu_B,\sigma_B` and running ones :math:`\mu,\sigma`
(:math:`\sigma=\sqrt{\text{running\_var}+\epsilon}`):

.. math::
    r = \operatorname{clip}(\sigma_B/\sigma,\ 1/r_{max},\ r_{max}),\quad
    d = \operatorname{clip}((\mu_B-\mu)/\sigma,\ -d_{max},\ d_{max}),\quad
    y = \gamma\Big(\frac{x-\mu_B}{\sigma_B}\,r + d\Big) + \beta

r and d carry no gradient, so the backward is BatchNorm's scaled by r. With r_max = 1, d_max = 0 it is BatchNorm.

Ghost BatchNorm (Hoffer et al. 2017): BatchNorm over consecutive virtual batches of ``virtual_batch_size`` examples.

PowerNorm (Shen et al. 2020): no centering; training divides by the *running* quadratic mean
:math:`\psi_{t-1}` instead of the batch's, then updates :math:`\psi_t = \alpha\psi_{t-1}+(1-\alpha)\,\overline{x^2}`.
"""

from __future__ import annotations

import numpy as np

from .layout import batch_layout
from .standardization import Saved, _channel_param, backward, batch_norm

__all__ = [
    "batch_renorm",
    "batch_renorm_backward",
    "ghost_batch_norm",
    "ghost_batch_norm_backward",
    "power_norm",
    "mean_only_batch_norm",
    "mean_only_batch_norm_backward",
]


def batch_renorm(
    x: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    eps: float = 1e-5,
    r_max: float = 3.0,
    d_max: float = 5.0,
) -> tuple[np.ndarray, tuple[Saved, np.ndarray, np.ndarray]]:
    """Batch Renormalization in training. Returns ``(y, (saved, r, d))``; x ``(N, C, *)``, the rest ``(C,)``."""
    x = np.asarray(x, dtype=np.float64)
    layout = batch_layout(x.shape)
    v = x.reshape(layout.view)
    mu_b, sigma_b = v.mean(axis=(0, 2)), np.sqrt(v.var(axis=(0, 2)) + eps)
    sigma = np.sqrt(np.asarray(running_var, np.float64) + eps)
    r = np.clip(sigma_b / sigma, 1.0 / r_max, r_max)
    d = np.clip((mu_b - np.asarray(running_mean, np.float64)) / sigma, -d_max, d_max)
    x_hat_b, saved = batch_norm(x, None, None, eps)
    x_hat = x_hat_b * _channel_param(r, x.ndim) + _channel_param(d, x.ndim)
    y = x_hat
    if weight is not None:
        y = y * _channel_param(weight, x.ndim)
    if bias is not None:
        y = y + _channel_param(bias, x.ndim)
    return y, (saved, r, d)


def batch_renorm_backward(
    dy: np.ndarray,
    x_hat_weight_bias: tuple[Saved, np.ndarray, np.ndarray],
    weight: np.ndarray | None = None,
    has_bias: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Gradients ``(dx, dweight, dbias)`` of :func:`batch_renorm` (r, d constant)."""
    saved, r, d = x_hat_weight_bias
    dy = np.asarray(dy, np.float64)
    nd = dy.ndim
    axes = (0,) + tuple(range(2, nd))
    g = dy if weight is None else dy * _channel_param(weight, nd)
    dx, _, _ = backward(g * _channel_param(r, nd), saved)
    x_hat = saved.x_hat * _channel_param(r, nd) + _channel_param(d, nd)
    dweight = None if weight is None else (dy * x_hat).sum(axis=axes)
    return dx, dweight, dy.sum(axis=axes) if has_bias else None


def ghost_batch_norm(
    x: np.ndarray,
    virtual_batch_size: int,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    eps: float = 1e-5,
) -> tuple[np.ndarray, list[Saved]]:
    """BatchNorm applied separately to ``x[0:v], x[v:2v], ...``; returns ``(y, [saved per chunk])``."""
    x = np.asarray(x, dtype=np.float64)
    outs, saves = [], []
    for start in range(0, x.shape[0], virtual_batch_size):
        y, saved = batch_norm(x[start : start + virtual_batch_size], weight, bias, eps)
        outs.append(y)
        saves.append(saved)
    return np.concatenate(outs), saves


def ghost_batch_norm_backward(
    dy: np.ndarray, saves: list[Saved], virtual_batch_size: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Gradients of :func:`ghost_batch_norm`: each virtual batch's BatchNorm backward; parameter grads add up."""
    dxs, dw, db = [], None, None
    for i, saved in enumerate(saves):
        dx, w, b = backward(dy[i * virtual_batch_size : (i + 1) * virtual_batch_size], saved)
        dxs.append(dx)
        dw = w if dw is None or w is None else dw + w
        db = b if db is None or b is None else db + b
    return np.concatenate(dxs), dw, db


def power_norm(
    x: np.ndarray,
    running_phi: np.ndarray,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    eps: float = 1e-5,
    alpha: float = 0.9,
) -> tuple[np.ndarray, np.ndarray]:
    r"""PowerNorm's training forward: :math:`y = \gamma\,x/\sqrt{\psi_{t-1}+\epsilon} + \beta`, and the updated
    :math:`\psi_t` (per channel quadratic mean over N and spatial). Returns ``(y, new_running_phi)``."""
    x = np.asarray(x, dtype=np.float64)
    nd = x.ndim
    phi = np.asarray(running_phi, np.float64)
    y = x / np.sqrt(_channel_param(phi, nd) + eps)
    if weight is not None:
        y = y * _channel_param(weight, nd)
    if bias is not None:
        y = y + _channel_param(bias, nd)
    quad = (x * x).mean(axis=(0,) + tuple(range(2, nd)))
    return y, alpha * phi + (1 - alpha) * quad


def mean_only_batch_norm(x: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    r"""Mean-only BatchNorm in training (Salimans & Kingma 2016): :math:`y = x - \mu_c + \beta_c`, the mean per
    channel over N and spatial positions; no division."""
    x = np.asarray(x, dtype=np.float64)
    y = x - x.mean(axis=(0,) + tuple(range(2, x.ndim)), keepdims=True)
    return y if bias is None else y + _channel_param(bias, x.ndim)


def mean_only_batch_norm_backward(dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Gradients ``(dx, dbias)``: :math:`\partial L/\partial x = g - \bar g` per channel,
    :math:`\sum g` for the bias."""
    dy = np.asarray(dy, np.float64)
    axes = (0,) + tuple(range(2, dy.ndim))
    return dy - dy.mean(axis=axes, keepdims=True), dy.sum(axis=axes)
