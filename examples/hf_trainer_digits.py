"""Train the ``digits`` task's deep MLP with the Hugging Face ``Trainer`` and a gradguard
optimizer.

``optimizers_from_args`` builds gradguard's AdamW and the LR schedule from the
``TrainingArguments`` as the Trainer would build its own (lr, weight decay except for biases
and norms, betas, eps, warmup, schedule), and moves the Trainer's clip (``max_grad_norm``)
into gradguard. ``attach`` adds the callback that puts gradguard's numbers into every training
log. The last log is printed at the end.

    pip install 'gradguard[transformers]'
    python examples/hf_trainer_digits.py --epochs 30 --out /tmp/hf_digits
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

import gradguard
from gradguard.integrations.transformers import attach, optimizers_from_args


class DigitsModel(nn.Module):
    """The task's MLP, returning the loss the Trainer expects."""

    def __init__(self) -> None:
        super().__init__()
        self.net = gradguard.tasks.get("digits").build_model()

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        logits = self.net(x)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


class Split(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--out", default="hf_digits", help="the Trainer's output_dir")
    a = ap.parse_args(argv)
    if a.epochs < 1:
        ap.error(f"invalid --epochs {a.epochs}; must be >= 1")
    torch.manual_seed(0)
    task = gradguard.tasks.get("digits")
    train, val = Split(*task.train), Split(*task.val)
    steps = a.epochs * -(-len(train) // 64)
    args = TrainingArguments(output_dir=a.out, per_device_train_batch_size=64,
                             max_steps=steps, learning_rate=a.lr, max_grad_norm=1.0,
                             warmup_steps=0.05, logging_steps=20, report_to="none",
                             save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
    model = DigitsModel()
    trainer = Trainer(model=model, args=args, train_dataset=train,
                      optimizers=optimizers_from_args(model, args))
    attach(trainer)
    trainer.train()
    with torch.no_grad():
        acc = float((model.net(val.x).argmax(1) == val.y).float().mean())
    last = next(r for r in reversed(trainer.state.log_history) if "gradguard/grad_norm" in r)
    result = {k: float(last[k]) for k in ("step", "loss", "gradguard/grad_norm",
                                          "gradguard/clip_rate", "gradguard/skipped_steps")}
    result["val_acc"] = acc
    for k, v in result.items():
        print(f"{k}: {v:.4g}")
    return result


if __name__ == "__main__":
    main()
