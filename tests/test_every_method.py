"""Every registered method against its float64 reference, read from its registry record: random shapes, dtypes and
parameters (hypothesis), inputs with mean 1e4 and std 1, and the module standard (reset_parameters after meta
construction). A method added to the registry is covered here with no edit."""

import math

import numpy as np
import pytest
import torch
from helpers import assert_close, random_input
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import LARGE_MEAN_RELATIVE, vs_reference

import normlab
from normlab.method import GHOST
from normlab.registry import METHODS, create_norm

SHAPES = {0: (6, 8), 1: (4, 8, 7), 2: (4, 8, 5, 6), 3: (2, 8, 3, 4, 5)}
CASES = [(m.name, d) for m in METHODS for d in m.spatial_dims]
LOW_PRECISION = [torch.float16, torch.bfloat16]


def _build(name: str, channels: int, spatial_dims: int, dtype: torch.dtype, seed: int, batch: int) -> torch.nn.Module:
    """The registry's module with every parameter and floating buffer drawn from [0.5, 1.5): nothing at its
    identity init, variances positive."""
    method = normlab.registry.get_method(name)
    kwargs = {}
    if method.grouped:
        kwargs["num_groups"] = channels // 2 if channels % 2 == 0 else channels
    if method.statistics is GHOST:
        kwargs["virtual_batch_size"] = 2 if batch % 2 == 0 else batch  # a virtual batch of one has no statistics
    module = create_norm(name, channels, spatial_dims=spatial_dims, **kwargs).to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]:
            t.copy_(0.5 + torch.rand(t.shape, generator=g, dtype=torch.float64).to(t.dtype))
    return module


def _compare(name, spatial_dims, dtype, seed, shape, shift=0.0, scale=1.5, relative=None):
    module = _build(name, shape[1], spatial_dims, dtype, seed, shape[0])
    x = random_input(shape, dtype, seed=seed, scale=scale, shift=shift)
    reference = normlab.registry.get_method(name).reference(module, x.double().numpy())  # before the forward
    y = module(x)
    assert y.dtype == dtype and y.shape == x.shape
    if relative is not None:
        error = float(np.abs(y.detach().double().numpy() - reference).max() / max(np.abs(reference).max(), 1e-30))
        assert error < relative, f"{name}: relative error {error:.2e} at mean {shift:g}"
        return
    tol = vs_reference(dtype)
    scale_out = max(1.0, float(np.abs(reference).max()))
    assert_close(y, reference, atol=tol["atol"] * scale_out, rtol=tol["rtol"], msg=f"{name} {dtype}")


@settings(max_examples=150, deadline=None)
@given(
    case=st.sampled_from(CASES),
    dtype=st.sampled_from([torch.float64, torch.float32]),
    batch=st.integers(2, 5),
    channels=st.sampled_from([2, 4, 6, 8]),
    side=st.integers(1, 5),
    shift=st.sampled_from([0.0, 3.0]),
    seed=st.integers(0, 10_000),
)
def test_every_method_matches_its_reference(case, dtype, batch, channels, side, shift, seed):
    name, spatial_dims = case
    shape = (batch, channels) + (side + 1,) * spatial_dims
    _compare(name, spatial_dims, dtype, seed, shape, shift=shift)


@pytest.mark.parametrize("name, spatial_dims", CASES)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_every_method_in_half_precision(name, spatial_dims, dtype):
    """fp16 and bf16 input and parameters, compared with the float64 reference of the same rounded values within
    the tolerance table's row for the dtype."""
    _compare(name, spatial_dims, dtype, seed=7, shape=SHAPES[spatial_dims])


@pytest.mark.parametrize(
    "name, spatial_dims", [(m.name, max(m.spatial_dims)) for m in METHODS if m.name != "frozen"] + [("frozen", 2)]
)
def test_every_method_without_cancellation_at_mean_1e4(name, spatial_dims):
    """fp32 input with mean 1e4 and std 1: E[x^2]-E[x]^2 would lose every digit of the variance."""
    shape = (8, 8) + (12,) * min(spatial_dims, 2) + (3,) * max(spatial_dims - 2, 0)
    _compare(name, spatial_dims, torch.float32, seed=3, shape=shape, shift=1e4, scale=1.0, relative=LARGE_MEAN_RELATIVE)


def _constructor_kwargs(name: str) -> dict:
    method = normlab.registry.get_method(name)
    return {"num_groups": 4} if method.grouped else {}


@pytest.mark.parametrize("name", [m.name for m in METHODS])
def test_meta_construction_then_reset_parameters_gives_the_fresh_module(name):
    """``to_empty()`` + ``reset_parameters()`` after building on the meta device (how large models are built)."""
    method = normlab.registry.get_method(name)
    spatial_dims = max(method.spatial_dims)
    fresh = create_norm(name, 8, spatial_dims=spatial_dims, **_constructor_kwargs(name))
    if not list(fresh.parameters()) and not list(fresh.buffers()):
        return  # nothing to initialize (identity, LRN)
    with torch.device("meta"):
        meta = create_norm(name, 8, spatial_dims=spatial_dims, **_constructor_kwargs(name))
    assert all(t.is_meta for t in meta.state_dict().values())
    meta.to_empty(device="cpu")
    meta.reset_parameters()
    expected = fresh.state_dict()
    for key, value in meta.state_dict().items():
        assert torch.equal(value, expected[key]), f"{name}: {key} after reset_parameters differs from a fresh module"


def _public_modules():
    out = []
    for name in normlab.nn.__all__:
        obj = getattr(normlab.nn, name)
        if (
            isinstance(obj, type)
            and issubclass(obj, torch.nn.Module)
            and obj not in normlab.nn.norm_act.NORM_ACT_CLASSES.values()
        ):
            out.append(obj)
    return out


@pytest.mark.parametrize("cls", _public_modules(), ids=lambda c: c.__name__)
def test_every_module_documents_formula_shape_and_example(cls):
    doc = cls.__doc__ or ""
    if cls.__name__ in ("WeightNorm", "SpectralNorm"):  # parametrizations: documented on weight_norm/spectral_norm
        doc = getattr(normlab.nn, cls.__name__.lower().replace("norm", "_norm")).__doc__
        assert ">>>" in doc
        return
    assert ":math:" in doc or ".. math::" in doc, f"{cls.__name__}: no formula"
    assert "Shape:" in doc, f"{cls.__name__}: no Shape section"
    assert ">>>" in doc, f"{cls.__name__}: no runnable example"
    assert cls.extra_repr is not torch.nn.Module.extra_repr, f"{cls.__name__}: no extra_repr"
    has_state = any(k in cls.__init__.__code__.co_names for k in ("Parameter", "register_buffer"))
    assert not has_state or hasattr(cls, "reset_parameters"), f"{cls.__name__}: state but no reset_parameters"


def test_every_record_is_consistent():
    names = [m.name for m in METHODS]
    aliases = [a for m in METHODS for a in m.aliases]
    assert len(set(names + aliases)) == len(names) + len(aliases), "a name or alias is used twice"
    for m in METHODS:
        for spatial_dims in m.spatial_dims:
            module = create_norm(m.name, 8, spatial_dims=spatial_dims, **_constructor_kwargs(m.name))
            assert isinstance(module, torch.nn.Module)
        for spatial_dims in set(range(4)) - set(m.spatial_dims):
            with pytest.raises(ValueError, match=rf"create_norm\('{m.name}', spatial_dims={spatial_dims}\)"):
                create_norm(m.name, 8, spatial_dims=spatial_dims)
        assert math.isfinite(len(m.summary)) and m.paper and m.formula


@pytest.mark.parametrize("name", [m.name for m in METHODS])
def test_every_method_traces_with_torch_fx_as_one_call(name):
    """torch.fx's default tracer keeps torch's norms as one call; normlab's too, so its Python argument checks
    never meet a proxy."""
    import torch.fx as fx

    method = normlab.registry.get_method(name)
    spatial_dims = max(method.spatial_dims)
    module = create_norm(name, 8, spatial_dims=spatial_dims, **_constructor_kwargs(name)).eval()
    model = torch.nn.Sequential(torch.nn.Identity(), module)
    traced = fx.symbolic_trace(model)
    if not isinstance(module, torch.nn.Identity):
        assert [n.target for n in traced.graph.nodes if n.op == "call_module"] == ["0", "1"]
    x = random_input(SHAPES[spatial_dims] if spatial_dims != 2 else (4, 8, 5, 6), seed=5)
    torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)
