"""The comparison models: the Transformer of "Attention is all you need" and Transformer++, the modern decoder.

    model = Transformer(src_vocab_size=100, tgt_vocab_size=102, d_model=128, num_layers=2, num_heads=4,
                        d_ff=512, max_len=22, dropout=0.1)
    logits = model(src, tgt_input, src_mask, tgt_mask)              # (B, T, tgt_vocab)
    ys = greedy_decode(model, src, src_mask, max_len=10, start_symbol=100, end_symbol=101)

    lm = TransformerLM(TransformerLMConfig(vocab_size=256))
    lm = TransformerPP(TransformerPPConfig(vocab_size=256))
    logits = lm(input_ids)                                            # (B, T, vocab)

Transformer (encoder-decoder, and the decoder-only TransformerLM from the same blocks): token embedding times
sqrt(d_model) plus sinusoidal positions, multi-head attention (through F.scaled_dot_product_attention), a ReLU
FFN, dropout, and "Add & Norm" (post-LayerNorm) after each sub-layer. TransformerLM is the baseline that
phase2/convert.py turns into a Phase 2 model.

Transformer++ (LLaMA's recipe): pre-norm blocks with RMSNorm, rotary position embeddings (RoPE) on queries and
keys, a SwiGLU FFN, no biases, no dropout, F.scaled_dot_product_attention(is_causal=True) (flash attention on a
GPU in half precision), the output head optionally tied to the token embedding.

Masks are boolean, True where attention is allowed: src_mask (B, 1, 1, S), tgt_mask (B, 1, T, T).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from phase2.layers import ACTIVATIONS, FeedForward, sinusoidal_table


@dataclass
class TransformerLMConfig:
    vocab_size: int = 50257
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    ffn_dim: int = 1024
    dropout: float = 0.0
    max_len: int = 16384  # positions of the sinusoidal table (a buffer: no parameters)
    activation: str = "relu"  # the FFN's; a Phase 2 model converted from this one keeps it
    tie_embeddings: bool = False  # False: a separate output projection fc_out, with a bias

    def validate(self) -> TransformerLMConfig:
        _check_shape(self, ("vocab_size", "d_model", "n_layers", "n_heads", "ffn_dim", "max_len"))
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


@dataclass
class TransformerPPConfig:
    vocab_size: int = 50257
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    ffn_dim: int | None = None  # SwiGLU hidden width; None: 8/3 * d_model rounded up to a multiple of 16, the
    # width at which its three matrices hold as many weights as a two-matrix FFN of 4 * d_model
    max_len: int = 16384  # longest sequence; RoPE needs no table, but generation re-reads windows of this length
    rope_base: float = 10000.0  # RoPE's frequencies are rope_base^(-2i / head_dim)
    tie_embeddings: bool = True  # the output head is the token embedding matrix

    @property
    def hidden_dim(self) -> int:
        return self.ffn_dim if self.ffn_dim is not None else 16 * math.ceil(8 * self.d_model / 3 / 16)

    def validate(self) -> TransformerPPConfig:
        optional = ("ffn_dim",) if self.ffn_dim is not None else ()
        _check_shape(self, ("vocab_size", "d_model", "n_layers", "n_heads", "max_len", *optional))
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"TransformerPPConfig: head size d_model / n_heads = {self.d_model // self.n_heads} is odd; "
                "RoPE rotates pairs of features, pick an even head size"
            )
        if isinstance(self.rope_base, bool) or not isinstance(self.rope_base, (int, float)) or self.rope_base <= 1:
            raise ValueError(f"TransformerPPConfig.rope_base={self.rope_base!r}: must be a number > 1")
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"TransformerPPConfig.tie_embeddings={self.tie_embeddings!r}: must be True or False")
        return self


def _check_shape(cfg, names) -> None:
    kind = type(cfg).__name__
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{kind}.{name}={value!r}: must be a positive integer")
    if cfg.d_model % cfg.n_heads:
        raise ValueError(
            f"{kind}.d_model={cfg.d_model} is not divisible by n_heads={cfg.n_heads}; pick n_heads dividing d_model"
        )


# ------------------------------------------------------------------------------------------------ masks
def create_padding_mask(seq: torch.Tensor, pad_idx: int = 0) -> torch.Tensor:
    """(B, S) token ids -> (B, 1, 1, S): True at real tokens."""
    return (seq != pad_idx)[:, None, None, :]


def create_look_ahead_mask(size: int, device=None) -> torch.Tensor:
    """(1, 1, T, T): True on and below the diagonal (a position sees itself and the past)."""
    return torch.ones(size, size, dtype=torch.bool, device=device).tril()[None, None]


def create_masks(src: torch.Tensor, tgt: torch.Tensor, pad_idx: int = 0):
    """The encoder-decoder's masks: src padding mask (B, 1, 1, S) and tgt padding & look-ahead mask (B, 1, T, T)."""
    src_mask = create_padding_mask(src, pad_idx)
    tgt_mask = create_padding_mask(tgt, pad_idx) & create_look_ahead_mask(tgt.size(1), tgt.device)
    return src_mask, tgt_mask


# ----------------------------------------------------------------------------------------------- blocks
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
    """The encoder-decoder. forward returns logits over the target vocabulary."""

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
    """Greedy decoding, batched: (B, S) -> (B, <= max_len + 1) starting with start_symbol.

    The encoder runs once; the decoder re-reads the growing prefix. Rows that produced end_symbol keep
    emitting it until every row has ended (or max_len tokens were generated). `device` is accepted and
    unused: the tensors' own device is used.
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
        for p in self.parameters():  # Xavier-uniform on every matrix: activations keep their variance through depth
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x, is_causal=True)
        return self.fc_out(x)  # (B, T, vocab)


# ------------------------------------------------------------------------------------------ Transformer++
def rope_angles(n_pos: int, head_dim: int, base: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (n_pos, head_dim / 2), of position p times frequency base^(-2i / head_dim)."""
    freq = base ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.arange(n_pos, device=device, dtype=torch.float32)[:, None] * freq
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each feature pair (x_i, x_{i + d/2}) of x (..., T, d) by its position's angle, in float32.

    A query at position m and a key at n then meet as q R(m)^T R(n) k = q R(n - m) k: attention scores see
    the positions only through their difference."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class RotaryCausalAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.h, self.dk = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x, cos, sin):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.h, self.dk).permute(2, 0, 3, 1, 4)  # each (B, h, T, dk)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(o.transpose(1, 2).reshape(B, T, D))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), no biases (Shazeer, "GLU variants improve Transformer", 2020)."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class TransformerPPBlock(nn.Module):
    """Pre-norm: x + attention(RMSNorm(x)), then x + SwiGLU(RMSNorm(x))."""

    def __init__(self, c: TransformerPPConfig):
        super().__init__()
        self.attn_norm, self.ffn_norm = nn.RMSNorm(c.d_model, eps=1e-6), nn.RMSNorm(c.d_model, eps=1e-6)
        self.attn = RotaryCausalAttention(c.d_model, c.n_heads)
        self.ffn = SwiGLU(c.d_model, c.hidden_dim)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.ffn(self.ffn_norm(x))


class TransformerPP(nn.Module):
    """Decoder-only Transformer++ LM. forward: (B, T) ids -> (B, T, vocab) logits."""

    def __init__(self, config: TransformerPPConfig):
        super().__init__()
        self.config = c = config.validate()
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.blocks = nn.ModuleList(TransformerPPBlock(c) for _ in range(c.n_layers))
        self.norm = nn.RMSNorm(c.d_model, eps=1e-6)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
        for block in self.blocks:  # residual branches scaled down with depth (GPT-2)
            nn.init.normal_(block.attn.out.weight, std=0.02 / math.sqrt(2 * c.n_layers))
            nn.init.normal_(block.ffn.down.weight, std=0.02 / math.sqrt(2 * c.n_layers))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.size(1)
        if T > self.config.max_len:
            raise ValueError(
                f"sequence length {T} exceeds max_len={self.config.max_len}; build the model with a larger max_len"
            )
        cos, sin = rope_angles(T, self.config.d_model // self.config.n_heads, self.config.rope_base, input_ids.device)
        x = self.tok_emb(input_ids)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.head(self.norm(x))  # (B, T, vocab)
