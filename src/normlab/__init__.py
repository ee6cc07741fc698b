"""normlab: normalization layers for deep learning.

- :mod:`normlab.reference`: every method in float64 NumPy with its analytic backward (the oracle).
- :mod:`normlab.functional` and :mod:`normlab.nn`: drop-in twins of ``torch.nn.functional`` / ``torch.nn``.
- :func:`from_torch` / :func:`to_torch`: swap a model's normalization layers both ways.
- :func:`create_norm` / :func:`available_norms`: one name -> class table.
"""

__version__ = "0.1.0"

from . import functional, nn, reference
from .convert import from_torch, register_converter, to_torch
from . import ecosystem  # noqa: F401  (torch's fusion table learns the twins)
from .registry import available_norms, create_norm
from .transform import fold_batchnorm, freeze_batchnorm, param_groups, swap
from .auditor import audit

__all__ = [
    "__version__",
    "audit",
    "available_norms",
    "create_norm",
    "fold_batchnorm",
    "freeze_batchnorm",
    "param_groups",
    "swap",
    "from_torch",
    "functional",
    "nn",
    "reference",
    "register_converter",
    "to_torch",
]
