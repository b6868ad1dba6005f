"""Building blocks of HPCM: partial-convolution and depthwise residual blocks, and windowed cross-attention.

Attribute names (`branch`, `pconv`, `conv_q`, ...) are the published model's, so its state_dicts load as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv1x1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1)


def conv_down2(cin: int, cout: int) -> nn.Conv2d:
    """2x downsampling with a 2x2 kernel (no overlap)."""
    return nn.Conv2d(cin, cout, kernel_size=2, stride=2)


def deconv_up2(cin: int, cout: int) -> nn.ConvTranspose2d:
    return SubpixelConvTranspose2d(cin, cout, kernel_size=2, stride=2)


def conv_down4x4(cin: int, cout: int) -> nn.Conv2d:
    """The first (pixel-space) 2x downsampling uses an overlapping 4x4 kernel."""
    return nn.Conv2d(cin, cout, kernel_size=4, stride=2, padding=1)


def deconv_up4x4(cin: int, cout: int) -> nn.ConvTranspose2d:
    return SubpixelConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1)


class SubpixelConvTranspose2d(nn.ConvTranspose2d):
    """A transposed convolution computed as a stride-1 convolution to stride^2 phases + pixel shuffle.

    Same parameters and result as nn.ConvTranspose2d, but deterministic on GPUs: cuDNN runs transposed
    convolutions as convolution gradients, whose fast algorithms accumulate in a varying order, so two runs on the
    same input can differ in the last bit; the encoder and decoder must compute identical distributions.
    Output phase a of a stride-s transposed conv reads input i - d through tap s*d + a + padding, for the d that
    keep the tap inside the kernel: a small ordinary convolution per phase, all phases in one conv."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int, padding: int = 0):
        super().__init__(cin, cout, kernel_size, stride=stride, padding=padding)
        k, s, p = kernel_size, stride, padding
        if (k - 2 * p) != s:
            raise ValueError(f"kernel {k}, stride {s}, padding {p}: only exact s-fold upsampling is supported")
        ds = [d for a in range(s) for d in range(-k, k + 1) if 0 <= s * d + a + p < k]
        self.reach = (max(ds), -min(ds))  # input pixels read before / after
        span = max(ds) - min(ds) + 1
        # tap index (into k*k taps + one zero tap) of phase (a, b) at window offset (jy, jx)
        taps = torch.full((s, s, span, span), k * k, dtype=torch.long)
        for a in range(s):
            for b in range(s):
                for jy in range(span):
                    for jx in range(span):
                        ty, tx = s * (max(ds) - jy) + a + p, s * (max(ds) - jx) + b + p
                        if 0 <= ty < k and 0 <= tx < k:
                            taps[a, b, jy, jx] = ty * k + tx
        self.register_buffer("taps", taps, persistent=False)

    def forward(self, x):
        cin, cout = self.in_channels, self.out_channels
        s = self.stride[0]
        w = F.pad(self.weight.reshape(cin, cout, -1), (0, 1))  # (Cin, Cout, k*k + 1), last tap zero
        w = w[:, :, self.taps.reshape(-1)].reshape(cin, cout, s, s, *self.taps.shape[2:])
        w = w.permute(1, 2, 3, 0, 4, 5).reshape(cout * s * s, cin, *self.taps.shape[2:])  # pixel-shuffle order
        before, after = self.reach
        x = F.pad(x, (before, after, before, after)) if before or after else x
        bias = self.bias.repeat_interleave(s * s) if self.bias is not None else None
        return F.pixel_shuffle(F.conv2d(x, w, bias), s)


class PartialConv3x3(nn.Module):
    """A 3x3 convolution over the first `n_conv` channels only; the rest pass through (FasterNet's PConv)."""

    def __init__(self, channels: int, n_conv: int):
        super().__init__()
        self.n_conv = n_conv
        self.pconv = nn.Conv2d(n_conv, n_conv, 3, padding=1)

    def forward(self, x):
        head, tail = x[:, : self.n_conv], x[:, self.n_conv :]
        return torch.cat((self.pconv(head), tail), dim=1)


class PConvRB(nn.Module):
    """x + MLP(PConv(x)): the transforms' residual block. Spatial mixing costs 1/partial_ratio^2 of a 3x3 conv."""

    def __init__(self, channels: int, partial_ratio: int = 4, mlp_ratio: int = 4):
        super().__init__()
        if channels % partial_ratio:
            raise ValueError(f"PConvRB channels={channels} must be a multiple of partial_ratio={partial_ratio}")
        hidden = channels * mlp_ratio
        self.branch = nn.Sequential(
            PartialConv3x3(channels, channels // partial_ratio),
            conv1x1(channels, hidden),
            nn.LeakyReLU(inplace=True),
            conv1x1(hidden, channels),
        )

    def forward(self, x):
        return x + self.branch(x)


class DWConvRB(nn.Module):
    """x + MLP(depthwise3x3(x)): the context model's residual block."""

    def __init__(self, channels: int, mlp_ratio: int = 2):
        super().__init__()
        hidden = channels * mlp_ratio
        self.branch = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
            conv1x1(channels, hidden),
            nn.LeakyReLU(),
            conv1x1(hidden, channels),
        )

    def forward(self, x):
        return x + self.branch(x)


class CrossAttentionCell(nn.Module):
    """Progressive context fusion: the current step's context attends to the previous steps' fused context.

    Attention runs inside non-overlapping `window` x `window` tiles; queries come from the current context `x`,
    keys and values from the carried context `h`. Output: attention + conv_out(x), same shape as `x`.
    """

    def __init__(self, channels: int, window: int, heads: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention channels={channels} must be a multiple of heads={heads}")
        self.window, self.heads = window, heads
        self.conv_q = conv1x1(channels, channels)
        self.conv_k = conv1x1(channels, channels)
        self.conv_v = conv1x1(channels, channels)
        self.conv_out = conv1x1(channels, channels)

    def _to_windows(self, t):
        # (B, C, H, W) -> (B * nH * nW, heads, window^2, C / heads)
        b, c, h, w = t.shape
        p = self.window
        t = t.view(b, self.heads, c // self.heads, h // p, p, w // p, p)
        t = t.permute(0, 3, 5, 1, 4, 6, 2)  # (B, nH, nW, heads, p, p, d)
        return t.reshape(b * (h // p) * (w // p), self.heads, p * p, c // self.heads)

    def forward(self, x, h):
        b, c, hh, ww = x.shape
        p = self.window
        if hh % p or ww % p:
            raise ValueError(f"context of {hh}x{ww} is not a multiple of the attention window {p}")
        q, k, v = (self._to_windows(t) for t in (self.conv_q(x), self.conv_k(h), self.conv_v(h)))
        a = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        a = a.view(b, hh // p, ww // p, self.heads, p, p, c // self.heads)
        a = a.permute(0, 3, 6, 1, 4, 2, 5).reshape(b, c, hh, ww)
        return a + self.conv_out(x)
