"""The comparison model: seed 002's Transformer, encoder-decoder and decoder-only, from one set of blocks.

    model = Transformer(src_vocab_size=100, tgt_vocab_size=102, d_model=128, num_layers=2, num_heads=4,
                        d_ff=512, max_len=22, dropout=0.1)
    logits = model(src, tgt_input, src_mask, tgt_mask)              # (B, T, tgt_vocab)
    ys = greedy_decode(model, src, src_mask, max_len=10, start_symbol=100, end_symbol=101)

    lm = TransformerLM(TransformerLMConfig(vocab_size=256))
    logits = lm(input_ids)                                            # (B, T, vocab)

Blocks follow "Attention is all you need" as the seed builds them: token embedding times sqrt(d_model) plus
sinusoidal positions, multi-head attention (here through F.scaled_dot_product_attention), a ReLU FFN, and
"Add & Norm" (post-LayerNorm) after each sub-layer. The decoder-only LM stacks the decoder's self-attention
and FFN; it is Phase 2's baseline and its "Phase 1" for `convert_phase1_to_phase2`.

Masks are boolean, True where attention is allowed: src_mask (B, 1, 1, S), tgt_mask (B, 1, T, T).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class TransformerLMConfig:
    vocab_size: int = 50257
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    ffn_dim: int = 1024
    dropout: float = 0.0
    max_len: int = 16384  # positions of the sinusoidal table (a buffer: no parameters)
    activation: str = "relu"  # seed 002's FFN; Phase 2 copies the FFN and keeps its activation
    tie_embeddings: bool = False  # seed 002 keeps a separate output projection (fc_out)

    def validate(self) -> TransformerLMConfig:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "ffn_dim", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TransformerLMConfig.{name}={value!r}: must be a positive integer")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"TransformerLMConfig.d_model={self.d_model} is not divisible by "
                f"n_heads={self.n_heads}; pick n_heads dividing d_model"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TransformerLMConfig.dropout={self.dropout!r}: must be in [0, 1)")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"TransformerLMConfig.activation={self.activation!r}: use one of {sorted(ACTIVATIONS)}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TransformerLMConfig:
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            known = sorted(cls.__dataclass_fields__)
            raise ValueError(f"TransformerLMConfig: unknown fields {unknown}; known: {known}")
        return cls(**d).validate()


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


# ------------------------------------------------------------------------------------------------ masks
def create_padding_mask(seq: torch.Tensor, pad_idx: int = 0) -> torch.Tensor:
    """(B, S) token ids -> (B, 1, 1, S): True at real tokens."""
    return (seq != pad_idx)[:, None, None, :]


def create_look_ahead_mask(size: int, device=None) -> torch.Tensor:
    """(1, 1, T, T): True on and below the diagonal (a position sees itself and the past)."""
    return torch.ones(size, size, dtype=torch.bool, device=device).tril()[None, None]


def create_masks(src: torch.Tensor, tgt: torch.Tensor, pad_idx: int = 0):
    """Seed 002's pair: src padding mask (B, 1, 1, S) and tgt padding & look-ahead mask (B, 1, T, T)."""
    src_mask = create_padding_mask(src, pad_idx)
    tgt_mask = create_padding_mask(tgt, pad_idx) & create_look_ahead_mask(tgt.size(1), tgt.device)
    return src_mask, tgt_mask


# ----------------------------------------------------------------------------------------------- blocks
def sinusoidal_table(n_pos: int, d_model: int) -> torch.Tensor:
    """(n_pos, d_model): PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(...), computed in float64."""
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    table = torch.zeros(n_pos, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: d_model // 2])
    return table.float()


class Embeddings(nn.Module):
    """Token embedding * sqrt(d_model) + sinusoidal position, then dropout."""

    def __init__(self, vocab_size: int, d_model: int, max_len: int, dropout: float):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.register_buffer("pe", sinusoidal_table(max_len, d_model), persistent=False)
        self.scale = math.sqrt(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        T = ids.size(1)
        if T > self.pe.size(0):
            raise ValueError(
                f"sequence length {T} exceeds max_len={self.pe.size(0)}; build the model with a larger max_len"
            )
        return self.drop(self.tok(ids) * self.scale + self.pe[:T])  # (B, T, D)


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.h, self.dk = num_heads, d_model // num_heads
        self.q, self.k, self.v = (nn.Linear(d_model, d_model) for _ in range(3))
        self.out = nn.Linear(d_model, d_model)
        self.p = dropout

    def forward(self, query, key, value, mask=None, is_causal: bool = False):
        B, Tq, D = query.shape

        def heads(x):  # (B, T, D) -> (B, h, T, dk)
            return x.view(B, -1, self.h, self.dk).transpose(1, 2)

        q, k, v = heads(self.q(query)), heads(self.k(key)), heads(self.v(value))
        p = self.p if self.training else 0.0
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal)
        return self.out(o.transpose(1, 2).reshape(B, Tq, D))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float, activation: str = "relu"):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.act, self.drop = ACTIVATIONS[activation](), nn.Dropout(dropout)

    def forward(self, x):
        return self.fc2(self.drop(self.act(self.fc1(x))))


class EncoderLayer(nn.Module):
    def __init__(self, d_model, num_heads, d_ff, dropout, activation="relu"):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.ffn = FeedForward(d_model, d_ff, dropout, activation)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask):
        x = self.norm1(x + self.drop(self.self_attn(x, x, x, mask)))  # Add & Norm
        return self.norm2(x + self.drop(self.ffn(x)))


class DecoderLayer(nn.Module):
    """Self-attention, cross-attention (absent in the decoder-only LM), FFN; post-LayerNorm each."""

    def __init__(self, d_model, num_heads, d_ff, dropout, activation="relu", cross: bool = True):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.cross_attn = MultiHeadAttention(d_model, num_heads, dropout) if cross else None
        self.ffn = FeedForward(d_model, d_ff, dropout, activation)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model) if cross else None
        self.drop = nn.Dropout(dropout)

    def forward(self, x, memory=None, src_mask=None, tgt_mask=None, is_causal=False):
        x = self.norm1(x + self.drop(self.self_attn(x, x, x, tgt_mask, is_causal=is_causal)))
        if self.cross_attn is not None:
            x = self.norm3(x + self.drop(self.cross_attn(x, memory, memory, src_mask)))
        return self.norm2(x + self.drop(self.ffn(x)))


# ----------------------------------------------------------------------------------------------- models
class Transformer(nn.Module):
    """Seed 002's encoder-decoder. forward returns logits over the target vocabulary."""

    def __init__(
        self,
        src_vocab_size: int,
        tgt_vocab_size: int,
        d_model: int = 512,
        num_layers: int = 6,
        num_heads: int = 8,
        d_ff: int = 2048,
        max_len: int = 5000,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.src_embed = Embeddings(src_vocab_size, d_model, max_len, dropout)
        self.tgt_embed = Embeddings(tgt_vocab_size, d_model, max_len, dropout)
        self.encoder = nn.ModuleList(EncoderLayer(d_model, num_heads, d_ff, dropout) for _ in range(num_layers))
        self.decoder = nn.ModuleList(DecoderLayer(d_model, num_heads, d_ff, dropout) for _ in range(num_layers))
        self.fc_out = nn.Linear(d_model, tgt_vocab_size)

    def encode(self, src, src_mask):
        x = self.src_embed(src)
        for layer in self.encoder:
            x = layer(x, src_mask)
        return x  # (B, S, D)

    def decode(self, tgt, memory, src_mask, tgt_mask):
        x = self.tgt_embed(tgt)
        for layer in self.decoder:
            x = layer(x, memory, src_mask, tgt_mask)
        return x  # (B, T, D)

    def forward(self, src, tgt, src_mask, tgt_mask):
        return self.fc_out(self.decode(tgt, self.encode(src, src_mask), src_mask, tgt_mask))


@torch.no_grad()
def greedy_decode(
    model: Transformer,
    src: torch.Tensor,
    src_mask: torch.Tensor,
    max_len: int,
    start_symbol: int,
    end_symbol: int,
    device=None,
) -> torch.Tensor:
    """Seed 002's greedy decoding, batched: (B, S) -> (B, <= max_len + 1) starting with start_symbol.

    The encoder runs once; the decoder re-reads the growing prefix. Rows that produced end_symbol keep
    emitting it until every row has ended (or max_len tokens were generated). `device` is accepted for the
    seed's signature; the tensors' own device is used.
    """
    model.eval()
    memory = model.encode(src, src_mask)
    ys = torch.full((src.size(0), 1), start_symbol, dtype=src.dtype, device=src.device)
    done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
    for _ in range(max_len):
        tgt_mask = create_look_ahead_mask(ys.size(1), src.device)
        out = model.decode(ys, memory, src_mask, tgt_mask)
        next_word = model.fc_out(out[:, -1]).argmax(-1)
        next_word = torch.where(done, torch.full_like(next_word, end_symbol), next_word)
        ys = torch.cat([ys, next_word[:, None]], dim=1)
        done |= next_word == end_symbol
        if bool(done.all()):
            break
    return ys


class TransformerLM(nn.Module):
    """Decoder-only LM from the same blocks (causal self-attention + FFN, post-LN). forward -> logits."""

    def __init__(self, config: TransformerLMConfig):
        super().__init__()
        self.config = c = config.validate()
        self.embed = Embeddings(c.vocab_size, c.d_model, c.max_len, c.dropout)
        self.blocks = nn.ModuleList(
            DecoderLayer(c.d_model, c.n_heads, c.ffn_dim, c.dropout, c.activation, cross=False)
            for _ in range(c.n_layers)
        )
        self.fc_out = nn.Linear(c.d_model, c.vocab_size, bias=not c.tie_embeddings)
        if c.tie_embeddings:
            self.fc_out.weight = self.embed.tok.weight
        for p in self.parameters():  # seed 002 initialises every matrix with Xavier
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x, is_causal=True)
        return self.fc_out(x)  # (B, T, vocab)
