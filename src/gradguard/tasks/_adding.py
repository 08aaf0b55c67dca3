"""``adding``: the adding problem, a long-range memory task for a vanilla tanh RNN."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._base import Task

SUMMARY = "adding problem (T=10), vanilla tanh RNN, validation MSE"

LENGTH = 10
HIDDEN = 32
TRAIN_SIZE = 10_000
VAL_SIZE = 1_000
SEED = 1997

# Half-decades from 1e-3 to 1 (measured, 1,000 steps): Adam solves it from 3e-3 to 3e-2 and
# fails above, where clipped runs blow up; SGD with momentum stays on the plateau below 3e-2,
# solves it only now and then near 3e-2 to 0.1, and turns NaN from 0.3 unless clipped.
_ADAM_LRS = (0.001, 0.00316, 0.01, 0.0316, 0.1, 0.316, 1.0)
_MOMENTUM_LRS = (0.001, 0.00316, 0.01, 0.0316, 0.1, 0.316, 1.0)


class AddingRNN(nn.Module):
    """``nn.RNN(2, hidden, tanh)`` read out by a linear layer on the last hidden state."""

    def __init__(self, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.rnn = nn.RNN(2, hidden, nonlinearity="tanh", batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, T, 2)`` sequences to ``(N, 1)`` predicted sums."""
        _, h = self.rnn(x)
        out: Tensor = self.head(h[-1])
        return out


def make_sequences(n: int, length: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` adding-problem sequences of ``length`` steps: inputs ``(n, length, 2)`` float32
    (channel 0 uniform in [0, 1), channel 1 a marker, 1 at one position in the first half and
    one in the second half, 0 elsewhere) and targets ``(n, 1)``, the sum of the two marked
    values."""
    if length < 2:
        raise ValueError(f"Invalid length: {length!r}; the adding problem needs at least 2 steps")
    values = torch.rand(n, length, generator=generator)
    half = length // 2
    first = torch.randint(0, half, (n,), generator=generator)
    second = torch.randint(half, length, (n,), generator=generator)
    rows = torch.arange(n)
    marker = torch.zeros(n, length)
    marker[rows, first] = 1.0
    marker[rows, second] = 1.0
    target = (values[rows, first] + values[rows, second]).unsqueeze(1)
    return torch.stack([values, marker], dim=2), target


def _mse(out: Tensor, y: Tensor) -> float:
    return float(nn.functional.mse_loss(out, y))


def adding() -> Task:
    """The adding problem (Hochreiter & Schmidhuber 1997; Pascanu et al. 2013): each input is a
    sequence of T=10 steps with two channels, a value drawn uniformly from [0, 1) and a marker
    that is 1 at exactly two steps (one in the first half, one in the second half); the target
    is the sum of the two marked values. 10,000 training and 1,000 validation sequences,
    generated from fixed seeds. Model: a vanilla tanh RNN (``nn.RNN(2, 32)``) and a linear read-
    out of its last hidden state, MSE loss. Metric: validation MSE (lower is better);
    predicting 1.0 always scores about 0.167, the plateau an RNN that has not learned to
    remember sits on."""
    gen = torch.Generator().manual_seed(SEED)
    train = make_sequences(TRAIN_SIZE, LENGTH, gen)
    val = make_sequences(VAL_SIZE, LENGTH, gen)
    baseline = float(nn.functional.mse_loss(torch.ones_like(val[1]), val[1]))
    return Task(
        name="adding", description=adding.__doc__ or SUMMARY, build_model=AddingRNN,
        train=train, val=val, loss_fn=nn.functional.mse_loss, metric_fn=_mse,
        metric_name="mse", higher_is_better=False, target=0.05, baseline=round(baseline, 4),
        steps=1000, batch_size=64, eval_every=50,
        lrs={"adam": _ADAM_LRS, "momentum": _MOMENTUM_LRS},
    )
