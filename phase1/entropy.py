"""Generalized-Gaussian entropy model and rANS coding for HPCM.

Every latent element is modelled as a zero-mean generalized Gaussian (GG) of shape beta = 1.5,
p(t) = beta / (2 s Gamma(1/beta)) exp(-|t/s|^beta), discretised to integer bins. Its CDF needs the regularised
incomplete gamma function (torch.special.gammainc/gammaincc).

For real bitstreams the continuous scales are snapped to a fixed table of scales (like CompressAI's
GaussianConditional), one quantised CDF per table entry, and symbols are coded with CompressAI's rANS coder.
Symbols outside a table's support are escape-coded by that coder (its "bypass" mode), never clipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.stats
import torch
from compressai._CXX import pmf_to_quantized_cdf
from compressai.ans import RansDecoder, RansEncoder
from compressai.ops import LowerBound
from torch import nn

CDF_PRECISION = 16  # bits of CompressAI's rANS probability range


def default_scale_table(lo: float = 0.12, hi: float = 64.0, levels: int = 60) -> torch.Tensor:
    """HPCM's published table: 60 log-spaced scales from the scale bound 0.12 to 64."""
    return torch.exp(torch.linspace(math.log(lo), math.log(hi), levels))


class _GGCdf(torch.autograd.Function):
    """Standard GG CDF with its density as gradient (gammaincc has no derivative in its first argument)."""

    @staticmethod
    def forward(ctx, t, beta: float):
        a = torch.abs(t) ** beta
        half_tail = 0.5 * torch.special.gammaincc(torch.full_like(t, 1.0 / beta), a)  # P(T < -|t|)
        ctx.save_for_backward(a)
        ctx.beta = beta
        return torch.where(t < 0, half_tail, 1.0 - half_tail)

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved_tensors
        beta = ctx.beta
        density = torch.exp(-a) * (beta / (2.0 * math.gamma(1.0 / beta)))
        return grad * density, None


def gg_cdf(t: torch.Tensor, beta: float) -> torch.Tensor:
    return _GGCdf.apply(t, beta)


class GeneralizedGaussian(nn.Module):
    """Likelihoods of integer-binned values under zero-mean GG(beta, scale), and their quantised CDF tables.

    Buffers (`beta`, `scale_lower_bound.bound`, `likelihood_lower_bound.bound`) are the published model's
    `entropy_estimation` module's, so its checkpoints load."""

    def __init__(self, beta: float = 1.5, scale_bound: float = 0.12, likelihood_bound: float = 1e-9):
        super().__init__()
        self.scale_lower_bound = LowerBound(scale_bound)
        self.likelihood_lower_bound = LowerBound(likelihood_bound)
        self.register_buffer("beta", torch.tensor([float(beta)]))

    def forward(self, values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """P(bin of `values`) for values already centred on their means; same shape as `values`."""
        beta = float(self.beta)
        scales = self.scale_lower_bound(scales)
        v = torch.abs(values)  # the distribution is symmetric: evaluate in the lower tail for precision
        upper = gg_cdf((0.5 - v) / scales, beta)
        lower = gg_cdf((-0.5 - v) / scales, beta)
        return self.likelihood_lower_bound(upper - lower)

    def cdf_tables(self, scales: torch.Tensor, tail_mass: float = 1e-6):
        """Quantised CDFs for each scale in `scales` (1-D), computed in float64 on the CPU so that every
        device builds the same tables.

        Returns (quantized_cdf (n, max_len + 2) int32, cdf_length (n,) int32, offset (n,) int32) in CompressAI's
        layout: a table covers symbols offset .. offset + cdf_length - 3, its last bin is the escape symbol."""
        beta = float(self.beta)
        bound = float(self.scale_lower_bound.bound)
        s = scales.detach().to("cpu", torch.float64).reshape(-1).clamp_min(bound)
        reach = -float(scipy.stats.gennorm.ppf(tail_mass / 2, beta))  # |t| beyond which tail_mass/2 lies
        centre = torch.ceil(s * reach).to(torch.int64)
        length = 2 * centre + 1
        quantized = torch.zeros(len(s), int(length.max()) + 2, dtype=torch.int32)
        for i in range(len(s)):
            k = torch.arange(-int(centre[i]), int(centre[i]) + 1, dtype=torch.float64)
            pmf = gg_cdf((k + 0.5) / s[i], beta) - gg_cdf((k - 0.5) / s[i], beta)
            tail = 2.0 * gg_cdf(-(centre[i] + 0.5) / s[i], beta)  # mass outside the table -> escape symbol
            cdf = pmf_to_quantized_cdf(pmf.tolist() + [float(tail)], CDF_PRECISION)
            quantized[i, : len(cdf)] = torch.tensor(cdf, dtype=torch.int32)
        return quantized, (length + 2).to(torch.int32), (-centre).to(torch.int32)


@dataclass
class CoderTables:
    """CDF tables as the Python lists CompressAI's rANS coder takes (converted once, reused per call)."""

    cdfs: list
    lengths: list
    offsets: list

    @classmethod
    def from_tensors(cls, quantized_cdf, cdf_length, offset) -> CoderTables:
        lengths = cdf_length.reshape(-1).tolist()
        rows = quantized_cdf.tolist()
        return cls([row[:n] for row, n in zip(rows, lengths)], lengths, offset.reshape(-1).tolist())


def rans_encode(symbols: np.ndarray, indexes: np.ndarray, tables: CoderTables) -> bytes:
    """One rANS stream for int32 `symbols`, each coded with the table `indexes` names."""
    return RansEncoder().encode_with_indexes(_seq(symbols), _seq(indexes), *_as_args(tables))


class RansStreamReader:
    """Reads consecutive groups of symbols out of one rANS stream (the decoder of `rans_encode`)."""

    def __init__(self, stream: bytes, tables: CoderTables):
        if not isinstance(stream, bytes) or len(stream) < 8 or len(stream) % 4:
            raise ValueError(f"rANS stream of {len(stream)} bytes is truncated (whole 32-bit words, >= 8 bytes)")
        self._decoder = RansDecoder()
        self._decoder.set_stream(stream)
        self._args = _as_args(tables)

    def read(self, indexes: np.ndarray) -> np.ndarray:
        out = self._decoder.decode_stream(_seq(indexes), *self._args)
        return np.asarray(out, dtype=np.int32)


def _seq(a: np.ndarray) -> memoryview:
    """The coder's binding takes any sequence of ints: a memoryview of int32 skips building a Python list."""
    return memoryview(np.ascontiguousarray(a, dtype=np.int32).reshape(-1))


def _as_args(tables: CoderTables):
    return tables.cdfs, tables.lengths, tables.offsets
