r"""Float64 reference for the methods that normalize weights or pre-activations: Weight and Cosine Normalization.

Both rest on one operation, normalizing vectors along some axes, whose backward is a projection:

.. math::
    \hat v = \frac{v}{\lVert v\rVert}, \qquad
    \frac{\partial L}{\partial v} = \frac{1}{\lVert v\rVert}\Big(g - \hat v\,\langle g, \hat v\rangle\Big)

Weight Normalization (Salimans & Kingma 2016): :math:`w = g\,\frac{v}{\lVert v\rVert}`, the norm taken over every
axis but ``dim`` (torch's convention; ``dim=None`` takes one norm over the whole tensor).

Cosine Normalization (Luo et al. 2017): the pre-activation :math:`w\cdot x` becomes
:math:`\cos\theta = \frac{w\cdot x}{\lVert w\rVert\,\lVert x\rVert}\in[-1, 1]`; the centered variant subtracts each
vector's mean first (Pearson correlation). Norms are clamped below by ``eps`` so a zero vector gives 0, not NaN.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "weight_norm",
    "weight_norm_backward",
    "cosine_linear",
    "cosine_linear_backward",
    "norm_except_dim",
    "weight_standardization",
    "weight_standardization_backward",
    "spectral_norm",
]


def _reduce_axes(ndim: int, dim: int | None) -> tuple[int, ...]:
    if dim is None:
        return tuple(range(ndim))
    dim = dim % ndim if ndim else 0
    return tuple(i for i in range(ndim) if i != dim)


def norm_except_dim(v: np.ndarray, dim: int | None = 0) -> np.ndarray:
    """L2 norm of ``v`` over every axis but ``dim``, keeping dims (shape broadcastable against ``v``)."""
    v = np.asarray(v, dtype=np.float64)
    return np.sqrt((v * v).sum(axis=_reduce_axes(v.ndim, dim), keepdims=True))


def weight_norm(v: np.ndarray, g: np.ndarray, dim: int | None = 0) -> np.ndarray:
    r"""Weight Normalization: :math:`w = g\,v/\lVert v\rVert`.

    v: any shape, e.g. ``(out, in)`` or ``(out, in, kh, kw)``; g: ``norm_except_dim(v, dim)``'s shape
    (``(out, 1, ...)`` for dim=0, a scalar-shaped array for dim=None). Returns w with v's shape.
    """
    v = np.asarray(v, dtype=np.float64)
    return np.asarray(g, dtype=np.float64) * v / norm_except_dim(v, dim)


def weight_norm_backward(
    dw: np.ndarray, v: np.ndarray, g: np.ndarray, dim: int | None = 0
) -> tuple[np.ndarray, np.ndarray]:
    r"""Gradients of :func:`weight_norm`: :math:`\partial L/\partial g = \langle \partial L/\partial w, \hat v\rangle`,
    :math:`\partial L/\partial v = \frac{g}{\lVert v\rVert}
    (\partial L/\partial w - \hat v\,\langle\partial L/\partial w,\hat v\rangle)`."""
    v = np.asarray(v, dtype=np.float64)
    dw = np.asarray(dw, dtype=np.float64)
    axes = _reduce_axes(v.ndim, dim)
    norm = norm_except_dim(v, dim)
    v_hat = v / norm
    dg = (dw * v_hat).sum(axis=axes, keepdims=True)
    dv = np.asarray(g, dtype=np.float64) / norm * (dw - v_hat * dg)
    return dv, dg.reshape(np.shape(g))


def _center(a: np.ndarray, centered: bool) -> np.ndarray:
    return a - a.mean(axis=-1, keepdims=True) if centered else a


def cosine_linear(x: np.ndarray, weight: np.ndarray, centered: bool = False, eps: float = 1e-8) -> np.ndarray:
    r"""Cosine-normalized linear layer:
    :math:`y_{no} = \frac{w_o\cdot x_n}{\max(\lVert w_o\rVert,\epsilon)\,\max(\lVert x_n\rVert,\epsilon)}`.

    x: ``(*, in_features)``; weight: ``(out_features, in_features)``. Returns ``(*, out_features)`` in [-1, 1].
    With ``centered=True`` both vectors are centered first, which makes y the Pearson correlation.
    """
    xc = _center(np.asarray(x, dtype=np.float64), centered)
    wc = _center(np.asarray(weight, dtype=np.float64), centered)
    x_norm = np.maximum(np.linalg.norm(xc, axis=-1, keepdims=True), eps)
    w_norm = np.maximum(np.linalg.norm(wc, axis=-1), eps)
    return (xc @ wc.T) / x_norm / w_norm


def _cos_grad_wrt_first(dy_cos: np.ndarray, a: np.ndarray, b: np.ndarray, cos: np.ndarray, eps: float) -> np.ndarray:
    """d/d a of sum(dy * cos(a_n, b_o)) for rows a_n, b_o: (b_o/|a||b| - cos a_n/|a|^2) summed against dy."""
    a_norm = np.linalg.norm(a, axis=-1, keepdims=True)
    b_norm = np.linalg.norm(b, axis=-1, keepdims=True)
    a_clamped, b_clamped = np.maximum(a_norm, eps), np.maximum(b_norm, eps)
    grad = (dy_cos @ (b / b_clamped)) / a_clamped
    # Below eps the norm is the constant eps, so the cos-projection term vanishes there.
    radial = np.where(a_norm > eps, (dy_cos * cos).sum(axis=-1, keepdims=True) * a / (a_clamped**2), 0.0)
    return grad - radial


def _uncenter_grad(grad: np.ndarray, centered: bool) -> np.ndarray:
    return grad - grad.mean(axis=-1, keepdims=True) if centered else grad


def cosine_linear_backward(
    dy: np.ndarray, x: np.ndarray, weight: np.ndarray, centered: bool = False, eps: float = 1e-8
) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of :func:`cosine_linear` with respect to ``x`` and ``weight``."""
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64).reshape(-1, weight.shape[0])
    x2 = x.reshape(-1, x.shape[-1])
    xc, wc = _center(x2, centered), _center(np.asarray(weight, dtype=np.float64), centered)
    cos = cosine_linear(x2, weight, centered, eps)
    dx = _uncenter_grad(_cos_grad_wrt_first(dy, xc, wc, cos, eps), centered)
    dw = _uncenter_grad(_cos_grad_wrt_first(dy.T, wc, xc, cos.T, eps), centered)
    return dx.reshape(x.shape), dw


def weight_standardization(weight: np.ndarray, eps: float = 1e-6) -> tuple[np.ndarray, tuple]:
    r"""Weight Standardization (Qiao et al. 2019): each output filter :math:`w_o` becomes
    :math:`(w_o-\overline{w_o})/\sqrt{\mathrm{Var}(w_o)+\epsilon}` (over in-channels and kernel). Returns
    ``(w_hat, saved)`` for :func:`weight_standardization_backward`. It is LayerNorm of the weight's rows."""
    from .layout import layer_layout
    from .standardization import standardize

    w = np.asarray(weight, dtype=np.float64)
    layout = layer_layout(w.shape, w.shape[1:])
    w_hat, _, rstd = standardize(w, layout, eps)
    return w_hat, (layout, w_hat, rstd)


def weight_standardization_backward(dw_hat: np.ndarray, saved: tuple) -> np.ndarray:
    from .standardization import standardize_backward

    layout, w_hat, rstd = saved
    return standardize_backward(dw_hat, w_hat, rstd, layout)


def spectral_norm(weight: np.ndarray, dim: int = 0) -> np.ndarray:
    r"""Spectral Normalization (Miyato et al. 2018): :math:`W/\sigma_{max}(W)`, with W viewed as a matrix whose rows
    run along ``dim``. The exact largest singular value (torch estimates it by power iteration)."""
    w = np.moveaxis(np.asarray(weight, dtype=np.float64), dim, 0)
    sigma = np.linalg.svd(w.reshape(w.shape[0], -1), compute_uv=False)[0]
    return np.asarray(weight, dtype=np.float64) / sigma
