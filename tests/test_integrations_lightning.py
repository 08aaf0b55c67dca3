"""gradguard.integrations.lightning: tiny models trained through the real Lightning Trainer.
The numbers logged are gradguard's own, double clipping is caught, a resumed run continues
gradguard's state, and bf16-mixed with gradient accumulation clips once, on the accumulated
gradient."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gradguard
from gradguard.integrations.lightning import GradguardCallback
from helpers import load_example


class MemoryLogger(Logger):
    """Every ``log_metrics`` call, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append((step, dict(metrics)))

    def series(self, key: str) -> list[float]:
        return [m[key] for _, m in self.rows if key in m]


class Tiny(pl.LightningModule):
    """A small regression MLP; records gradguard's own last_step (and the norm of the
    gradients the optimizer is handed, before any clip) at every optimizer step."""

    def __init__(self, clip: str | None = "global_norm:0.5", lr: float = 1e-2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        self.clip = clip
        self.lr = lr
        self.records: list[Any] = []
        self.handed: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        # (after backward, inside the optimizer's closure; before Lightning's own clip)
        grads = [p.grad.double() for p in self.parameters() if p.grad is not None]
        self.handed.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads]))))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        opt = gradguard.AdamW(self.parameters(), lr=self.lr, clip=self.clip)
        opt.register_step_post_hook(lambda o, a, k: self.records.append(o.last_step))
        return opt


def data(n: int = 64, batch: int = 8) -> DataLoader[Any]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g)
    y = (x.sum(1, keepdim=True) * 3).sin() * 10
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False)


def trainer(logger: Logger | None = None, callbacks: list[pl.Callback] | None = None,
            **kwargs: Any) -> pl.Trainer:
    kwargs.setdefault("max_epochs", 1)
    return pl.Trainer(accelerator="cpu", devices=1, logger=logger or False,
                      log_every_n_steps=1, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False,
                      callbacks=callbacks, **kwargs)


def test_logs_gradguards_own_numbers_every_step() -> None:
    """Every optimizer step's grad_norm, clip_scale, clipped and skipped flags and counters
    reach the logger as gradguard recorded them; clip_rate is clipped steps over steps."""
    log = MemoryLogger()
    model = Tiny(clip="global_norm:9")  # norms here are 3.5-12.4: some steps clipped
    trainer(log, [GradguardCallback()]).fit(model, data())
    recs = model.records
    assert len(recs) == 8
    assert log.series("gradguard/grad_norm") == pytest.approx(
        [float(r.grad_norm) for r in recs], rel=1e-6)
    assert log.series("gradguard/clip_scale") == pytest.approx(
        [float(r.clip_scale) for r in recs], rel=1e-6)
    clipped = [float(r.clipped) for r in recs]
    assert log.series("gradguard/clipped") == clipped
    assert any(clipped) and not all(clipped)  # the test can tell them apart
    assert log.series("gradguard/skipped") == [0.0] * 8
    running = [sum(clipped[:k + 1]) for k in range(8)]
    assert log.series("gradguard/clipped_steps") == running
    assert log.series("gradguard/clip_rate") == pytest.approx(
        [c / (k + 1) for k, c in enumerate(running)])
    assert log.series("gradguard/clip_threshold") == [9.0] * 8
    assert log.series("gradguard/grad_norm") == pytest.approx(model.handed, rel=1e-5)


def test_double_clipping_is_an_error_by_default() -> None:
    with pytest.raises(MisconfigurationException, match=r"gradient_clip_val=1\.0.*"
                       r"clip='global_norm:0\.5'.*double_clip='disable_framework'"):
        trainer(None, [GradguardCallback()], gradient_clip_val=1.0).fit(Tiny(), data())


def test_double_clipping_can_turn_lightnings_clip_off() -> None:
    """With double_clip='disable_framework' the Trainer's clip is off (with a warning): the
    run is the one without gradient_clip_val, and gradguard sees the raw gradients."""
    log, ref_log = MemoryLogger(), MemoryLogger()
    model, ref = Tiny(), Tiny()
    t = trainer(log, [GradguardCallback(double_clip="disable_framework")],
                gradient_clip_val=0.01)
    with pytest.warns(UserWarning, match="Lightning's clip is turned off"):
        t.fit(model, data())
    assert t.gradient_clip_val is None
    trainer(ref_log, [GradguardCallback()]).fit(ref, data())
    norms = log.series("gradguard/grad_norm")
    assert norms == pytest.approx(ref_log.series("gradguard/grad_norm"), rel=1e-6)
    assert max(norms) > 0.01  # had Lightning clipped, no norm would exceed its 0.01
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_lightnings_clip_alone_is_warned() -> None:
    """Lightning clipping and gradguard not: gradguard's numbers are those of clipped
    gradients, which the warning says."""
    log = MemoryLogger()
    with pytest.warns(UserWarning, match="already clipped"):
        trainer(log, [GradguardCallback()], gradient_clip_val=0.01).fit(Tiny(clip=None),
                                                                         data())
    assert max(log.series("gradguard/grad_norm")) <= 0.01 * (1 + 1e-4)


def test_bf16_mixed_with_accumulation_clips_once_on_the_accumulated_gradient() -> None:
    """Two batches per step under bf16-mixed: one optimizer step per two batches, and its
    recorded norm is the norm of the accumulated gradient the optimizer was handed."""
    log = MemoryLogger()
    model = Tiny(clip="global_norm:0.5")
    trainer(log, [GradguardCallback()], precision="bf16-mixed",
            accumulate_grad_batches=2).fit(model, data())
    assert len(model.records) == 4
    norms = log.series("gradguard/grad_norm")
    assert len(norms) == 4
    assert norms == pytest.approx(model.handed, rel=1e-5)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_resume_continues_gradguards_state(tmp_path: Path) -> None:
    """One epoch, a checkpoint, a second epoch resumed from it: the parameters, gradguard's
    counters and the callback's step count are those of two epochs in one run."""
    whole, whole_cb = Tiny(), GradguardCallback()
    trainer(None, [whole_cb], max_epochs=2).fit(whole, data())
    first = Tiny()
    t1 = trainer(None, [GradguardCallback()], max_epochs=1)
    t1.fit(first, data())
    ckpt = tmp_path / "one.ckpt"
    t1.save_checkpoint(ckpt)
    resumed, resumed_cb = Tiny(), GradguardCallback()
    log = MemoryLogger()
    t2 = trainer(log, [resumed_cb], max_epochs=2)
    t2.fit(resumed, data(), ckpt_path=str(ckpt))
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    opt_w, opt_r = whole.trainer.optimizers[0], t2.optimizers[0]
    assert int(opt_r.clipped_steps) == int(opt_w.clipped_steps) > 0  # type: ignore[attr-defined]
    assert resumed_cb.steps == whole_cb.steps == {0: 16}
    rate = log.series("gradguard/clip_rate")[-1]
    assert rate == pytest.approx(int(opt_w.clipped_steps) / 16)  # type: ignore[attr-defined]


def test_monitor_findings_reach_the_logs_and_warnings() -> None:
    """A clip far below every gradient norm: the Monitor finds clipping always on; the
    finding is warned with its advice and counted in the logs."""
    log = MemoryLogger()
    cb = GradguardCallback(monitor=True, monitor_interval=10)  # its detector needs 100 steps
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(log, [cb], max_epochs=15).fit(Tiny(clip="global_norm:1e-6"), data())
    messages = [str(w.message) for w in caught if "gradguard Monitor" in str(w.message)]
    assert any("clipping is always on" in m for m in messages)
    counts = log.series("gradguard/findings/clip_always")
    assert counts and counts[-1] >= 1
    assert cb._monitors == {}  # closed at the end of fit


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match=r"double_clip.*'error', 'disable_framework'"):
        GradguardCallback(double_clip="both")
    with pytest.raises(ValueError, match="monitor_interval"):
        GradguardCallback(monitor_interval=0)
    cb = GradguardCallback()
    with pytest.raises(ValueError, match="Invalid GradguardCallback state"):
        cb.load_state_dict({"steps": {0: -1}})


def test_a_torch_optimizer_alone_is_warned() -> None:
    class Plain(Tiny):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=1e-2)

    with pytest.warns(UserWarning, match="none of the Trainer's optimizers"):
        trainer(None, [GradguardCallback()]).fit(Plain(), data())


def test_the_example_trains_and_logs(tmp_path: Path) -> None:
    """examples/lightning_digits.py: one epoch through the real Trainer writes gradguard's
    numbers into the CSV log and returns the last of them."""
    result = load_example("lightning_digits").main(["--epochs", "1", "--out", str(tmp_path)])
    assert result["step"] > 0
    assert 0 < result["gradguard/grad_norm"] < math.inf
    assert 0 <= result["gradguard/clip_rate"] <= 1
    assert result["gradguard/skipped_steps"] == 0
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert "gradguard/clip_scale" in header and "val_acc" in header


def test_no_logger_no_warning() -> None:
    """Trainer(logger=False): the callback counts steps but logs nothing (Lightning would warn
    at every metric)."""
    cb = GradguardCallback()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(None, [cb]).fit(Tiny(), data())
    assert cb.steps == {0: 8}
    assert not [w for w in caught if "no logger configured" in str(w.message)]


class RankTiny(Tiny):
    """Writes, at the end of training, each rank's gradguard records and parameters."""

    def __init__(self, out: str) -> None:
        super().__init__(clip="global_norm:9")
        self.out = out

    def on_train_end(self) -> None:
        torch.save({"norms": [float(r.grad_norm) for r in self.records],
                    "clipped": [bool(r.clipped) for r in self.records],
                    "params": [p.detach().clone() for p in self.parameters()]},
                   Path(self.out) / f"rank{self.global_rank}.pt")


def test_ddp_ranks_agree_and_rank_zero_logs(tmp_path: Path) -> None:
    """Two CPU processes (ddp_spawn, gloo): both ranks see the same averaged gradients, so
    gradguard's norms, clip decisions and final parameters agree, and what rank 0 logs is its
    own record."""
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(str(tmp_path), name="", version="")
    t = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1,
                   logger=logger, log_every_n_steps=1, enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False,
                   callbacks=[GradguardCallback()])
    t.fit(RankTiny(str(tmp_path)), data())
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert len(r0["norms"]) == 4  # 64 samples, 8 a batch, 2 ranks
    assert r0["norms"] == pytest.approx(r1["norms"], rel=1e-6)
    assert r0["clipped"] == r1["clipped"]
    for a, b in zip(r0["params"], r1["params"], strict=True):
        torch.testing.assert_close(a, b)
    import csv

    with (tmp_path / "metrics.csv").open() as f:
        logged = [float(r["gradguard/grad_norm"]) for r in csv.DictReader(f)
                  if r.get("gradguard/grad_norm")]
    assert logged == pytest.approx(r0["norms"], rel=1e-6)
