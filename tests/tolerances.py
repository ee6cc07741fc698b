"""Every numeric tolerance the tests use, by dtype, in one place.

``vs_reference``: a torch result against the float64 NumPy reference computed from the same (rounded) input.
Low-precision rows are set by the output's own rounding: bf16 has 8 mantissa bits (relative step 2**-8), fp16 has 11.
``vs_torch``: normlab against torch.nn on the same input; on the ATen path this is bit-exact, the channels_last
CPU paths (exact statistics of their own, or a contiguous copy) differ by a few ulps.
"""

import torch

VS_REFERENCE = {
    torch.float64: dict(atol=1e-10, rtol=1e-9),
    torch.float32: dict(atol=2e-5, rtol=2e-4),
    torch.float16: dict(atol=4e-3, rtol=4e-3),
    torch.bfloat16: dict(atol=3e-2, rtol=2e-2),
}

VS_TORCH = {
    torch.float64: dict(atol=1e-12, rtol=1e-10),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}

# Gradients accumulate more rounding than outputs: sums over a whole statistic's set.
GRAD_SCALE = {torch.float64: 10.0, torch.float32: 10.0, torch.float16: 4.0, torch.bfloat16: 4.0}

FINITE_DIFFERENCE = dict(step=1e-6, atol=1e-6, rtol=1e-5)

# The bar: fp32 input with mean 1e4 and std 1, output relative to the float64 reference.
LARGE_MEAN_RELATIVE = 2e-3


def vs_reference(dtype: torch.dtype, grad: bool = False) -> dict:
    tol = VS_REFERENCE[dtype]
    scale = GRAD_SCALE[dtype] if grad else 1.0
    return dict(atol=tol["atol"] * scale, rtol=tol["rtol"] * scale)


def vs_torch(dtype: torch.dtype, grad: bool = False) -> dict:
    tol = VS_TORCH[dtype]
    scale = GRAD_SCALE[dtype] if grad else 1.0
    return dict(atol=tol["atol"] * scale, rtol=tol["rtol"] * scale)


# float64 module against the float64 reference: same math, different summation order.
FLOAT64 = dict(atol=1e-10, rtol=1e-9)
FLOAT64_GRAD = dict(atol=1e-9, rtol=1e-8)  # sums over a statistic's set round more than outputs
