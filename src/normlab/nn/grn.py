r"""Global Response Normalization (Woo et al. 2023, ConvNeXt V2)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import Parameter, init

from .. import functional as NF
from .response import _ChannelNorm

__all__ = ["GlobalResponseNorm"]


class GlobalResponseNorm(_ChannelNorm):
    r"""Global Response Normalization (Woo et al. 2023, "ConvNeXt V2: Co-designing and Scaling ConvNets with Masked
    Autoencoders").

    .. math:: G_{nc} = \lVert x_{nc\cdot}\rVert_2,\qquad N_{nc} = \frac{G_{nc}}{\frac{1}{C}\sum_{c'}G_{nc'}+\epsilon},
              \qquad y = \gamma_c\,x\,N_{nc} + \beta_c + x

    Each channel's L2 norm over spatial positions, relative to the mean across channels, rescales the channel:
    feature competition between channels of one example. Batch-independent; ``weight`` and ``bias`` start at 0, so
    the layer starts as the identity (the residual ``+ x``). timm's ``GlobalResponseNorm`` on channels-last input
    computes the same; here the input is channels-first ``(N, C, *S)``, as every normlab norm.

    Args:
        num_features: C, the channels of the input.
        eps: added to the channel mean of the norms, > 0. Default: 1e-6.

    Shape:
        - Input: :math:`(N, C, *S)` with at least one spatial dim. Output: the same.

    Examples::

        >>> import torch, normlab.nn as nl
        >>> grn = nl.GlobalResponseNorm(8)
        >>> x = torch.randn(2, 8, 5, 5)
        >>> torch.equal(grn(x), x)  # the identity at init
        True
    """

    def __init__(self, num_features: int, eps: float = 1e-6, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self._init_channels(num_features, eps)
        kw = {"device": device, "dtype": dtype}
        self.weight = Parameter(torch.empty(num_features, **kw))
        self.bias = Parameter(torch.empty(num_features, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.zeros_(self.weight)
        init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        self._check_channels(input)
        return NF.global_response_norm(input, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
