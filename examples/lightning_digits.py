"""Train the ``digits`` task's deep MLP with PyTorch Lightning and a gradguard optimizer.

gradguard's AdamW clips the global gradient norm inside its step (so the Trainer is given no
``gradient_clip_val``), and :class:`gradguard.integrations.lightning.GradguardCallback` logs
what each step did — the norm before clipping, the clip scale and rate, skipped steps — through
the Trainer's logger (a CSV file here). The last step's numbers and the validation accuracy are
printed at the end (30 epochs: about 0.86 validation accuracy, clip rate about 0.93).

    pip install 'gradguard[lightning]'
    python examples/lightning_digits.py --epochs 30 --out /tmp/lightning_digits
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gradguard
from gradguard.integrations.lightning import GradguardCallback


class Digits(pl.LightningModule):
    def __init__(self, clip: str, lr: float) -> None:
        super().__init__()
        self.net = gradguard.tasks.get("digits").build_model()
        self.clip, self.lr = clip, lr

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_step=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self.net(x).argmax(1) == y).float().mean(), on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return gradguard.AdamW(self.parameters(), lr=self.lr, clip=self.clip)


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--clip", default="global_norm:1")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--out", default="lightning_digits", help="folder for the CSV logs")
    a = ap.parse_args(argv)
    if a.epochs < 1:
        ap.error(f"invalid --epochs {a.epochs}; must be >= 1")
    torch.manual_seed(0)
    task = gradguard.tasks.get("digits")
    train = DataLoader(TensorDataset(*task.train), batch_size=64, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    val = DataLoader(TensorDataset(*task.val), batch_size=256)
    logger = CSVLogger(a.out, name="", version="")
    trainer = pl.Trainer(max_epochs=a.epochs, accelerator="cpu", devices=1, logger=logger,
                         log_every_n_steps=5, callbacks=[GradguardCallback()],
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False)
    trainer.fit(Digits(a.clip, a.lr), train, val)
    with Path(logger.log_dir, "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    last = next(r for r in reversed(rows) if r.get("gradguard/grad_norm"))
    accs = [r for r in rows if r.get("val_acc")]
    result = {k: float(last[k]) for k in ("step", "gradguard/grad_norm", "gradguard/clip_rate",
                                          "gradguard/skipped_steps")}
    result["val_acc"] = float(accs[-1]["val_acc"])
    for k, v in result.items():
        print(f"{k}: {v:.4g}")
    print(f"logs: {Path(logger.log_dir, 'metrics.csv')}")
    return result


if __name__ == "__main__":
    main()
