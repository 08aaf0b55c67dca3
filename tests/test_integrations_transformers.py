"""gradguard.integrations.transformers: a tiny model trained through the real Hugging Face
Trainer. The numbers logged (log_history and a report_to backend) are gradguard's own, double
clipping is caught, the optimizer and schedule built from TrainingArguments are the Trainer's
own, and a resumed run continues gradguard's state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

import gradguard
from gradguard.integrations.transformers import (
    GradguardTrainerCallback,
    attach,
    no_decay_names,
    optimizers_from_args,
)
from helpers import load_example


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(4, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        out = self.head(torch.tanh(self.norm(self.proj(x))))
        loss = nn.functional.mse_loss(out, labels) if labels is not None else None
        return {"loss": loss, "logits": out}


class Data(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int = 64) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 4, generator=g)
        self.y = (self.x.sum(1, keepdim=True) * 3).sin() * 10

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


def args(tmp: Path, **kwargs: Any) -> TrainingArguments:
    base: dict[str, Any] = dict(output_dir=str(tmp), per_device_train_batch_size=8,
                                max_steps=8, logging_steps=1, report_to="none",
                                save_strategy="no", use_cpu=True, disable_tqdm=True,
                                learning_rate=1e-2, seed=0, data_seed=0)
    base.update(kwargs)
    return TrainingArguments(**base)


def make(tmp: Path, clip: str | None = "global_norm:9", callback: bool = True,
         **kwargs: Any) -> tuple[Trainer, Tiny, list[Any]]:
    model = Tiny()
    a = args(tmp, **kwargs)
    opt, sched = optimizers_from_args(model, a, clip=clip)
    records: list[Any] = []
    opt.register_step_post_hook(lambda o, _a, _k: records.append(o.last_step))
    trainer = Trainer(model=model, args=a, train_dataset=Data(), optimizers=(opt, sched))
    if callback:
        attach(trainer)
    return trainer, model, records


def series(trainer: Trainer, key: str) -> list[float]:
    return [row[key] for row in trainer.state.log_history if key in row]


def test_logs_carry_gradguards_own_numbers(tmp_path: Path) -> None:
    trainer, _, recs = make(tmp_path)
    trainer.train()
    assert len(recs) == 8
    assert series(trainer, "gradguard/grad_norm") == pytest.approx(
        [float(r.grad_norm) for r in recs], rel=1e-6)
    clipped = [float(r.clipped) for r in recs]
    assert series(trainer, "gradguard/clipped") == clipped
    assert any(clipped) and not all(clipped)
    running = [sum(clipped[:k + 1]) for k in range(8)]
    assert series(trainer, "gradguard/clipped_steps") == running
    assert series(trainer, "gradguard/clip_rate") == pytest.approx(
        [c / (k + 1) for k, c in enumerate(running)])
    assert series(trainer, "gradguard/clip_threshold") == [9.0] * 8
    assert series(trainer, "gradguard/skipped") == [0.0] * 8
    assert trainer.args.max_grad_norm == 0  # the Trainer's clip moved into gradguard
    # the Trainer's own (unclipping) measure of the same gradients
    assert series(trainer, "grad_norm") == pytest.approx(series(trainer, "gradguard/grad_norm"),
                                                         rel=1e-5)


def test_report_to_backends_receive_the_numbers(tmp_path: Path) -> None:
    """TensorBoard, as report_to writes it: gradguard's numbers are in the event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer, _, recs = make(tmp_path, report_to="tensorboard")
    trainer.train()
    files = list(tmp_path.rglob("events.out.tfevents.*"))
    assert files
    acc = EventAccumulator(str(files[0].parent))
    acc.Reload()
    got = [e.value for e in acc.Scalars("train/gradguard/grad_norm")]
    assert got == pytest.approx([float(r.grad_norm) for r in recs], rel=1e-6)


def test_double_clipping_is_an_error_by_default(tmp_path: Path) -> None:
    model = Tiny()
    a = args(tmp_path, max_grad_norm=1.0)
    opt = gradguard.AdamW(model.parameters(), lr=1e-2, clip="global_norm:1")
    trainer = Trainer(model=model, args=a, train_dataset=Data(), optimizers=(opt, None))
    attach(trainer)
    with pytest.raises(ValueError, match=r"max_grad_norm=1\.0.*clip='global_norm:1\.0'"):
        trainer.train()


def test_double_clipping_can_turn_the_trainers_clip_off(tmp_path: Path) -> None:
    model = Tiny()
    a = args(tmp_path, max_grad_norm=0.01)
    opt = gradguard.AdamW(model.parameters(), lr=1e-2, clip="global_norm:9")
    trainer = Trainer(model=model, args=a, train_dataset=Data(), optimizers=(opt, None))
    attach(trainer, double_clip="disable_framework")
    with pytest.warns(UserWarning, match="Trainer's clip is turned off"):
        trainer.train()
    assert a.max_grad_norm == 0
    assert max(series(trainer, "gradguard/grad_norm")) > 0.01  # not clipped by the Trainer


def test_the_trainers_clip_alone_is_warned(tmp_path: Path) -> None:
    trainer, _, _ = make(tmp_path, clip=None, max_grad_norm=0.01)
    with pytest.warns(UserWarning, match="already clipped"):
        trainer.train()
    assert max(series(trainer, "gradguard/grad_norm")) <= 0.01 * (1 + 1e-4)


def test_optimizer_and_schedule_are_the_trainers_own(tmp_path: Path) -> None:
    """Weight decay for weights only (biases and LayerNorm exempt), the Trainer's lr, betas
    and eps, and its warmup + linear schedule, step by step against torch's AdamW as the
    Trainer builds it."""
    model = Tiny()
    a = args(tmp_path, weight_decay=0.1, adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-6,
             warmup_steps=3, lr_scheduler_type="linear", max_steps=10)
    opt, sched = optimizers_from_args(model, a)
    assert no_decay_names(model) == {"proj.bias", "norm.weight", "norm.bias", "head.bias"}
    decay, exempt = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == {"proj.weight", "head.weight"}
    assert decay["weight_decay"] == 0.1 and exempt["weight_decay"] == 0.0
    assert decay["betas"] == (0.8, 0.95) and decay["eps"] == 1e-6
    assert opt.clip is not None and opt.clip.spec == "global_norm:1.0"
    ref_trainer = Trainer(model=Tiny(), args=args(tmp_path / "ref", weight_decay=0.1,
                                                  warmup_steps=3, max_steps=10,
                                                  lr_scheduler_type="linear"),
                          train_dataset=Data())
    ref_trainer.create_optimizer_and_scheduler(10)
    ref_opt, ref_sched = ref_trainer.optimizer, ref_trainer.lr_scheduler
    assert [len(g["params"]) for g in ref_opt.param_groups] == [2, 4]
    for _ in range(10):
        assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        ref_opt.step()
        ref_sched.step()


def test_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"double_clip.*'error', 'disable_framework'"):
        GradguardTrainerCallback(double_clip="both")
    with pytest.raises(ValueError, match=r"Invalid name: 'Adamm'.*'AdamW'"):
        optimizers_from_args(Tiny(), args(tmp_path), name="Adamm")
    with pytest.raises(ValueError, match="num_training_steps"):
        optimizers_from_args(Tiny(), args(tmp_path, max_steps=-1))
    trainer, _, _ = make(tmp_path, callback=False)
    with pytest.raises(TypeError, match="GradguardTrainerCallback"):
        attach(trainer, callback=object())  # type: ignore[arg-type]


def test_resume_continues_gradguards_state(tmp_path: Path) -> None:
    """A run of 8 steps resumed from its checkpoint at step 4: parameters and gradguard's
    counters are those of the 8 steps in one go."""
    whole, whole_model, _ = make(tmp_path / "whole")
    whole.train()
    first, _, _ = make(tmp_path / "run", save_strategy="steps", save_steps=4)
    first.train()
    resumed, resumed_model, _ = make(tmp_path / "run")
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-4"))
    for a, b in zip(whole_model.parameters(), resumed_model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    opt_w = whole.optimizer.optimizer if hasattr(whole.optimizer, "optimizer") else whole.optimizer
    opt_r = (resumed.optimizer.optimizer if hasattr(resumed.optimizer, "optimizer")
             else resumed.optimizer)
    assert int(opt_r.clipped_steps) == int(opt_w.clipped_steps) > 0
    assert series(resumed, "gradguard/clipped_steps")[-1] == float(opt_w.clipped_steps)


def test_the_example_trains_and_logs(tmp_path: Path) -> None:
    """examples/hf_trainer_digits.py: one epoch through the real Trainer; gradguard's numbers
    are in its last training log."""
    result = load_example("hf_trainer_digits").main(["--epochs", "1", "--out", str(tmp_path)])
    assert result["step"] == 20
    assert 0 < result["gradguard/grad_norm"] < float("inf")
    assert 0 <= result["gradguard/clip_rate"] <= 1
    assert result["gradguard/skipped_steps"] == 0


def test_bf16_with_accumulation_clips_once_on_the_accumulated_gradient(tmp_path: Path) -> None:
    """bf16 autocast and two batches per step: one gradguard step per two batches, its norm
    the Trainer's own measure of the accumulated gradient it hands the optimizer."""
    trainer, model, recs = make(tmp_path, bf16=True, gradient_accumulation_steps=2, max_steps=4)
    trainer.train()
    assert len(recs) == 4
    ours = series(trainer, "gradguard/grad_norm")
    assert ours == pytest.approx([float(r.grad_norm) for r in recs], rel=1e-6)
    assert ours == pytest.approx(series(trainer, "grad_norm"), rel=1e-5)
    assert all(p.dtype == torch.float32 for p in model.parameters())
