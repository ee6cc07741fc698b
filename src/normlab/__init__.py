"""normlab: normalization layers for deep learning.

- :mod:`normlab.reference`: every method in float64 NumPy with its analytic backward (the oracle).
- :mod:`normlab.functional` and :mod:`normlab.nn`: drop-in twins of ``torch.nn.functional`` / ``torch.nn`` (the
  twins are instances of torch's classes), the rest of the catalog, and norm + activation classes.
- :func:`create_norm` / :func:`available_norms`: one record per method (:mod:`normlab.registry`) -> module.
- :func:`from_torch` / :func:`to_torch` / :func:`register_converter`: swap a model's norms both ways, Hugging Face's
  included.
- :func:`fold_batchnorm`, :func:`freeze_batchnorm`, :func:`swap`, :func:`param_groups`, :func:`audit`,
  :func:`keep_norms_fp32`: whole-model tools.
"""

__version__ = "0.1.0"

from . import (
    ecosystem,  # noqa: F401  (torch's fusion table learns the twins)
    functional,
    nn,
    reference,
)
from .auditor import audit
from .convert import from_torch, register_converter, to_torch
from .precision import keep_norms_fp32
from .registry import available_norms, create_norm
from .transform import fold_batchnorm, freeze_batchnorm, param_groups, swap

__all__ = [
    "__version__",
    "audit",
    "available_norms",
    "create_norm",
    "fold_batchnorm",
    "freeze_batchnorm",
    "keep_norms_fp32",
    "param_groups",
    "swap",
    "from_torch",
    "functional",
    "nn",
    "reference",
    "register_converter",
    "to_torch",
]
