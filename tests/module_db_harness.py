"""The machinery of tests/nn/test_module_db.py: torch's ModuleInfo data, read by normlab's own code.

``torch.testing._internal.common_modules.module_db`` holds one ModuleInfo per torch.nn module: sample inputs
(constructor and forward arguments, sometimes a reference function), error inputs (the exception and whether
construction or forward raises it), the dtypes to test, whether train and eval differ, and the tests torch skips
or loosens for that module. This file

- imports that database without side effects on the rest of the test session (see :func:`_import_common_modules`);
- hands out :class:`Case` objects: one sample (or error sample) at one dtype in one mode, regenerated fresh and
  identical on every call, so torch's class and the twin see the very same tensors;
- reads what the ModuleInfo says about a torch test on CPU: skipped, expected to fail, or with a tolerance;
- runs a check the way the test file's contract needs it (:func:`run_check`): on torch's class first, then on the
  twin for every case torch's class passes.
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
import unittest
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch


def _import_common_modules() -> types.ModuleType:
    """``import torch.testing._internal.common_modules``, leaving the session as it was.

    Its import (through ``common_utils``) freezes ``torch.backends`` flags (later ``torch.backends.X.enabled = ...``
    in any other test would raise), wraps ``torch._C.ScriptFunction.__call__``, seeds the global RNG, sets an
    environment variable and adds warning filters: all undone here. ``common_utils`` needs ``expecttest`` only for
    its TestCase base class, which no check here uses: without the package, a stand-in module provides
    ``unittest.TestCase`` for the import and is removed afterwards.
    """
    saved_env = dict(os.environ)
    frozen = torch.backends.flags_frozen()
    script_calls = torch._C.ScriptFunction.__call__, torch._C.ScriptMethod.__call__
    stub = None
    try:
        import expecttest  # noqa: F401
    except ImportError:
        stub = types.ModuleType("expecttest")
        stub.TestCase = unittest.TestCase
        sys.modules["expecttest"] = stub
    try:
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            from torch.testing._internal import common_modules
    finally:
        if stub is not None and sys.modules.get("expecttest") is stub:
            del sys.modules["expecttest"]
        if not frozen:  # no public undo of torch.backends.disable_global_flags(): set the flag it clears
            torch.backends.disable_global_flags.__globals__["__allow_nonbracketed_mutation_flag"] = True
        torch._C.ScriptFunction.__call__, torch._C.ScriptMethod.__call__ = script_calls
        os.environ.clear()
        os.environ.update(saved_env)
    return common_modules


common_modules = _import_common_modules()
ModuleErrorEnum = common_modules.ModuleErrorEnum
MODULE_INFOS = {info.name: info for info in common_modules.module_db}  # "nn.BatchNorm2d" -> ModuleInfo
DEVICE = "cpu"


class NotApplicable(Exception):
    """Raised by a check for a case it has nothing to check on (no 4-d input for channels_last, no parameters...)."""


def modes(info) -> list[str]:
    """The modes torch tests a module in: train and eval where they differ, else train only (``@modules``)."""
    return ["train", "eval"] if info.train_and_eval_differ else ["train"]


def dtypes(info) -> list[torch.dtype]:
    """The dtypes the ModuleInfo lists for CPU, in a fixed order."""
    return sorted(info.supported_dtypes(DEVICE), key=str)


# --- what the ModuleInfo says about one of torch's TestModule tests on CPU ---------------------------------------


def _active_decorators(info, test_name: str, dtype: torch.dtype, training: bool) -> list[Callable]:
    return info.get_decorators("TestModule", test_name, DEVICE, dtype, {"training": training})


def _decorated(decorator: Callable) -> Any:
    def probe():  # the decorators mark a function; the marks say skip / expected failure / tolerance
        pass

    try:
        return decorator(probe)
    except Exception:  # a decorator that needs a real test (a device check...) does not concern CPU here
        return probe


def torch_skip_reason(info, test_name: str, dtype: torch.dtype, training: bool) -> str | None:
    """Why torch does not run (or expects to fail) ``TestModule.<test_name>`` for this module on CPU, or None."""
    for decorator in _active_decorators(info, test_name, dtype, training):
        marked = _decorated(decorator)
        if getattr(marked, "__unittest_skip__", False):
            why = getattr(marked, "__unittest_skip_why__", "")
            return f"torch's ModuleInfo for {info.name} skips TestModule.{test_name} on CPU ({why!r})"
        if getattr(marked, "__unittest_expecting_failure__", False):
            return f"torch's ModuleInfo for {info.name} expects TestModule.{test_name} to fail on CPU"
    return None


def torch_tolerance(info, test_name: str, dtype: torch.dtype, training: bool) -> dict:
    """``assert_close`` tolerances for torch's test: the ModuleInfo's toleranceOverride, else torch's defaults."""
    for decorator in _active_decorators(info, test_name, dtype, training):
        overrides = getattr(_decorated(decorator), "tolerance_overrides", {})
        if dtype in overrides:
            return dict(atol=overrides[dtype].atol, rtol=overrides[dtype].rtol)
    return {}


# --- cases -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One sample of a ModuleInfo at one dtype and mode. :meth:`sample` regenerates it, identical every time."""

    info: Any
    dtype: torch.dtype
    training: bool
    index: int
    desc: str
    error: bool = False  # an ErrorModuleInput rather than a ModuleInput
    test_name: str = ""  # torch's TestModule test this case stands for (its tolerance)

    def sample(self, requires_grad: bool = False):
        func = self.info.module_error_inputs_func if self.error else self.info.module_inputs_func
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1000 + self.index)
            return list(
                func(self.info, device=DEVICE, dtype=self.dtype, requires_grad=requires_grad, training=self.training)
            )[self.index]

    @property
    def tolerance(self) -> dict:
        return torch_tolerance(self.info, self.test_name, self.dtype, self.training)

    def __str__(self) -> str:
        mode = "train" if self.training else "eval"
        return f"sample {self.index} {self.desc} {str(self.dtype).replace('torch.', '')} {mode}"


def _describe(sample, error: bool) -> str:
    """The sample's name, or (error inputs have none) its constructor call."""
    sample = sample.module_error_input if error else sample
    c = sample.constructor_input
    return sample.desc or "(" + ", ".join([*map(repr, c.args), *(f"{k}={v!r}" for k, v in c.kwargs.items())]) + ")"


def cases(
    info,
    test_name: str,
    mode: str,
    dtypes_: list[torch.dtype] | None = None,
    error: bool = False,
    limit: Callable[[Any], bool] | None = None,
) -> list[Case]:
    """The samples of ``info`` for one of torch's tests, in ``mode``, at ``dtypes_`` (default: the ModuleInfo's),
    leaving out the dtypes the ModuleInfo skips that test for; ``limit(sample)`` keeps only some samples.

    Skips the test (pytest.skip) when nothing is left, with the ModuleInfo's reason."""
    training = mode == "train"
    func = info.module_error_inputs_func if error else info.module_inputs_func
    if func is None:
        pytest.skip(f"torch's ModuleInfo for {info.name} has no error inputs")
    out, reasons = [], []
    for dtype in dtypes_ or dtypes(info):
        reason = torch_skip_reason(info, test_name, dtype, training)
        if reason is not None:
            reasons.append(reason)
            continue
        with torch.random.fork_rng(devices=[]):
            samples = list(func(info, device=DEVICE, dtype=dtype, requires_grad=False, training=training))
        for index, sample in enumerate(samples):
            if limit is None or limit(sample):
                out.append(Case(info, dtype, training, index, _describe(sample, error), error, test_name))
    if not out:
        pytest.skip(reasons[0] if reasons else f"no sample of {info.name} fits this check")
    return out


# --- running a check on torch's class, then on the twin -----------------------------------------------------------


@contextlib.contextmanager
def seeded(seed: int = 0):
    """Random draws inside a check (grad outputs, parameters) the same for torch's class and the twin."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def run_check(check: Callable, theirs: type, ours: type, cases_: list[Case]) -> None:
    """``check(cls, case, expected)`` on torch's class (``expected=None``; it returns what it observed), then on
    the twin with what torch's class gave, for every case torch's class passes. Skips when it passes none;
    fails listing every case where the twin does not pass what torch's class passed."""
    passed, not_applicable, torch_failures = [], [], []
    for case in cases_:
        try:
            with seeded():
                passed.append((case, check(theirs, case, None)))
        except NotApplicable as why:
            not_applicable.append(f"{case}: {why}")
        except Exception as err:  # noqa: BLE001 (torch's class failing the check, whatever it raises, is a skip)
            torch_failures.append(f"{case}: {type(err).__name__}: {_first_line(err)}")
    if not passed and not torch_failures:
        pytest.skip(f"the check applies to no sample of {theirs.__name__} ({not_applicable[0]})")
    if not passed:
        pytest.skip(
            f"torch's {theirs.__name__} fails this check on all {len(torch_failures)} sample(s) it applies "
            f"to, e.g. {torch_failures[0]}"
        )
    failures = []
    for case, expected in passed:
        try:
            with seeded():
                check(ours, case, expected)
        except Exception as err:  # noqa: BLE001
            failures.append(f"{case}: {type(err).__name__}: {_first_line(err)}")
    if failures:
        pytest.fail(
            f"normlab's {ours.__name__} fails {len(failures)} of the {len(passed)} case(s) torch's "
            f"{theirs.__name__} passes:\n  " + "\n  ".join(failures),
            pytrace=False,
        )


def _first_line(err: BaseException, width: int = 400) -> str:
    """The error's message on one line (assert_close's are several), cut to ``width`` characters."""
    text = " | ".join(line.strip() for line in str(err).splitlines() if line.strip()) or repr(err)
    return text if len(text) <= width else text[: width - 3] + "..."
