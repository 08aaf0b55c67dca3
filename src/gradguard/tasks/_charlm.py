"""``charlm``: a small causal transformer that models the characters of Python's own sources."""

from __future__ import annotations

import math
import os
import sysconfig

import numpy as np
import torch
from torch import Tensor, nn

from ._base import Task

SUMMARY = "character LM on Python stdlib sources, 2-layer causal transformer, val bits/char"

# Modules that are single .py files in every CPython from 3.11 on (not packages, not removed).
FILES = ("textwrap.py", "argparse.py", "difflib.py", "functools.py", "heapq.py", "pprint.py",
         "calendar.py", "random.py", "contextlib.py", "dataclasses.py")
CONTEXT = 32
TRAIN_WINDOWS = 8_000
VAL_WINDOWS = 256
VAL_FRACTION = 0.1
SEED = 1234

# SGD with momentum trains this transformer only at large LRs (best near 0.3; NaN from 1.0
# unclipped): half-decades from 1e-2 to 10. Adam's general default range (1e-4 to 0.1) fits.
_MOMENTUM_LRS = (0.01, 0.0316, 0.1, 0.316, 1.0, 3.16, 10.0)

# ids: 0 newline, 1..95 printable ASCII (space to tilde), 96 anything else
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
UNKNOWN = len(VOCAB)
VOCAB_SIZE = len(VOCAB) + 1


def encode(text: str) -> Tensor:
    """``text`` as int64 ids: newline and printable ASCII each their own id, anything else
    :data:`UNKNOWN`."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    table = np.full(128, UNKNOWN, dtype=np.int64)
    for i, ch in enumerate(VOCAB):
        table[ord(ch)] = i
    ids = np.where(codes < 128, table[np.minimum(codes, 127)], UNKNOWN)
    return torch.from_numpy(ids)


def decode(ids: Tensor) -> str:
    """The text of ``ids`` (unknown ids as ``"?"``)."""
    return "".join(VOCAB[i] if i < len(VOCAB) else "?" for i in ids.tolist())


def load_text() -> str:
    """The sources in :data:`FILES` from this Python's standard library, joined in order (a
    file that is missing is left out; none found raises ``FileNotFoundError``)."""
    stdlib = sysconfig.get_paths()["stdlib"]
    parts = []
    for name in FILES:
        path = os.path.join(stdlib, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                parts.append(f.read())
    if not parts:
        raise FileNotFoundError(f"task 'charlm' reads Python's standard library sources, but "
                                f"none of {', '.join(FILES)} is in {stdlib}")
    return "\n".join(parts)


class CharTransformer(nn.Module):
    """Token and learned position embeddings, pre-norm causal transformer encoder layers, a
    final LayerNorm and a linear head: ``(B, T)`` ids to ``(B, T, vocab)`` logits."""

    def __init__(self, vocab: int = VOCAB_SIZE, context: int = CONTEXT, d_model: int = 64,
                 heads: int = 4, ff: int = 128, layers: int = 2) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(context, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, ff, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        self.mask: Tensor
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context),
                             persistent=False)

    def forward(self, ids: Tensor) -> Tensor:
        t = ids.shape[1]
        h = self.tok(ids) + self.pos(torch.arange(t, device=ids.device))
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        out: Tensor = self.head(self.norm(h))
        return out


def _loss(logits: Tensor, targets: Tensor) -> Tensor:
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _bits_per_char(logits: Tensor, targets: Tensor) -> float:
    return float(_loss(logits, targets)) / math.log(2)


def _windows(ids: Tensor, starts: Tensor, length: int) -> tuple[Tensor, Tensor]:
    rows = ids[starts.unsqueeze(1) + torch.arange(length + 1)]
    return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


def charlm() -> Task:
    """A character-level language model of Python source: ten modules of this Python's
    standard library (textwrap, argparse, difflib, functools, heapq, pprint, calendar, random,
    contextlib, dataclasses; about 430 KB), characters mapped to 97 ids (newline, printable
    ASCII, one id for anything else). The text is split by position: the first 90% trains,
    the last 10% validates. Examples are windows of 33 characters (input the first 32, target
    the next character at each position): 8,000 training windows at fixed random offsets, 256
    consecutive non-overlapping validation windows from the start of the validation text.
    Model: token + learned position embeddings, 2 pre-norm transformer encoder layers (d_model
    64, 4 heads, feed-forward 128, no dropout) with a causal mask, LayerNorm, linear head
    (81,633 parameters). Metric: validation bits per character (cross-entropy / ln 2,
    lower is better); the baseline is the unigram entropy of the training text."""
    ids = encode(load_text())
    cut = int(len(ids) * (1 - VAL_FRACTION))
    train_ids, val_ids = ids[:cut], ids[cut:]
    gen = torch.Generator().manual_seed(SEED)
    starts = torch.randint(0, len(train_ids) - CONTEXT, (TRAIN_WINDOWS,), generator=gen)
    n_val = min(VAL_WINDOWS, (len(val_ids) - 1) // (CONTEXT + 1))
    val_starts = torch.arange(n_val) * (CONTEXT + 1)
    freq = torch.bincount(train_ids, minlength=VOCAB_SIZE).double() / len(train_ids)
    freq = freq[freq > 0]
    entropy = float(-(freq * freq.log2()).sum())
    return Task(
        name="charlm", description=charlm.__doc__ or SUMMARY, build_model=CharTransformer,
        train=_windows(train_ids, starts, CONTEXT), val=_windows(val_ids, val_starts, CONTEXT),
        loss_fn=_loss, metric_fn=_bits_per_char, metric_name="bits/char",
        higher_is_better=False, target=3.5, baseline=round(entropy, 4),
        steps=240, batch_size=16, eval_every=60,
        lrs={"momentum": _MOMENTUM_LRS},
    )
