"""A small model file and data set made for the tests of the user's study (``normlab compare --model ...``)."""

import torch
from torch import nn
from torch.utils.data import TensorDataset


def convnet(num_classes: int = 10, width: int = 8) -> nn.Module:
    """A small CNN with BatchNorm for 8x8 digits."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1, stride=2, bias=False),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )


def pooled_bn(num_classes: int = 10) -> nn.Module:
    """BatchNorm1d after global pooling: one value per channel at batch size 1, which torch refuses in training."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Linear(8, num_classes),
    )


def regressor() -> nn.Module:
    """An MLP with LayerNorm for a regression task (the data's own loss function)."""
    return nn.Sequential(nn.Linear(6, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 1))


def no_norm() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def not_a_module():
    return "a string"


def digits():
    """scikit-learn's 8x8 digits: 600 training and 200 test images."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    y = torch.tensor(d.target)
    return TensorDataset(x[:600], y[:600]), TensorDataset(x[600:800], y[600:800])


def regression():
    """y = a smooth function of 6 inputs plus noise, with mean-squared error as the loss."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g)
    y = x[:, :3].sin().sum(1, keepdim=True) + 0.1 * torch.randn(500, 1, generator=g)
    mse = nn.functional.mse_loss
    return TensorDataset(x[:400], y[:400]), TensorDataset(x[400:], y[400:]), mse


def wrong_shape():
    """Images of the wrong number of channels for ``convnet``."""
    x = torch.randn(40, 3, 8, 8)
    return TensorDataset(x, torch.zeros(40, dtype=torch.long)), TensorDataset(x[:8], torch.zeros(8, dtype=torch.long))


def many_labels():
    """Labels up to 19, more than ``convnet``'s 10 outputs."""
    x = torch.randn(40, 1, 8, 8)
    return TensorDataset(x, torch.arange(40) % 20), TensorDataset(x[:8], torch.arange(8))
