"""normlab's twins checked on torch's own module test data: ``torch.testing._internal.common_modules.module_db``.

torch describes each torch.nn module once, in a ModuleInfo: sample inputs (constructor and forward arguments,
sometimes a reference function), error inputs (the exception and whether construction or forward raises it), the
dtypes, whether train and eval differ, and which of its generic tests it skips or loosens for that module. This
file is normlab's harness over that data (normlab's test code, torch's data; the machinery is in
tests/module_db_harness.py). Every twin in ``TWINS`` runs every check in ``CHECKS``, in train and eval where the
ModuleInfo says they differ; SyncBatchNorm (single process, so plain BatchNorm) runs on BatchNorm2d's data.

The contract is "wherever torch's class passes a check, the twin passes it", taken literally: each check runs on
torch's class first, on the same samples (regenerated identically), and the twin is held to exactly the samples
torch's class passes, compared with what torch's class gave. A check torch's class passes on no sample, or that the
ModuleInfo skips on CPU, is skipped with the reason.

Checks (torch's TestModule test each stands for in brackets):

- ``forward`` [test_forward]: output against the sample's reference function where it has one and against torch's
  class with the same (random) parameters and running statistics; buffers after the forward; ``.float()`` /
  ``.double()`` convert every parameter and buffer.
- ``errors`` [test_errors]: each error input raises the ModuleInfo's exception type at the same time (construction
  or forward). ``error_messages``: the message also matches the ModuleInfo's regex.
  ``error_inputs_as_torch``: on each error input the twin does what torch's class does in that mode (raises the same
  type at the same point, or raises nothing and gives torch's output), including where torch's class does not
  raise what the ModuleInfo says.
- ``memory_format`` [test_memory_format]: channels_last (4-d) / channels_last_3d (5-d) input, under each module
  memory format: output and gradients equal the contiguous run, and the output's and the input gradient's layout
  (``torch.autograd.grad``, not ``.grad``, which autograd re-lays-out for leaves) are torch's.
- ``non_contiguous`` [test_non_contiguous_tensors]: strided inputs and grad outputs give the contiguous results.
- ``gradcheck`` / ``gradgradcheck`` [test_grad / test_gradgrad]: float64, all inputs and parameters, then each
  parameter alone, with torch's settings (fast mode, batched gradients), on small samples.
- ``save_load`` [test_save_load]: ``torch.save`` of the module and of its state_dict, loaded back (the state_dict
  also with ``weights_only=True``); the loaded state_dict moves between torch's class and the twin, both ways.
- ``to`` / ``to_swap`` [test_to]: ``.to()`` over the ModuleInfo's dtypes, with and without
  ``torch.__future__.set_swap_module_params_on_conversion``, with and without ``.grad`` set: parameters stay the
  same objects (``.data`` replaced, or swapped), gradients follow; the converted module computes what torch's does.
- ``to_empty`` / ``to_empty_swap`` [test_to_empty]: a module built on the meta device, ``to_empty`` on CPU, then
  ``reset_parameters()`` gives a freshly built module's state.
- ``meta_init`` [test_device_ctx_init]: built under ``torch.device("meta")``: the CPU module's parameters and buffers
  as meta tensors (shape, stride, dtype, requires_grad, class).
- ``factory_kwargs`` [test_factory_kwargs]: ``device=`` and ``dtype=`` reach every parameter and buffer.
- ``repr`` [test_repr]: ``repr`` and ``str`` work and the repr is torch's, character for character.
- ``train_eval_flag`` [test_if_train_and_eval_modes_differ]: forward reads ``.training`` exactly where torch's
  does.

Known gaps (issue 16) are ``xfail(strict=True)`` on exactly the (twin, check, mode) that fail today (``XFAIL``):
a fix makes the test XPASS, which fails the run and says to remove the mark.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import product

import pytest
import torch
from module_db_harness import DEVICE, MODULE_INFOS, ModuleErrorEnum, NotApplicable, cases, dtypes, modes, run_check
from tolerances import vs_torch
from torch import Tensor

import normlab.nn as nl

TWINS = {  # normlab.nn.<twin> and torch.nn.<twin>, checked on this ModuleInfo's data
    "BatchNorm1d": "nn.BatchNorm1d",
    "BatchNorm2d": "nn.BatchNorm2d",
    "BatchNorm3d": "nn.BatchNorm3d",
    "InstanceNorm1d": "nn.InstanceNorm1d",
    "InstanceNorm2d": "nn.InstanceNorm2d",
    "InstanceNorm3d": "nn.InstanceNorm3d",
    "LayerNorm": "nn.LayerNorm",
    "GroupNorm": "nn.GroupNorm",
    "RMSNorm": "nn.RMSNorm",
    "LocalResponseNorm": "nn.LocalResponseNorm",
    "SyncBatchNorm": "nn.BatchNorm2d",  # no process group: plain BatchNorm (src/normlab/nn/batchnorm.py)
}

FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}
GRADCHECK = dict(fast_mode=True, check_batched_grad=True)  # torch's testing defaults (common_utils.gradcheck)
GRADCHECK_MAX_NUMEL = 800  # float64 gradcheck on the small samples only (they cover every constructor setting)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster, and leaves the other core alone
    yield
    torch.set_num_threads(threads)


# --- helpers shared by the checks ---------------------------------------------------------------------------------


def build(cls, sample, case):
    """The module for ``sample``, in the case's dtype and mode (as torch's tests: construct, ``.to``, ``.train``)."""
    c = sample.constructor_input
    module = cls(*c.args, **c.kwargs).to(case.dtype)
    module.train(case.training)
    return module


def randomize(module):
    """Non-trivial parameters and running statistics, drawn from the seeded RNG in name order: torch's module and
    the twin get the same values."""
    with torch.no_grad():
        for name, t in sorted([*module.named_parameters(), *module.named_buffers()], key=lambda item: item[0]):
            if not t.is_floating_point():
                continue
            positive = name.endswith(("weight", "running_var"))
            values = torch.rand(t.shape) + 0.5 if positive else torch.randn(t.shape) * 0.5
            t.copy_(values)
    return module


def forward(module, sample, args=None):
    f = sample.forward_input
    return module(*(f.args if args is None else args), **f.kwargs)


def tensors(args) -> list[Tensor]:
    return [a for a in args if isinstance(a, Tensor)]


def close(actual, expected, case, what: str, **tolerance) -> None:
    """torch's comparison for its own test (assert_close, with the ModuleInfo's tolerance override if any)."""
    torch.testing.assert_close(actual, expected, **(tolerance or case.tolerance), msg=lambda m: f"{what}: {m}")


def same_as_torch(ours, theirs, dtype, what: str) -> None:
    """The twin against torch's class on the same input: the project's tolerance table (tests/tolerances.py)."""
    torch.testing.assert_close(ours, theirs, **vs_torch(dtype), msg=lambda m: f"{what} differs from torch's: {m}")


def placed(module, device, dtype) -> None:
    """Every parameter and buffer on ``device``; the floating-point ones in ``dtype``."""
    for kind, items in (("parameter", module.named_parameters()), ("buffer", module.named_buffers())):
        for name, t in items:
            assert t.device == torch.device(device), f"{kind} {name} is on {t.device}, not {device}"
            assert not t.is_floating_point() or t.dtype == dtype, f"{kind} {name} is {t.dtype}, not {dtype}"


@dataclass
class SwapOnConversion:
    """``torch.__future__.set_swap_module_params_on_conversion(swap)`` for a block, restored after."""

    swap: bool

    def __enter__(self):
        self.saved = torch.__future__.get_swap_module_params_on_conversion()
        torch.__future__.set_swap_module_params_on_conversion(self.swap)

    def __exit__(self, *exc):
        torch.__future__.set_swap_module_params_on_conversion(self.saved)


# --- the checks: check(cls, case, expected) -> observation; expected is None on torch's class ---------------------


def check_forward(cls, case, expected):
    """Output against the reference function and torch's class; buffers; ``.float()`` / ``.double()``."""
    sample = case.sample()
    module = randomize(build(cls, sample, case))
    out = forward(module, sample)
    if sample.reference_fn is not None:
        f = sample.forward_input
        close(out, sample.reference_fn(module, *f.args, **f.kwargs), case, "output against the reference function")
    state = {k: v.clone() for k, v in module.state_dict().items()}
    if case.dtype in (torch.float32, torch.float64):
        getattr(module, "float" if case.dtype == torch.float32 else "double")()
        forward(module, sample)
        placed(module, DEVICE, case.dtype)
    if expected is not None:
        out_t, state_t = expected
        same_as_torch(out, out_t, case.dtype, "output")
        assert state.keys() == state_t.keys(), f"state_dict keys {sorted(state)} != torch's {sorted(state_t)}"
        for key in state:
            same_as_torch(state[key], state_t[key], case.dtype, f"{key} after the forward")
    return out.detach(), state


def raise_point(cls, case, always_forward: bool = False):
    """Build and (for a forward error, or ``always_forward``) run the error sample, in the case's dtype and mode:
    ("construction" | "forward" | None, the exception or None, the output or None)."""
    error = case.sample()
    s = error.module_error_input
    try:
        module = cls(*s.constructor_input.args, **s.constructor_input.kwargs)
    except Exception as err:  # noqa: BLE001
        return "construction", err, None
    if (always_forward and s.forward_input.args) or error.error_on == ModuleErrorEnum.FORWARD_ERROR:
        module.to(case.dtype).train(case.training)
        try:
            return None, None, forward(module, s)
        except Exception as err:  # noqa: BLE001
            return "forward", err, None
    return None, None, None


def _expected_raise(error) -> str:
    return "construction" if error.error_on == ModuleErrorEnum.CONSTRUCTION_ERROR else "forward"


def _raised(when, err) -> str:
    return f"{type(err).__name__} at {when}: {err}" if err is not None else "nothing raised"


def check_errors(cls, case, expected):
    """The error input raises the ModuleInfo's exception type at its point: construction or forward."""
    error = case.sample()
    when, err, _ = raise_point(cls, case)
    want = _expected_raise(error)
    if not (when == want and isinstance(err, error.error_type)):
        theirs = f" (torch's class: {expected})" if expected else ""
        raise AssertionError(f"expected {error.error_type.__name__} at {want}, got {_raised(when, err)}{theirs}")
    return _raised(when, err)


def check_error_messages(cls, case, expected):
    """The error input's exception also matches the ModuleInfo's regex (raised at any point)."""
    error = case.sample()
    when, err, _ = raise_point(cls, case)
    if expected is None and when != _expected_raise(error):  # torch's class passes torch's whole test_errors
        raise AssertionError(f"expected a raise at {_expected_raise(error)}, got {_raised(when, err)}")
    if not (isinstance(err, error.error_type) and re.search(error.error_regex, str(err))):
        theirs = f" (torch's: {expected!r})" if expected else ""
        raise AssertionError(
            f"expected {error.error_type.__name__} matching {error.error_regex!r}, got {_raised(when, err)}{theirs}"
        )
    return str(err)


def check_error_inputs_as_torch(cls, case, expected):
    """On the error input, what torch's class does: the same raise at the same point, or the same output."""
    when, err, out = raise_point(cls, case, always_forward=True)
    behaviour = (when, type(err).__name__ if err is not None else None)
    if expected is not None:
        if behaviour != expected[0]:
            theirs = f"raises {expected[0][1]} at {expected[0][0]}" if expected[0][1] else "raises nothing"
            raise AssertionError(f"{_raised(when, err)}; torch's class {theirs}")
        if out is not None:
            same_as_torch(out, expected[1], case.dtype, "output")
    return behaviour, out


def layout(t: Tensor) -> str:
    """The memory formats ``t`` is laid out in, "+"-joined (an empty or one-channel map is in both)."""
    names = ["contiguous"] if t.is_contiguous() else []
    fmt = FORMATS.get(t.dim())
    if fmt is not None and t.is_contiguous(memory_format=fmt):
        names.append(_name(fmt))
    return "+".join(names) or f"strided {tuple(t.stride())}"


def _name(fmt: torch.memory_format) -> str:
    return {torch.contiguous_format: "contiguous", torch.preserve_format: "preserve_format"}.get(
        fmt, str(fmt).replace("torch.", "")
    )


def check_memory_format(cls, case, expected):
    """channels_last(_3d) input under each module memory format: values of the contiguous run, torch's layouts."""
    sample = case.sample(requires_grad=True)
    args = sample.forward_input.args
    fmt = next((FORMATS[a.dim()] for a in tensors(args) if a.dim() in FORMATS), None)
    if fmt is None:
        raise NotApplicable("no 4-d or 5-d input")
    module = randomize(build(cls, sample, case))
    params = [p for p in module.parameters() if p.requires_grad]
    inputs = [a for a in tensors(args) if a.requires_grad]
    ref_out = forward(module, sample)
    grad_out = torch.rand_like(ref_out)
    ref_grads = torch.autograd.grad(ref_out, inputs + params, grad_out)
    seen = {}  # (input format, module format, "output" | "input gradient", torch's rule) -> layout
    for input_fmt, module_fmt in product(
        [torch.contiguous_format, fmt], [torch.preserve_format, torch.contiguous_format, fmt]
    ):
        where = f"{_name(input_fmt)} input, module.to({_name(module_fmt)})"
        x = [
            a.detach()
            .clone()
            .to(memory_format=input_fmt if a.dim() in FORMATS else torch.preserve_format)
            .requires_grad_(a.requires_grad)
            if isinstance(a, Tensor)
            else a
            for a in args
        ]
        module.to(memory_format=module_fmt)
        out = forward(module, sample, x)
        close(out, ref_out, case, f"{where}: output")
        grads = torch.autograd.grad(
            out, [a for a in tensors(x) if a.requires_grad] + params, torch.empty_like(out).copy_(grad_out)
        )
        for name, got, ref in zip(
            ["input gradient"] * len(inputs) + ["parameter gradient"] * len(params), grads, ref_grads, strict=True
        ):
            close(got, ref, case, f"{where}: {name}")
        want = _name(fmt) if input_fmt == fmt else "contiguous"  # torch's rule: channels_last in, channels_last out
        seen[_name(input_fmt), _name(module_fmt), "output", want] = layout(out)
        if inputs:
            seen[_name(input_fmt), _name(module_fmt), "input gradient", want] = layout(grads[0])
    if expected is None:
        for (input_fmt, module_fmt, what, want), got in seen.items():
            assert want in got.split("+"), f"{input_fmt} input, module.to({module_fmt}): {what} is {got}, not {want}"
    else:
        diffs: dict[str, list[str]] = {}  # one line per mismatch, listing the module formats it happens under
        for (input_fmt, module_fmt, what, want), got in seen.items():
            theirs = expected[input_fmt, module_fmt, what, want]
            if got != theirs:
                diffs.setdefault(f"{input_fmt} input: {what} is {got} where torch's is {theirs}", []).append(module_fmt)
        if diffs:
            raise AssertionError("; ".join(f"{d} (module.to: {', '.join(fmts)})" for d, fmts in diffs.items()))
    return seen


def non_contiguous(t):
    """torch's construction: the values again, each second element of a doubled last dim (stride 2)."""
    if not isinstance(t, Tensor) or t.dim() == 0:
        return t
    out = torch.repeat_interleave(t, 2, dim=-1)[..., ::2].detach()
    return out.requires_grad_(t.requires_grad)


def check_non_contiguous(cls, case, expected):
    """Strided inputs and grad outputs give the contiguous output and gradients."""
    sample = case.sample(requires_grad=True)
    args = sample.forward_input.args
    if not [a for a in tensors(args) if a.dim() > 0]:
        raise NotApplicable("no input of one dim or more")
    module = randomize(build(cls, sample, case))
    params = list(module.parameters())
    ref_out = forward(module, sample)
    grad_out = torch.randn_like(ref_out)
    ref_grads = torch.autograd.grad(ref_out, [a for a in tensors(args) if a.requires_grad] + params, grad_out)
    nc_args = [non_contiguous(a) for a in args]
    inputs = [("contiguous", args), ("non-contiguous", nc_args)]
    grad_outs = [("contiguous", grad_out), ("non-contiguous", non_contiguous(grad_out))]
    for (label, x), (g_label, g) in product(inputs, grad_outs):
        where = f"{label} input, {g_label} grad output"
        out = forward(module, sample, x)
        close(out, ref_out, case, f"{where}: output")
        grads = torch.autograd.grad(out, [a for a in tensors(x) if a.requires_grad] + params, g)
        n_in = len(grads) - len(params)
        for i, (got, ref) in enumerate(zip(grads, ref_grads, strict=True)):
            if i < n_in:
                close(got, ref, case, f"{where}: input gradient", atol=1e-4, rtol=0)  # torch's tolerance
            else:
                close(got, ref, case, f"{where}: parameter gradient")


def check_gradients(gradcheck: Callable, cls, case, expected):
    """``gradcheck`` (or gradgradcheck) in float64: all inputs and parameters, then each parameter alone."""
    sample = case.sample(requires_grad=True)
    module = randomize(build(cls, sample, case))
    args, kwargs = sample.forward_input.args, sample.forward_input.kwargs
    assert not tensors(kwargs.values()), "tensor keyword inputs are not handled"
    params = tuple(module.parameters())

    def fn(*inputs):  # the parameters in ``inputs`` are the module's own tensors: gradcheck perturbs them in place
        return module(*inputs[: len(args)], **kwargs)

    gradcheck(fn, tuple(args) + params, **GRADCHECK)  # the total derivative
    for p in params:
        p.requires_grad_(False)
    for p in params:  # each parameter's partial derivative, as torch's _test_gradients_helper
        p.requires_grad_(True)
        gradcheck(fn, tuple(args) + params, **GRADCHECK)
        p.requires_grad_(False)


def check_save_load(cls, case, expected):
    """Module and state_dict through torch.save / torch.load (also weights_only=True), and across to torch's class."""
    sample = case.sample()
    module = randomize(build(cls, sample, case))
    state = module.state_dict()
    out = forward(module, sample)
    copy = roundtrip(module, weights_only=False)
    assert type(copy) is cls, f"torch.load gave a {type(copy).__name__}"
    close(forward(copy, sample), out, case, "output of the loaded module")
    saved = save(state)
    for weights_only in (False, True):
        loaded = roundtrip(state, weights_only=weights_only)
        assert loaded.keys() == state.keys()
        for key in state:
            assert loaded[key].dtype == state[key].dtype and torch.equal(loaded[key], state[key]), key
    if expected is not None:  # the checkpoints of one load into the other, both ways, through weights_only=True
        theirs_cls, theirs_saved, theirs_out = expected
        ours = build(cls, sample, case)
        ours.load_state_dict(torch.load(io.BytesIO(theirs_saved), weights_only=True), strict=True)
        same_as_torch(forward(ours, sample), theirs_out, case.dtype, "output after loading torch's state_dict")
        theirs = build(theirs_cls, sample, case)
        theirs.load_state_dict(torch.load(io.BytesIO(saved), weights_only=True), strict=True)
        same_as_torch(out, forward(theirs, sample), case.dtype, "output of torch's class loading the twin's state_dict")
    return cls, saved, out.detach()


def save(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def roundtrip(obj, weights_only: bool):
    return torch.load(io.BytesIO(save(obj)), weights_only=weights_only)


def _cdatas(tensors_):
    return [t._cdata for t in tensors_]


def check_to(cls, case, expected, swap: bool):
    """``.to()`` over the ModuleInfo's dtypes: the same Parameter objects (``.data`` set, or swapped), gradients
    converted with them, and the converted module computes what torch's does."""
    sample = case.sample()
    outs = []
    for set_grad in (False, True):
        with SwapOnConversion(swap):
            module = randomize(build(cls, sample, case))
            params = list(module.parameters())
            if set_grad:
                for p in params:
                    p.grad = torch.randn_like(p)
            if swap and not set_grad and params:  # .to() after a forward and backward (the graph holds the params)
                forward(module, sample).sum().backward()
                module.to(dtype=torch.half)
                module.to(dtype=torch.float32)
            prev = case.dtype
            for dtype in dtypes(case.info):
                ids, cdatas = [id(p) for p in params], _cdatas(module.parameters())
                grad_ids = [id(p.grad) for p in module.parameters()] if set_grad else []
                grad_cdatas = _cdatas(p.grad for p in module.parameters()) if set_grad else []
                module.to(device=DEVICE, dtype=dtype)
                now = list(module.parameters())
                assert all(isinstance(p, torch.nn.Parameter) for p in now), "a parameter is no longer a Parameter"
                placed(module, DEVICE, dtype)
                assert [id(p) for p in now] == ids, f".to({dtype}) replaced parameter objects"
                if swap:
                    assert all(a != b for a, b in zip(cdatas, _cdatas(now), strict=True)), (
                        f".to({dtype}) did not swap parameters"
                    )
                else:
                    assert _cdatas(now) == cdatas, f".to({dtype}) without swapping changed a parameter's tensor"
                if set_grad:
                    grads = [p.grad for p in now]
                    assert all(g.dtype == dtype for g in grads), f".to({dtype}) left a gradient behind"
                    if swap:  # swapped, unless .to() had nothing to change
                        assert all(
                            (a == b) == (dtype == prev) for a, b in zip(grad_cdatas, _cdatas(grads), strict=True)
                        ), f".to({dtype}) with swapping: gradient tensors swapped where they should not, or not"
                    else:
                        assert [id(g) for g in grads] == grad_ids and _cdatas(grads) == grad_cdatas, (
                            f".to({dtype}) without swapping replaced a gradient"
                        )
                prev = dtype
            x = [a.to(prev) if isinstance(a, Tensor) else a for a in sample.forward_input.args]
            outs.append(forward(module, sample, x).detach())
    if expected is not None:
        for out, out_t in zip(outs, expected, strict=True):
            same_as_torch(out, out_t, prev, f"output after .to({prev})")
    return outs


def check_to_empty(cls, case, expected, swap: bool):
    """Built on meta, ``to_empty`` on CPU (new tensors; objects kept only when swapping), then ``reset_parameters()``
    gives a freshly built module's state."""
    sample = case.sample()
    c = sample.constructor_input
    with SwapOnConversion(swap):
        with torch.device("meta"):
            module = cls(*c.args, **c.kwargs)
        ids, cdatas = [id(p) for p in module.parameters()], _cdatas(module.parameters())
        module.to_empty(device=DEVICE)
        now = list(module.parameters())
        assert all(isinstance(p, torch.nn.Parameter) for p in now), "a parameter is no longer a Parameter"
        placed(module, DEVICE, case.dtype)
        assert all(a != b for a, b in zip(cdatas, _cdatas(now), strict=True)), "to_empty kept a parameter's tensor"
        if swap:
            assert [id(p) for p in now] == ids, "to_empty with swapping replaced parameter objects"
        else:
            assert all(a != b for a, b in zip(ids, [id(p) for p in now], strict=True)), (
                "to_empty kept a parameter object"
            )
    if hasattr(module, "reset_parameters"):  # deferred initialization: meta, to_empty, reset_parameters
        module.reset_parameters()
    fresh = cls(*c.args, **c.kwargs)
    state, fresh_state = module.state_dict(), fresh.state_dict()
    assert state.keys() == fresh_state.keys()
    for key in state:
        assert torch.equal(state[key], fresh_state[key]), f"{key} after reset_parameters() is not a fresh module's"


def check_meta_init(cls, case, expected):
    """Built under ``torch.device("meta")``: the CPU module's parameters and buffers, as meta tensors."""
    c = case.sample().constructor_input
    cpu = cls(*c.args, **c.kwargs)
    with torch.device("meta"):
        meta = cls(*c.args, **c.kwargs)
    pairs = [
        *zip(meta.named_parameters(), cpu.named_parameters(), strict=True),
        *zip(meta.named_buffers(), cpu.named_buffers(), strict=True),
    ]
    if not pairs:
        raise NotApplicable("no parameters or buffers")
    assert [n for (n, _), _ in pairs] == [n for _, (n, _) in pairs], "meta and CPU modules differ in their tensors"
    for (name, m), (_, t) in pairs:
        assert m.is_meta, f"{name} is on {m.device} under torch.device('meta')"
        for attr in ("shape", "dtype", "requires_grad"):
            assert getattr(m, attr) == getattr(t, attr), f"{name}.{attr}: {getattr(m, attr)} != {getattr(t, attr)}"
        assert m.stride() == t.stride() and type(m) is type(t), name


def check_factory_kwargs(cls, case, expected):
    """``device=`` (CPU and meta) and ``dtype=`` reach every parameter and buffer."""
    c = case.sample().constructor_input
    plain = cls(*c.args, **c.kwargs)
    if not [*plain.parameters(), *plain.buffers()]:
        raise NotApplicable("the module creates no parameters or buffers")
    for device in (DEVICE, "meta"):
        module = cls(*c.args, **{**c.kwargs, "device": device, "dtype": case.dtype})
        placed(module, device, case.dtype)
        assert [(n, t.shape) for n, t in module.state_dict().items()] == [
            (n, t.shape) for n, t in plain.state_dict().items()
        ]


def check_repr(cls, case, expected):
    """``repr`` and ``str`` work, and the repr is torch's."""
    module = build(cls, case.sample(), case)
    text = repr(module)
    assert str(module) == text
    if expected is not None:
        assert text == expected, f"repr {text!r} != torch's {expected!r}"
    return text


def check_train_eval_flag(cls, case, expected):
    """Forward reads ``.training`` (found by deleting it) exactly where torch's does, and the ModuleInfo allows it."""
    sample = case.sample()
    module = build(cls, sample, case)
    delattr(module, "training")
    try:
        forward(module, sample)
        reads = False
    except AttributeError as err:
        if "'training'" not in str(err):
            raise
        reads = True
    assert case.info.train_and_eval_differ or not reads, "forward reads .training; the ModuleInfo says it need not"
    if expected is not None:
        assert reads == expected, f"forward {'reads' if reads else 'does not read'} .training, torch's the opposite"
    return reads


# --- the table of checks, the known gaps, the test -----------------------------------------------------------------


def _small(sample) -> bool:
    return sum(t.numel() for t in tensors(sample.forward_input.args)) <= GRADCHECK_MAX_NUMEL


@dataclass(frozen=True)
class Check:
    run: Callable
    torch_test: str  # torch's TestModule test: the ModuleInfo's skips and tolerances for it apply
    per_mode: bool = True  # in train and eval where the ModuleInfo says they differ
    dtypes: tuple[torch.dtype, ...] | None = None  # None: the ModuleInfo's
    error_inputs: bool = False
    keep: Callable | None = None  # which samples


F32, F64 = (torch.float32,), (torch.float64,)
CHECKS = {
    "forward": Check(check_forward, "test_forward"),
    "errors": Check(check_errors, "test_errors", error_inputs=True),
    "error_messages": Check(check_error_messages, "test_errors", error_inputs=True),
    "error_inputs_as_torch": Check(check_error_inputs_as_torch, "test_errors", error_inputs=True),
    "memory_format": Check(check_memory_format, "test_memory_format"),
    "non_contiguous": Check(check_non_contiguous, "test_non_contiguous_tensors"),
    "gradcheck": Check(partial(check_gradients, torch.autograd.gradcheck), "test_grad", dtypes=F64, keep=_small),
    "gradgradcheck": Check(
        partial(check_gradients, torch.autograd.gradgradcheck), "test_gradgrad", dtypes=F64, keep=_small
    ),
    "save_load": Check(check_save_load, "test_save_load"),
    "to": Check(partial(check_to, swap=False), "test_to", per_mode=False, dtypes=F32),
    "to_swap": Check(partial(check_to, swap=True), "test_to", per_mode=False, dtypes=F32),
    "to_empty": Check(partial(check_to_empty, swap=False), "test_to_empty", per_mode=False, dtypes=F32),
    "to_empty_swap": Check(partial(check_to_empty, swap=True), "test_to_empty", per_mode=False, dtypes=F32),
    "meta_init": Check(check_meta_init, "test_device_ctx_init", per_mode=False),
    "factory_kwargs": Check(check_factory_kwargs, "test_factory_kwargs", per_mode=False),
    "repr": Check(check_repr, "test_repr", per_mode=False),
    "train_eval_flag": Check(check_train_eval_flag, "test_if_train_and_eval_modes_differ", per_mode=False),
}

# (twin, check, mode; "-" for checks run once) -> what fails today, as a strict xfail naming its issue. Empty: every
# combination passes (the gaps issue 16 measured, eps checked at construction, GroupNorm's message, the input
# gradient's layout on channels_last input, are fixed).
XFAIL: dict[tuple[str, str, str], str] = {}


_FIXED = " (passing now? remove its entry from XFAIL in tests/nn/test_module_db.py)"


def _params():
    for twin, info_name in TWINS.items():
        info = MODULE_INFOS[info_name]
        for check, spec in CHECKS.items():
            for mode in modes(info) if spec.per_mode else ["train"]:
                test_id = f"{twin}-{check}" + (f"-{mode}" if spec.per_mode else "")
                reason = XFAIL.get((twin, check, mode if spec.per_mode else "-"))
                marks = [pytest.mark.xfail(strict=True, reason=reason + _FIXED)] if reason else []
                yield pytest.param(twin, check, mode, id=test_id, marks=marks)


@pytest.mark.parametrize("twin, check, mode", list(_params()))
def test_twin_passes_what_torch_passes(twin, check, mode):
    info, spec = MODULE_INFOS[TWINS[twin]], CHECKS[check]
    if spec.torch_test == "test_gradgrad" and not info.supports_gradgrad:
        pytest.skip(f"torch's ModuleInfo for {info.name} says it does not support second derivatives")
    dtypes_ = list(spec.dtypes or dtypes(info))
    todo = cases(info, spec.torch_test, mode, dtypes_, error=spec.error_inputs, limit=spec.keep)
    run_check(spec.run, getattr(torch.nn, twin), getattr(nl, twin), todo)


def test_every_twin_and_check_is_parametrized():
    """The xfail table names only real (twin, check, mode) combinations: a typo would silently mark nothing."""
    ids = {(p.values[0], p.values[1], p.values[2] if CHECKS[p.values[1]].per_mode else "-") for p in _params()}
    assert set(XFAIL) <= ids, sorted(set(XFAIL) - ids)
