"""Check the user's study before any run starts, and build it: every problem is one line naming the argument and
what was expected (a ValueError; the command line prints it and exits 2), and nothing the user stored is touched.

Checked: the model factory (callable, returns an ``nn.Module``, has norms normlab can swap, each requested method
swaps in), the data (readable, not empty), the batch sizes (positive, at most the training set), the model's
forward on the data's first examples (one line naming the input shape), the loss on that output, and for
classification that every label is one of the model's outputs.
"""

from __future__ import annotations

import copy
from collections.abc import Sized
from typing import Any, cast

import torch
from torch.utils.data import Dataset

from ...registry import canonical_name
from ...transform import swap
from ..training.data import training_part
from ..training.inputs import UserData, examples, fingerprint, load_model, load_user_data
from ..training.user_model import norm_kinds
from .study import UserSpec, UserStudy, describe_swap

__all__ = ["prepare_user_study"]

_LABEL_SCAN = 20_000  # labels read one by one when the data set does not hold them as a tensor or a list


def _size(dataset: Dataset[Any]) -> int:
    """A map-style data set's length (load_user_data accepts only data sets that define ``__len__``)."""
    return len(cast(Sized, dataset))


def _labels(dataset: Dataset[Any]) -> torch.Tensor | None:
    """The data set's labels where it holds them (TensorDataset, ImageFolder), else those of its first examples."""
    if hasattr(dataset, "tensors"):
        return dataset.tensors[1]
    if hasattr(dataset, "targets"):
        return torch.as_tensor(dataset.targets)
    items = [dataset[i][1] for i in range(min(_size(dataset), _LABEL_SCAN))]
    return (
        torch.as_tensor(items)
        if all(isinstance(y, int) or (torch.is_tensor(y) and y.dim() == 0) for y in items)
        else None
    )


def _check_forward(spec: UserSpec, model: torch.nn.Module, data: UserData) -> tuple[int, ...]:
    x, y = examples(data.train, 2)
    shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as err:
        raise ValueError(
            f"--model {spec.model}: its forward fails on the data's input of shape {shape}: "
            f"{type(err).__name__}: {str(err).splitlines()[0]}"
        ) from None
    loss_fn = data.loss_fn or torch.nn.functional.cross_entropy
    try:
        loss = loss_fn(out, y)
        if not (torch.is_tensor(loss) and loss.numel() == 1):
            raise ValueError(f"expected a scalar tensor, got {type(loss).__name__}")
    except Exception as err:
        outs = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ValueError(
            f"--data {spec.data}: the loss fails on the model's output of shape {outs} for input "
            f"{shape}: {str(err).splitlines()[0]}"
        ) from None
    if data.classification:
        classes = out.shape[-1] if out.dim() == 2 else out.shape[1]
        for split, dataset in (("training", data.train), ("test", data.test)):
            labels = _labels(dataset)
            if labels is not None and len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= classes):
                raise ValueError(
                    f"--model {spec.model}: the {split} labels run from {int(labels.min())} to "
                    f"{int(labels.max())}, but the model outputs {classes} classes (output shape "
                    f"{tuple(out.shape)}); pass --model-args num_classes=..."
                )
    return shape


def prepare_user_study(spec: UserSpec) -> UserStudy:
    """The checked :class:`UserStudy` for ``spec`` (ValueError with one line otherwise)."""
    if not spec.batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in spec.batch_sizes):
        raise ValueError(f"--batch-sizes must be positive integers, got {','.join(map(str, spec.batch_sizes))}")
    if not spec.norms:
        raise ValueError("--norms: name at least one method (e.g. batch,group,layer2d)")
    if spec.optimizer not in ("sgd", "adamw"):
        raise ValueError(f"--optimizer must be sgd or adamw, got {spec.optimizer!r}")
    if spec.steps is not None and spec.steps < 1 or spec.epochs < 1:
        raise ValueError("--epochs and --steps must be at least 1")
    if spec.loader_workers < 0:
        raise ValueError(f"--loader-workers must be at least 0, got {spec.loader_workers}")
    if spec.lr is not None and not spec.lr > 0:
        raise ValueError(f"--lr must be positive, got {spec.lr}")
    norms = [canonical_name(n) for n in spec.norms]  # ValueError naming the unknown name
    data = load_user_data(spec.data)
    for split, dataset in (("training", data.train), ("test", data.test)):
        if _size(dataset) == 0:
            raise ValueError(f"--data {spec.data}: the {split} set is empty")
    model = load_model(spec.model, spec.model_args)
    kinds = norm_kinds(model)
    if not kinds:
        raise ValueError(
            f"--model {spec.model}: the model has no normalization layer normlab can swap (BatchNorm, "
            "GroupNorm, LayerNorm, InstanceNorm, RMSNorm)"
        )
    _check_forward(spec, model, data)
    swaps = {}
    for norm in norms:
        sources = [k for k in kinds if k != norm]
        if not sources:
            swaps[norm] = f"the model as built ({', '.join(kinds)})"
            continue
        swapped, reports = copy.deepcopy(model), []
        for kind in sources:
            swapped, report = swap(swapped, kind, norm, num_groups=spec.num_groups)
            reports.append(report)
        if not any(r.changed for r in reports):
            why = next((r.skipped[0][1] for r in reports if r.skipped), "no layer of a swappable kind")
            raise ValueError(f"--norms {norm}: no norm layer of {spec.model} could be swapped for it: {why}")
        swaps[norm] = "; ".join(describe_swap(r) for r in reports if r.changed or r.skipped)
        _check_forward(spec, swapped, data)
    study = UserStudy(
        spec,
        kinds=kinds,
        classification=data.classification,
        fingerprint=fingerprint(spec.model, spec.data),
        swaps=swaps,
    )
    train_size = training_part(_size(data.train), study.selection.validation_fraction)  # what selection trains on
    if max(spec.batch_sizes) > train_size:
        raise ValueError(
            f"--batch-sizes {max(spec.batch_sizes)}: larger than the {train_size} training examples left "
            "after the validation split"
        )
    return study
