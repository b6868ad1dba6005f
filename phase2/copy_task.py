"""The original code's copy task: reproduce a random digit string of random length (Noam schedule, no label smoothing).

Encoder-decoder, exactly as the seed: src = the string padded with 0, tgt = <sos> string <eos> padded;
teacher forcing, CrossEntropy(ignore_index=0, label_smoothing=0), Adam(betas 0.9/0.98, eps 1e-9) under the
Noam schedule, and greedy decoding scored by whole-sequence exact match.

Decoder-only models (the baseline LM, Phase 2): one sequence `src <sep> src <eos>` padded with 0; the loss
covers the copy and <eos> (the first src is random and cannot be predicted); greedy decoding from
`src <sep>`, exact match of the whole generated copy up to and including <eos>.

    cfg = CopyTaskConfig(num_symbols=10, max_len=8, steps=600)
    result = train_seq2seq_copy(cfg)                 # {"exact_match": ..., "loss": ..., "steps": ...}
    result = train_lm_copy(model, cfg)               # model: (B, T) ids -> (B, T, vocab) logits
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import Dataset

from common.schedulers import noam
from phase2.baseline import Transformer, create_masks, create_padding_mask, greedy_decode

PAD = 0


@dataclass
class CopyTaskConfig:
    num_symbols: int = 10  # data symbols 1..num_symbols; 0 pads (the original code's vocab_size is num_symbols + 1)
    max_len: int = 10  # strings have 1..max_len symbols (variable lengths: the model must learn to stop)
    num_train: int = 0  # fixed training set size as the seed (1000); 0: a fresh random batch every step
    batch_size: int = 32
    steps: int = 1000
    d_model: int = 128  # the original code's encoder-decoder (ignored by train_lm_copy, which gets a model)
    num_layers: int = 2
    num_heads: int = 4
    d_ff: int = 512
    dropout: float = 0.1
    warmup_steps: int = 1000
    noam_factor: float = 1.0  # lr = factor * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)
    eval_samples: int = 500
    seed: int = 0
    time_budget_s: float | None = None  # stop training early when this much wall time has passed
    eval_every: int = 0  # also score exact match every this many steps (the result's "curve"); 0: at the end only

    @property
    def vocab_size(self) -> int:  # the original code's SRC_VOCAB: 0 (pad) and the symbols
        return self.num_symbols + 1

    @property
    def sos(self) -> int:
        return self.vocab_size

    @property
    def eos(self) -> int:
        return self.vocab_size + 1

    @property
    def sep(self) -> int:  # decoder-only separator: the original code's <sos> id
        return self.vocab_size

    @property
    def lm_vocab_size(self) -> int:
        return self.vocab_size + 2


class CopyTaskDataset(Dataset):
    """(src [max_len + 2], tgt [max_len + 2]) pairs, tgt = <sos> seq <eos>, 0-padded; lengths min_len..max_len.

    `exclude`: strings (as tuples of symbols) never drawn; a draw that hits one is drawn again, length too."""

    def __init__(
        self, num_samples: int, max_len: int, vocab_size: int, seed: int = 0, exclude=frozenset(), min_len: int = 1
    ):
        self.num_samples, self.max_len, self.vocab_size, self.min_len = num_samples, max_len, vocab_size, min_len
        gen = torch.Generator().manual_seed(seed)
        self.data = [self._sample(gen, exclude) for _ in range(num_samples)]

    def _sample(self, gen, exclude):
        while True:
            seq_len = int(torch.randint(self.min_len, self.max_len + 1, (), generator=gen))
            seq = torch.randint(1, self.vocab_size, (seq_len,), generator=gen)
            if tuple(seq.tolist()) not in exclude:
                break
        src = torch.zeros(self.max_len + 2, dtype=torch.long)
        src[:seq_len] = seq
        tgt = torch.zeros(self.max_len + 2, dtype=torch.long)
        tgt[0], tgt[1 : seq_len + 1], tgt[seq_len + 1] = self.vocab_size, seq, self.vocab_size + 1
        return src, tgt

    def __len__(self):
        return self.num_samples

    def __getitem__(self, idx):
        return self.data[idx]


def collate_fn(batch):
    src, tgt = zip(*batch)
    return torch.stack(src), torch.stack(tgt)


# The evaluation strings come from their own generator stream, far from the training streams (seed + 1 + step),
# and training never draws one of them: with short strings many would otherwise recur in training by chance.
# They are drawn only from lengths with at least EVAL_MIN_STRINGS possible strings, so that holding them out
# removes a few per cent of a length's strings, never a whole length (digits: all ten strings of length 1).
EVAL_STREAM = 1 << 40
EVAL_MIN_STRINGS = 1000


def eval_min_len(cfg: CopyTaskConfig) -> int:
    return next(n for n in range(1, cfg.max_len + 1) if cfg.num_symbols**n >= EVAL_MIN_STRINGS or n == cfg.max_len)


def eval_set(cfg: CopyTaskConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out (src, tgt) strings every model is scored on."""
    data = CopyTaskDataset(
        cfg.eval_samples, cfg.max_len, cfg.vocab_size, seed=EVAL_STREAM + cfg.seed, min_len=eval_min_len(cfg)
    )
    return collate_fn(data.data)


def held_out_strings(cfg: CopyTaskConfig) -> frozenset[tuple[int, ...]]:
    src, _ = eval_set(cfg)
    return frozenset(tuple(row[row != PAD].tolist()) for row in src)


def training_batch(cfg: CopyTaskConfig, stream: int, exclude: frozenset) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of fresh strings from generator stream `stream`, none of them in `exclude`."""
    return collate_fn(CopyTaskDataset(cfg.batch_size, cfg.max_len, cfg.vocab_size, seed=stream, exclude=exclude).data)


def _batches(cfg: CopyTaskConfig, gen_seed: int):
    """Endless (src, tgt) training batches, free of evaluation strings: epochs over a fixed set (num_train > 0)
    or fresh samples."""
    rng, exclude = random.Random(gen_seed), held_out_strings(cfg)
    if cfg.num_train:
        data = CopyTaskDataset(cfg.num_train, cfg.max_len, cfg.vocab_size, seed=gen_seed, exclude=exclude)
        while True:
            order = list(range(len(data)))
            rng.shuffle(order)
            for i in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size):  # drop_last, as the original
                yield collate_fn([data[j] for j in order[i : i + cfg.batch_size]])
    step = 0
    while True:
        yield training_batch(cfg, gen_seed + step, exclude)
        step += 1


def _noam_adam(model: nn.Module, cfg: CopyTaskConfig, d_model: int):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1.0, betas=(0.9, 0.98), eps=1e-9)
    sched = LambdaLR(opt, lambda s: noam(s + 1, d_model, cfg.warmup_steps, cfg.noam_factor))
    return opt, sched


def _train(model, cfg, d_model, loss_fn, device, score):
    """Shared loop and scoring: exact match at the end, the mean loss over the last 50 steps, the steps taken,
    the seconds, and the curve [(step, exact match)] (every eval_every steps and at the end)."""
    opt, sched = _noam_adam(model, cfg, d_model)
    batches = _batches(cfg, cfg.seed + 1)
    losses, curve, start, steps = [], [], time.perf_counter(), 0
    model.train()
    while steps < cfg.steps:
        src, tgt = (t.to(device) for t in next(batches))
        loss = loss_fn(src, tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach().clone())  # a bare detach() kept ~0.5 MB a step alive on the CPU
        steps += 1
        if cfg.eval_every and steps % cfg.eval_every == 0 and steps < cfg.steps:
            curve.append((steps, score()))
            model.train()
        if cfg.time_budget_s is not None and time.perf_counter() - start > cfg.time_budget_s:
            break
    seconds, final = time.perf_counter() - start, score()
    return {
        "exact_match": final,
        "loss": torch.stack(losses[-50:]).mean().item(),
        "steps": steps,
        "train_seconds": seconds,
        "curve": curve + [(steps, final)],
    }


# ------------------------------------------------------------------------------------ encoder-decoder
def build_seq2seq(cfg: CopyTaskConfig) -> Transformer:
    """The original code's model and Xavier initialisation for this task's vocabulary."""
    torch.manual_seed(cfg.seed)
    model = Transformer(
        cfg.vocab_size,
        cfg.vocab_size + 2,
        cfg.d_model,
        cfg.num_layers,
        cfg.num_heads,
        cfg.d_ff,
        max_len=cfg.max_len + 2,
        dropout=cfg.dropout,
    )
    for p in model.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)
    return model


@torch.no_grad()
def seq2seq_exact_match(model: Transformer, cfg: CopyTaskConfig, device="cpu") -> float:
    src, tgt = (t.to(device) for t in eval_set(cfg))
    ys = greedy_decode(model, src, create_padding_mask(src, PAD), cfg.max_len + 1, cfg.sos, cfg.eos)
    width = max(ys.size(1), tgt.size(1))
    ys, tgt = F.pad(ys, (0, width - ys.size(1))), F.pad(tgt, (0, width - tgt.size(1)))
    # after <eos> the decoder keeps emitting <eos>; the reference is padded with 0 there
    after_eos = (ys == cfg.eos).long().cumsum(1) - (ys == cfg.eos).long() > 0
    ys = ys.masked_fill(after_eos, PAD)
    return (ys == tgt).all(1).float().mean().item()


def train_seq2seq_copy(cfg: CopyTaskConfig, device="cpu") -> dict:
    model = build_seq2seq(cfg).to(device)
    criterion = nn.CrossEntropyLoss(ignore_index=PAD, label_smoothing=0.0)

    def loss_fn(src, tgt):
        tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
        src_mask, tgt_mask = create_masks(src, tgt_in, PAD)
        out = model(src, tgt_in, src_mask, tgt_mask)
        return criterion(out.reshape(-1, out.size(-1)), tgt_out.reshape(-1))

    result = _train(model, cfg, cfg.d_model, loss_fn, device, lambda: seq2seq_exact_match(model, cfg, device))
    return {**result, "model": model}


# ---------------------------------------------------------------------------------------- decoder-only
def lm_sequences(src: torch.Tensor, cfg: CopyTaskConfig):
    """(B, max_len + 2) padded src -> input ids (B, 2 max_len + 1), targets (B, 2 max_len + 1) with -100
    where no loss is taken (the first, random copy and padding)."""
    L = (src != PAD).sum(1, keepdim=True)  # (B, 1)
    pos = torch.arange(2 * cfg.max_len + 2, device=src.device)[None]  # (1, 2 max_len + 2)
    first = src.gather(1, pos.clamp(max=src.size(1) - 1).expand(src.size(0), -1))
    second = src.gather(1, (pos - L - 1).clamp(0, src.size(1) - 1))
    seq = torch.where(
        pos < L,
        first,
        torch.where(pos == L, cfg.sep, torch.where(pos <= 2 * L, second, torch.where(pos == 2 * L + 1, cfg.eos, PAD))),
    )
    copy = (pos > L) & (pos <= 2 * L + 1)  # positions whose token the model must produce
    targets = torch.where(copy, seq, -100)
    return seq[:, :-1], targets[:, 1:]


@torch.no_grad()
def lm_exact_match(model: nn.Module, cfg: CopyTaskConfig, device="cpu") -> float:
    """Greedy generation from `src <sep>` for every length; exact match of copy + <eos>."""
    model.eval()
    src, _ = eval_set(cfg)
    lengths = (src != PAD).sum(1)
    correct = 0
    for L in lengths.unique().tolist():
        rows = src[lengths == L, :L].to(device)
        seq = torch.cat([rows, torch.full_like(rows[:, :1], cfg.sep)], 1)
        for _ in range(L + 1):  # the copy and <eos>
            nxt = model(seq)[:, -1].argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], 1)
        want = torch.cat([rows, torch.full_like(rows[:, :1], cfg.eos)], 1)
        correct += (seq[:, L + 1 :] == want).all(1).sum().item()
    return correct / src.size(0)


def train_lm_copy(model: nn.Module, cfg: CopyTaskConfig, device="cpu", d_model: int | None = None) -> dict:
    """Train a decoder-only model (vocab >= cfg.lm_vocab_size) on the copy task; returns exact match."""
    d_model = d_model or getattr(getattr(model, "config", None), "d_model", cfg.d_model)

    def loss_fn(src, tgt):
        x, y = lm_sequences(src, cfg)
        logits = model(x)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), ignore_index=-100)

    return _train(model, cfg, d_model, loss_fn, device, lambda: lm_exact_match(model, cfg, device))
