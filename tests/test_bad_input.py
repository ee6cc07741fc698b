"""Bad input gets a ValueError/TypeError naming the argument and what was expected, never a NaN or an ATen crash."""

import pytest
import torch

import normlab.functional as NF
import normlab.nn as nl

MODULE_FACTORIES = {
    "BatchNorm1d": lambda **kw: nl.BatchNorm1d(4, **kw),
    "BatchNorm2d": lambda **kw: nl.BatchNorm2d(4, **kw),
    "BatchNorm3d": lambda **kw: nl.BatchNorm3d(4, **kw),
    "InstanceNorm1d": lambda **kw: nl.InstanceNorm1d(4, **kw),
    "InstanceNorm2d": lambda **kw: nl.InstanceNorm2d(4, **kw),
    "GroupNorm": lambda **kw: nl.GroupNorm(2, 4, **kw),
    "LayerNorm": lambda **kw: nl.LayerNorm(4, **kw),
    "RMSNorm": lambda **kw: nl.RMSNorm(4, **kw),
}
GOOD_INPUT = {
    "BatchNorm1d": (3, 4),
    "BatchNorm2d": (3, 4, 2, 2),
    "BatchNorm3d": (3, 4, 2, 2, 2),
    "InstanceNorm1d": (3, 4, 5),
    "InstanceNorm2d": (3, 4, 2, 2),
    "GroupNorm": (3, 4, 5),
    "LayerNorm": (3, 4),
    "RMSNorm": (3, 4),
}


def test_batch_norm_one_value_per_channel_in_training():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nl.BatchNorm1d(3)(torch.randn(1, 3))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nl.BatchNorm2d(3)(torch.randn(1, 3, 1, 1))
    assert nl.BatchNorm1d(3).eval()(torch.randn(1, 3)).isfinite().all()  # fine in eval


@pytest.mark.parametrize("groups, channels", [(3, 4), (0, 4), (5, 4)])
def test_group_norm_groups_must_divide_channels(groups, channels):
    with pytest.raises(
        ValueError, match=r"num_channels \(\d+\) must be divisible by num_groups \(\d+\)|num_groups must be positive"
    ):
        nl.GroupNorm(groups, channels)
    with pytest.raises(ValueError, match="num_groups"):
        NF.group_norm(torch.randn(2, channels, 3), groups)


@pytest.mark.parametrize(
    "cls, shape",
    [
        ("BatchNorm1d", (2, 4, 3, 3)),
        ("BatchNorm1d", (4,)),
        ("BatchNorm2d", (2, 4, 3)),
        ("BatchNorm3d", (2, 4, 3, 3)),
        ("InstanceNorm1d", (2, 4, 3, 3)),
        ("InstanceNorm2d", (4, 3)),
    ],
)
def test_wrong_rank_for_the_class(cls, shape):
    with pytest.raises(ValueError, match=rf"{cls}: expected .*D input \(got {len(shape)}D input\)"):
        MODULE_FACTORIES[cls]()(torch.randn(shape))


@pytest.mark.parametrize(
    "module, shape",
    [
        (lambda: nl.BatchNorm2d(3), (2, 4, 2, 2)),
        (lambda: nl.BatchNorm2d(3, affine=False, track_running_stats=False), (2, 4, 2, 2)),  # torch accepts this
        (lambda: nl.BatchNorm1d(3), (5, 2)),
        (lambda: nl.InstanceNorm2d(3, affine=True), (2, 4, 2, 2)),
        (lambda: nl.GroupNorm(1, 3), (2, 4, 2)),
    ],
)
def test_channel_count_must_match_num_features(module, shape):
    with pytest.raises(ValueError, match=r"expected input with 3 channels"):
        module()(torch.randn(shape))


def test_functional_per_channel_tensors_are_checked():
    with pytest.raises(ValueError, match=r"batch_norm: weight has 3 elements .* expected 4"):
        NF.batch_norm(torch.randn(2, 4), torch.zeros(4), torch.ones(4), torch.ones(3), training=True)
    with pytest.raises(ValueError, match=r"running_mean has 5 elements"):
        NF.batch_norm(torch.randn(2, 4), torch.zeros(5), torch.ones(4))


def test_instance_norm_needs_a_spatial_extent():
    with pytest.raises(ValueError, match="more than 1 spatial element.*single position"):
        nl.InstanceNorm1d(3)(torch.randn(2, 3, 1))
    with pytest.raises(ValueError, match="MLP, RNN features"):
        NF.instance_norm(torch.randn(8, 3))
    # In eval with running statistics a single position is fine (nothing is estimated from it).
    m = nl.InstanceNorm1d(3, track_running_stats=True).eval()
    assert m(torch.randn(2, 3, 1)).isfinite().all()


# As torch's: BatchNorm and InstanceNorm build with any eps, and refuse it in the forward that would use it (BN runs
# eps=0 in eval); the other modules refuse it at construction.
CHECKED_AT_FORWARD = {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm1d", "InstanceNorm2d"}


@pytest.mark.parametrize("name", sorted(MODULE_FACTORIES))
@pytest.mark.parametrize("eps", [0.0, -1e-5, float("inf")])
def test_non_positive_eps_is_rejected(name, eps):
    if name in CHECKED_AT_FORWARD:
        module = MODULE_FACTORIES[name](eps=eps)
        with pytest.raises(ValueError, match="eps must be"):
            module.train()(torch.randn(GOOD_INPUT[name]))
    else:
        with pytest.raises(ValueError, match="eps must be a positive"):
            MODULE_FACTORIES[name](eps=eps)


def test_batch_norm_runs_eps_zero_in_eval_as_torch():
    x = torch.randn(GOOD_INPUT["BatchNorm2d"])
    ours, theirs = nl.BatchNorm2d(4, eps=0.0).eval(), torch.nn.BatchNorm2d(4, eps=0.0).eval()
    torch.testing.assert_close(ours(x), theirs(x))
    with pytest.raises(ValueError, match="eps must be non-negative"):
        nl.BatchNorm2d(4, eps=-1.0).eval()(x)


@pytest.mark.parametrize(
    "call",
    [
        lambda x: NF.batch_norm(x, None, None, training=True, eps=0.0),
        lambda x: NF.layer_norm(x, (4,), eps=0.0),
        lambda x: NF.group_norm(x, 2, eps=-1.0),
        lambda x: NF.instance_norm(x.unsqueeze(-1).expand(3, 4, 2).contiguous(), eps=0.0),
        lambda x: NF.rms_norm(x, (4,), eps=0.0),
        lambda x: NF.cosine_linear(x, torch.randn(2, 4), eps=0.0),
    ],
)
def test_non_positive_eps_is_rejected_by_functional(call):
    with pytest.raises(ValueError, match="eps must be (a )?positive"):
        call(torch.randn(3, 4))


@pytest.mark.parametrize("name", sorted(MODULE_FACTORIES))
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_integer_inputs_are_a_type_error(name, dtype):
    x = torch.ones(GOOD_INPUT[name]).to(dtype)
    with pytest.raises(TypeError, match=rf"input must be a floating-point tensor .*got {dtype}"):
        MODULE_FACTORIES[name]()(x)


@pytest.mark.parametrize("cls", ["LayerNorm", "RMSNorm"])
def test_normalized_shape_must_match_trailing_dims(cls):
    m = getattr(nl, cls)([4, 5])
    with pytest.raises(ValueError, match=r"normalized_shape \[4, 5\] must equal the trailing dims"):
        m(torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match="normalized_shape"):
        m(torch.randn(5))


def test_functional_weight_shape_must_match_normalized_shape():
    with pytest.raises(ValueError, match=r"weight must have shape \[4\]"):
        NF.layer_norm(torch.randn(2, 4), 4, weight=torch.ones(3))


def test_non_tensor_input_is_a_type_error():
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        NF.layer_norm([[1.0, 2.0]], 2)


@pytest.mark.parametrize("bad", [2.5, "4", True])
def test_num_features_must_be_an_int(bad):
    with pytest.raises(TypeError, match="num_features must be an int"):
        nl.BatchNorm1d(bad)


def test_real_model_tools_reject_bad_arguments_clearly():
    import normlab

    with pytest.raises(ValueError, match="casting_mode must be one of none, llama, gemma, t5"):
        nl.RMSNorm(8, casting_mode="fp8")
    with pytest.raises(ValueError, match="casting_mode must be one of"):
        NF.rms_norm(torch.randn(2, 8), 8, casting_mode="bf16")
    with pytest.raises(ValueError, match="unknown norm 'grp'"):
        normlab.swap(torch.nn.Sequential(torch.nn.BatchNorm2d(4)), "batch", "grp")
    with pytest.raises(TypeError, match="fold_batchnorm: model must be a torch.nn.Module"):
        normlab.fold_batchnorm("resnet")
    with pytest.raises(TypeError, match="register_converter: fn must be callable"):
        normlab.register_converter(torch.nn.Linear, 3)
    with pytest.raises(TypeError, match="audit: example_input must be a tensor"):
        normlab.audit(torch.nn.Linear(2, 2), [1, 2])
    with pytest.raises(ValueError, match="advise: arch must be one of"):
        from normlab.lab.user_study.advise import advise

        advise("vit", 8)
