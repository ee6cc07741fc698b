"""from_torch / to_torch on a small CNN and a small transformer: outputs and gradients unchanged."""

import copy

import pytest
import torch
from torch import nn

import normlab
import normlab.nn as nl


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.InstanceNorm2d(8, affine=True, track_running_stats=True),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.GroupNorm(4, 8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 16),
        nn.BatchNorm1d(16, momentum=None),
        nn.Linear(16, 5),
    )


class SmallTransformer(nn.Module):
    def __init__(self, d=16, vocab=20):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True), num_layers=2
        )
        self.norm = nn.RMSNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens):
        return self.head(self.norm(self.layers(self.embed(tokens))))


def _count(model, classes):
    return sum(type(m) in classes for m in model.modules())


TORCH_NORMS = {cls for cls, _ in normlab.convert.TWINS}
OURS = {cls for _, cls in normlab.convert.TWINS}


def _outputs_and_grads(model, x):
    model.zero_grad(set_to_none=True)
    y = model(x)
    y.float().square().mean().backward()
    return y.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "make, make_input",
    [(small_cnn, lambda: torch.randn(4, 3, 8, 8)), (SmallTransformer, lambda: torch.randint(0, 20, (3, 7)))],
)
@pytest.mark.parametrize("training", [True, False])
def test_from_torch_and_back_keep_outputs_and_gradients(make, make_input, training):
    torch.manual_seed(0)
    reference = make().train(training)
    x = make_input()
    converted = normlab.from_torch(copy.deepcopy(reference))
    assert _count(converted, TORCH_NORMS) == 0 and _count(converted, OURS) == _count(reference, TORCH_NORMS) > 0
    assert converted.training == training and all(m.training == training for m in converted.modules())
    y_ref, g_ref = _outputs_and_grads(reference, x)
    y_new, g_new = _outputs_and_grads(converted, x)
    torch.testing.assert_close(y_new, y_ref, rtol=1e-5, atol=1e-6)
    for name in g_ref:
        torch.testing.assert_close(g_new[name], g_ref[name], rtol=1e-5, atol=1e-6, msg=name)
    for (name, b_ref), (_, b_new) in zip(reference.named_buffers(), converted.named_buffers(), strict=True):
        torch.testing.assert_close(b_new, b_ref, msg=name)
    back = normlab.to_torch(converted)
    assert _count(back, OURS) == 0 and _count(back, TORCH_NORMS) == _count(reference, TORCH_NORMS)
    assert list(back.state_dict()) == list(reference.state_dict())


def test_conversion_carries_the_same_parameter_objects():
    model = small_cnn()
    params = {id(p) for p in model.parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    normlab.from_torch(model)
    assert {id(p) for p in model.parameters()} == params
    before = model[12].weight.detach().clone()
    model(torch.randn(4, 3, 8, 8)).square().mean().backward()
    optimizer.step()
    assert not torch.equal(model[12].weight, before)  # the optimizer still drives the converted layer


def test_conversion_keeps_dtype_and_device():
    model = small_cnn().double()
    normlab.from_torch(model)
    assert isinstance(model[1], nl.BatchNorm2d) and model[1].weight.dtype == torch.float64
    assert model[1].running_mean.dtype == torch.float64 and model[1].num_batches_tracked.dtype == torch.long


def test_root_norm_module_is_returned_converted():
    bn = nn.BatchNorm2d(4)
    out = normlab.from_torch(bn)
    assert isinstance(out, nl.BatchNorm2d) and out.weight is bn.weight


def test_subclasses_are_left_alone():
    class BatchNormAct(nn.BatchNorm2d):
        def forward(self, x):
            return torch.relu(super().forward(x))

    model = nn.Sequential(BatchNormAct(4))
    normlab.from_torch(model)
    assert type(model[0]) is BatchNormAct


def test_from_torch_rejects_non_modules():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        normlab.from_torch("resnet")
