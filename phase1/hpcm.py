"""HPCM: learned image compression with hierarchical progressive context modeling (Li et al., ICCV 2025).

y = g_a(x) (M channels, 16x down), z = h_a(y) (N channels, 4x further down), z coded with learned per-channel
means and scales, h_s(z_hat) gives the hyperprior's scales and means of y, then y is coded in 11 steps over three
scales (see hpcm_context.py), each step's distribution predicted from everything coded before it:

    context  = prior(adaptor(cat(fused context, y_hat so far)) * learned step gain)   # -> scales, means
    fused    = cross_attention(query=context, key/value=fused)                       # carried to the next step

Parameter and buffer names and shapes are the official implementation's (LIC-HPCM), so its state_dicts load
(`load_hpcm_state_dict`). CompressAI's model API: forward / update / compress / decompress.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from compressai.models import CompressionModel
from torch import nn

from phase1.entropy import CoderTables, GeneralizedGaussian, RansStreamReader, default_scale_table, rans_encode
from phase1.hpcm_context import STEP_SCALE, context_layout
from phase1.layers import (
    CrossAttentionCell,
    DWConvRB,
    PConvRB,
    conv1x1,
    conv_down2,
    conv_down4x4,
    deconv_up2,
    deconv_up4x4,
)

PAD_MULTIPLE = 256  # y is x/16 and the coarsest coding scale y/4 is cut into 4x4 attention windows


@dataclass
class HPCMConfig:
    name: str = "hpcm_base"
    M: int = 320  # channels of y; the coding schedule splits them into 8 groups
    N: int = 256  # channels of z
    widths: tuple = (96, 192, 384)  # g_a/g_s widths at 1/2, 1/4 and 1/8 resolution
    g_depths: tuple = (2, 2, 4)  # PConvRBs per g_a stage (g_s mirrors it); Large has 8 at 1/8
    prior_s12_depths: tuple = (2, 1)  # DWConvRBs before / after the step gain, s1-s2 prior (Large: 2, 2)
    prior_s3_depths: tuple = (3, 2)  # the same for the s3 prior (Large: 4, 3)
    heads: int = 32  # attention heads of the context fusion (2M channels)
    windows: tuple = (4, 8, 8)  # attention window per scale
    beta: float = 1.5  # shape of the generalized Gaussian
    scale_bound: float = 0.12
    likelihood_bound: float = 1e-9
    scale_table: tuple = (0.12, 64.0, 60)  # (lowest, highest, levels) of the coding scale table


CONFIGS = {
    "hpcm_base": HPCMConfig(),
    "hpcm_large": HPCMConfig(name="hpcm_large", g_depths=(2, 2, 8), prior_s12_depths=(2, 2), prior_s3_depths=(4, 3)),
    # Same structure and names with small widths: a CPU training step on a 256x256 crop in well under a second.
    "tiny": HPCMConfig(name="tiny", M=32, N=32, widths=(16, 24, 32), heads=4),
}
_ALIASES = {"base": "hpcm_base", "large": "hpcm_large", "hpcm_tiny": "tiny"}


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in CONFIGS:
        raise ValueError(f"unknown HPCM model {name!r}; choose one of {sorted(CONFIGS)} (or HPCM_Base/HPCM_Large)")
    return key


def build_hpcm(name: str = "hpcm_base") -> HPCM:
    return HPCM(CONFIGS[canonical_name(name)])


class _Branch(nn.Module):
    """The published transforms wrap their layers in `branch` (a Sequential): keep that name."""

    def __init__(self, *blocks):
        super().__init__()
        self.branch = nn.Sequential(*blocks)

    def forward(self, x):
        return self.branch(x)


_seq = _Branch


def _analysis(c: HPCMConfig):
    w1, w2, w3 = c.widths
    d1, d2, d3 = c.g_depths
    return _seq(conv_down4x4(3, w1), *(PConvRB(w1) for _ in range(d1)), conv_down2(w1, w2),
                *(PConvRB(w2) for _ in range(d2)), conv_down2(w2, w3), *(PConvRB(w3) for _ in range(d3)),
                conv_down2(w3, c.M))  # fmt: skip


def _synthesis(c: HPCMConfig):
    w1, w2, w3 = c.widths
    d1, d2, d3 = c.g_depths
    return _seq(deconv_up2(c.M, w3), *(PConvRB(w3) for _ in range(d3)), deconv_up2(w3, w2),
                *(PConvRB(w2) for _ in range(d2)), deconv_up2(w2, w1), *(PConvRB(w1) for _ in range(d1)),
                deconv_up4x4(w1, 3))  # fmt: skip


class SpatialPrior(nn.Module):
    """DWConvRBs, a per-step learned channel gain, DWConvRBs, then 3M -> 2M (scales, means)."""

    def __init__(self, M: int, depths: tuple):
        super().__init__()
        self.branch_1 = nn.Sequential(*(DWConvRB(3 * M) for _ in range(depths[0])))
        self.branch_2 = nn.Sequential(*(DWConvRB(3 * M) for _ in range(depths[1])), conv1x1(3 * M, 2 * M))

    def forward(self, x, gain):
        return self.branch_2(self.branch_1(x) * gain)


# Per coded step k >= 1: (adaptor list, index) and the step-gain index, as the published model uses them.
# Its s2 and s3 loops index their adaptor lists with i - 1, so the first step of a scale uses the list's last.
_STEP_ADAPTOR = [None, ("s1", 0), ("s2", 2), ("s2", 0), ("s2", 1),
                 ("s3", 5), ("s3", 0), ("s3", 1), ("s3", 2), ("s3", 3), ("s3", 4)]  # fmt: skip
_STEP_GAIN = [None, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]


class HPCM(CompressionModel):
    def __init__(self, config: HPCMConfig | None = None):
        super().__init__()
        c = self.config = config or HPCMConfig()
        M, N = c.M, c.N
        self.g_a, self.g_s = _analysis(c), _synthesis(c)
        self.h_a = _seq(PConvRB(M), conv_down2(M, N), *(PConvRB(N) for _ in range(3)), conv_down2(N, N))
        self.h_s = _seq(deconv_up2(N, N), *(PConvRB(N) for _ in range(3)), deconv_up2(N, 2 * M), PConvRB(2 * M))
        self.means_hyper = nn.Parameter(torch.zeros(1, N, 1, 1))
        self.scales_hyper = nn.Parameter(torch.ones(1, N, 1, 1))

        self.y_spatial_prior_adaptor_list_s1 = nn.ModuleList(conv1x1(3 * M, 3 * M) for _ in range(1))
        self.y_spatial_prior_adaptor_list_s2 = nn.ModuleList(conv1x1(3 * M, 3 * M) for _ in range(3))
        self.y_spatial_prior_adaptor_list_s3 = nn.ModuleList(conv1x1(3 * M, 3 * M) for _ in range(6))
        self.y_spatial_prior_s1_s2 = SpatialPrior(M, c.prior_s12_depths)
        self.y_spatial_prior_s3 = SpatialPrior(M, c.prior_s3_depths)
        self.adaptive_params_list = nn.ParameterList(nn.Parameter(torch.ones(1, 3 * M, 1, 1)) for _ in range(10))
        self.attn_s1 = CrossAttentionCell(2 * M, c.windows[0], c.heads)
        self.attn_s2 = CrossAttentionCell(2 * M, c.windows[1], c.heads)
        self.attn_s3 = CrossAttentionCell(2 * M, c.windows[2], c.heads)
        self.context_net = nn.ModuleList(conv1x1(2 * M, 2 * M) for _ in range(2))

        self.entropy_estimation = GeneralizedGaussian(c.beta, c.scale_bound, c.likelihood_bound)
        # Coding tables (empty until update()): z per channel, y per entry of scale_table.
        for name in ("scale_table", "quantized_cdf_z", "cdf_length_z", "offset_z",
                     "quantized_cdf_y", "cdf_length_y", "offset_y"):  # fmt: skip
            self.register_buffer(name, torch.Tensor())
        self._coder_cache: dict = {}
        self._graphs = None  # CUDA-graph runner, built on first GPU compress/decompress (hpcm_graphs.py)
        self.use_cuda_graphs = True

    # ------------------------------------------------------------------ training / evaluation forward
    def forward(self, x: torch.Tensor) -> dict:
        """x (B, 3, H, W) in [0, 1], any H, W (zero-padded to 256 and cropped back).

        Training: uniform noise for the likelihoods, straight-through rounding for the synthesis path.
        Evaluation: rounding everywhere, i.e. the reconstruction and the rates of real coding.

        Under autocast (precision=bf16-mixed) only the hyperprior (h_a, h_s) and the context model run in
        bf16. Latents, means, scales, quantisation and likelihoods stay float32 (a bf16 latent of magnitude 50
        has a step of 0.25, coarse against the unit bins; log-likelihoods are summed over ~10^5 elements), and
        so do the analysis and synthesis transforms: with them in bf16, HPCM_Large's training loss left
        float32's by up to 55 % within 40 steps on one H200; in float32, bf16 stays as close to float32 as a
        second float32 run does (benchmarks/results/phase1_bf16.md)."""
        x_pad, size = pad_to_multiple(_check_image(x))
        with torch.autocast(x_pad.device.type, enabled=False):  # the transforms in float32: see above
            y = self.g_a(x_pad)
        z = _full(self.h_a(y))
        z_res = z - self.means_hyper
        if self.training:
            z_hat = _ste_round(z_res) + self.means_hyper
            z_lik = self._likelihoods(_add_noise(z_res), self.scales_hyper)
        else:
            z_q = torch.round(z_res)
            z_hat = z_q + self.means_hyper
            z_lik = self._likelihoods(z_q, self.scales_hyper)
        params = _full(self.h_s(z_hat))

        L = context_layout(self.config.M, y.shape[2], y.shape[3], y.device)
        y_flat = y.flatten(1)
        y_hat, ctx, res, sc = None, None, [], []
        for k in range(11):
            y_hat, ctx, scales, means = self._predict(k, L, params, y_hat, ctx)
            y_k = y_flat[:, L.steps[k][1]]
            q = _ste_round(y_k - means) if self.training else torch.round(y_k - means)
            y_hat = self._write_step(k, L, y_hat, q, means)
            res.append(_add_noise(y_k - means) if self.training else q)
            sc.append(scales)
        y_lik_flat = self._likelihoods(torch.cat(res, 1), torch.cat(sc, 1))
        full = torch.cat([s[1] for s in L.steps])
        y_lik = torch.empty_like(y_flat).index_copy(1, full, y_lik_flat).view_as(y)
        with torch.autocast(x_pad.device.type, enabled=False):
            x_hat = crop(self.g_s(y_hat), size)
        return {"x_hat": x_hat, "likelihoods": {"y": y_lik, "z": z_lik}}

    def _likelihoods(self, values, scales):
        """The entropy model in float32 whatever autocast is active (see forward)."""
        with torch.autocast(values.device.type, enabled=False):
            return self.entropy_estimation(_full(values), _full(scales))

    # ------------------------------------------------------------------ the coding schedule
    def _predict(self, k: int, L, params, y_hat, ctx):
        """Distribution of step k's elements: (y_hat, fused context, scales (B, n_k), means (B, n_k)).

        y_hat and the fused context live in the current scale's layout (zeros where not yet coded)."""
        B, M = params.shape[0], self.config.M
        H, W = params.shape[2], params.shape[3]
        if k == 0:  # s1 starts from the hyperprior alone
            idx = L.s1_from_y.repeat(2, 1).expand(B, -1, -1)
            ctx = params.flatten(2).gather(2, idx).view(B, 2 * M, H // 4, W // 4)
            y_hat = params.new_zeros(B, M, H // 4, W // 4)
            context = ctx
        else:
            if k in (2, 5):  # a new scale: move what is coded and the fused context there, add the hyperprior
                y_hat, ctx = self._next_scale(k, L, params, y_hat, ctx)
            table, i = _STEP_ADAPTOR[k]
            adaptor = getattr(self, f"y_spatial_prior_adaptor_list_{table}")[i]
            prior = self.y_spatial_prior_s3 if STEP_SCALE[k] == 3 else self.y_spatial_prior_s1_s2
            attn = (self.attn_s1, self.attn_s2, self.attn_s3)[STEP_SCALE[k] - 1]
            context = prior(adaptor(torch.cat((ctx, y_hat), 1)), self.adaptive_params_list[_STEP_GAIN[k]])
            ctx = attn(context, ctx)
        sm = _full(context.flatten(1)[:, L.steps[k][2]])  # (B, 2 n_k): scales then means, >= float32 (forward)
        scales, means = sm.chunk(2, 1)
        return y_hat, ctx, scales, means

    def _next_scale(self, k, L, params, y_hat, ctx):
        B, M = y_hat.shape[:2]
        h, w = y_hat.shape[2] * 2, y_hat.shape[3] * 2
        if k == 2:
            y_hat = y_hat.new_zeros(B, M, h * w).scatter_(2, L.s1_in_s2.expand(B, -1, -1), y_hat.flatten(2))
            src, idx = torch.cat((params.flatten(2), ctx.flatten(2)), 2), L.ctx_s2
        else:
            y_hat = y_hat.new_zeros(B, M, h * w).scatter_(2, L.s2_in_y.expand(B, -1, -1), y_hat.flatten(2))
            src, idx = torch.cat((params.flatten(2), ctx.flatten(2)), 2), L.ctx_s3
        ctx = src.gather(2, idx.expand(B, -1, -1)).view(B, 2 * M, h, w)
        ctx = self.context_net[0 if k == 2 else 1](ctx)
        return y_hat.view(B, M, h, w), ctx

    @staticmethod
    def _write_step(k, L, y_hat, q, means):
        """Write step k's reconstruction q + means into y_hat (out of place: autograd needs the old one)."""
        B = y_hat.shape[0]
        pos = L.steps[k][0].expand(B, -1)
        return y_hat.flatten(1).scatter(1, pos, q + means).view_as(y_hat)

    # ------------------------------------------------------------------ CompressAI API: tables and coding
    def update(self, scale_table=None, force: bool = False) -> bool:
        """Build the z and y coding tables (needed once before compress/decompress). Returns True if built."""
        if self.quantized_cdf_y.numel() and self.quantized_cdf_z.numel() and not force:
            return False
        table = default_scale_table(*self.config.scale_table) if scale_table is None else scale_table
        dev = self.scales_hyper.device
        cdf_z, len_z, off_z = self.entropy_estimation.cdf_tables(self.scales_hyper.reshape(-1))
        cdf_y, len_y, off_y = self.entropy_estimation.cdf_tables(table)
        for name, t in (("scale_table", table.float()), ("quantized_cdf_z", cdf_z), ("cdf_length_z", len_z),
                        ("offset_z", off_z), ("quantized_cdf_y", cdf_y), ("cdf_length_y", len_y),
                        ("offset_y", off_y)):  # fmt: skip
            setattr(self, name, t.to(dev))
        self._forget_coding_state()
        return True

    def _forget_coding_state(self) -> None:
        """Drop what was derived from the current tensors: CPU copies of the tables and the CUDA graphs, which
        replay kernels on the addresses of the tensors they were recorded with (new tables, a move to another
        device or dtype would otherwise be read through stale addresses)."""
        self._coder_cache.clear()
        self._graphs = None

    def _apply(self, fn, recurse: bool = True):
        self._forget_coding_state()  # .to(), .cuda(), .half() give the module new tensors
        return super()._apply(fn, recurse)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Loads state_dicts of this model or of the official code; coding-table buffers take the saved size."""
        state_dict = dict(state_dict)
        for name in ("scale_table", "quantized_cdf_z", "cdf_length_z", "offset_z",
                     "quantized_cdf_y", "cdf_length_y", "offset_y"):  # fmt: skip
            if name in state_dict:
                saved = state_dict[name]
                setattr(self, name, torch.empty(saved.shape, dtype=saved.dtype, device=self.scales_hyper.device))
        self._forget_coding_state()
        return nn.Module.load_state_dict(self, state_dict, strict=strict, assign=assign)

    def aux_loss(self) -> torch.Tensor:
        """No auxiliary loss: z's distribution is learned with the main loss (CompressAI's API asks for one)."""
        return self.scales_hyper.new_zeros(())

    def _tables(self, which: str) -> CoderTables:
        cdf = getattr(self, f"quantized_cdf_{which}")
        if cdf.numel() == 0:
            raise RuntimeError(
                "HPCM coding tables are empty: call model.update() (once, after training or "
                "after loading weights without tables) before compress/decompress"
            )
        key = (which, cdf.data_ptr(), cdf._version)
        if key not in self._coder_cache:
            self._coder_cache[key] = CoderTables.from_tensors(
                cdf.cpu(), getattr(self, f"cdf_length_{which}").cpu(), getattr(self, f"offset_{which}").cpu()
            )
        return self._coder_cache[key]

    def _indexes(self, scales):
        """Index of the coding table for each scale: the first table scale >= it (the lowest below the bound)."""
        return torch.bucketize(scales.contiguous(), self.scale_table[:-1], out_int32=True)

    @torch.no_grad()
    def compress(self, x: torch.Tensor) -> dict:
        """x (B, 3, H, W) -> {"strings": [y strings, z strings] (one per image), "shape": z's (h, w),
        "x_size": (H, W), "checksums": CRC-32 of each image's y symbols}; `decompress(**out)` inverts it.

        Images are coded one at a time, as the decoder decodes them: results of a batch of several could differ
        from a batch of one in the last bit, and the decoder must predict exactly what the encoder predicted."""
        tables_z, tables_y = self._tables("z"), self._tables("y")
        x_pad, size = pad_to_multiple(_check_image(x))
        y_str, z_str, crcs = [], [], []
        for b in range(x_pad.shape[0]):
            z_sym, y_sym, y_idx = (t[0].cpu().numpy() for t in self._encode_network(x_pad[b : b + 1]))
            z_idx = np.broadcast_to(np.arange(len(z_sym), dtype=np.int32)[:, None, None], z_sym.shape)
            z_str.append(rans_encode(z_sym.reshape(-1), z_idx.reshape(-1), tables_z))
            y_str.append(rans_encode(y_sym, y_idx, tables_y))
            # lets a decoder tell a desynchronised decode (other device type or weights) from a good one
            crcs.append(zlib.crc32(y_sym.tobytes()))
        return {"strings": [y_str, z_str], "shape": tuple(z_sym.shape[1:]), "x_size": size, "checksums": crcs}

    def _encode_network(self, x_pad):
        """GPU side of compress for one image: z symbols (1, N, h, w), y symbols and table indexes (1, M*H*W)
        in coding order."""
        if self._graph_runner(x_pad) is not None:
            return self._graphs.encode(x_pad)
        return self._encode_eager(x_pad)

    def _encode_eager(self, x_pad):
        y = self.g_a(x_pad)
        z_q = torch.round(self.h_a(y) - self.means_hyper)
        params = self.h_s(z_q + self.means_hyper)
        L = context_layout(self.config.M, y.shape[2], y.shape[3], y.device)
        y_flat, y_hat, ctx, syms, idxs = y.flatten(1), None, None, [], []
        for k in range(11):
            y_hat, ctx, scales, means = self._predict(k, L, params, y_hat, ctx)
            q = torch.round(y_flat[:, L.steps[k][1]] - means)
            y_hat = self._write_step(k, L, y_hat, q, means)
            syms.append(q)
            idxs.append(self._indexes(scales))
        return z_q.int(), torch.cat(syms, 1).int(), torch.cat(idxs, 1)

    @torch.no_grad()
    def decompress(self, strings, shape, x_size=None, checksums=None) -> dict:
        """Inverse of compress: {"x_hat": (B, 3, H, W) in [0, 1]}, cropped to x_size when given.

        With compress()'s `checksums`, decoded symbols are checked and a mismatch raises RuntimeError. The rANS
        streams themselves carry no checksum: feed only strings made by compress() (codec.py's file format
        checks its bytes before decoding)."""
        tables_z, tables_y = self._tables("z"), self._tables("y")
        y_strings, z_strings = strings
        dev = self.scales_hyper.device
        out = []
        for b, (y_str, z_str) in enumerate(zip(y_strings, z_strings)):
            N, (h, w) = self.config.N, shape
            z_idx = np.repeat(np.arange(N, dtype=np.int32), h * w)
            z_sym = RansStreamReader(z_str, tables_z).read(z_idx)
            z_q = torch.from_numpy(z_sym).to(dev).view(1, N, h, w)
            reader, crc = RansStreamReader(y_str, tables_y), [0]

            def read_y(idx, reader=reader, crc=crc):
                sym = reader.read(idx.cpu().numpy())
                crc[0] = zlib.crc32(sym.tobytes(), crc[0])
                return torch.from_numpy(sym).to(dev, non_blocking=True)

            out.append(self._decode(z_q, read_y))
            if checksums is not None and crc[0] != checksums[b]:
                raise RuntimeError(
                    f"decoded symbols of image {b} do not match the encoder's (CRC {crc[0]:08x} != "
                    f"{checksums[b]:08x}): the stream was made with other weights or on another device type"
                )
        x_hat = torch.cat(out, 0)
        return {"x_hat": crop(x_hat, x_size) if x_size is not None else x_hat}

    def _decode(self, z_q, read_y):
        """GPU side of decompress; read_y(indexes (n_k,) int32) -> symbols (n_k,) of step k, in coding order."""
        if self._graph_runner(z_q) is not None:
            return self._graphs.decode(z_q, read_y)
        params, y_hat, ctx, means, idx = self._decode_first(z_q)
        for k in range(1, 11):
            y_hat, ctx, means, idx = self._decode_step(k, params, y_hat, ctx, means, read_y(idx))
        return self._decode_last(y_hat, means, read_y(idx))

    # The decoder in stages that stop where symbols must come from the CPU (each is one CUDA graph on a GPU).
    def _decode_first(self, z_q):
        params = self.h_s(z_q.float() + self.means_hyper)
        L = context_layout(self.config.M, params.shape[2], params.shape[3], params.device)
        y_hat, ctx, scales, means = self._predict(0, L, params, None, None)
        return params, y_hat, ctx, means, self._indexes(scales)[0]

    def _decode_step(self, k, params, y_hat, ctx, means, q):
        L = context_layout(self.config.M, params.shape[2], params.shape[3], params.device)
        y_hat = self._write_step(k - 1, L, y_hat, q.to(means.dtype)[None], means)
        y_hat, ctx, scales, means = self._predict(k, L, params, y_hat, ctx)
        return y_hat, ctx, means, self._indexes(scales)[0]

    def _decode_last(self, y_hat, means, q):
        L = context_layout(self.config.M, y_hat.shape[2], y_hat.shape[3], y_hat.device)
        y_hat = self._write_step(10, L, y_hat, q.to(means.dtype)[None], means)
        return self.g_s(y_hat).clamp_(0, 1)

    def _graph_runner(self, t):
        if not (self.use_cuda_graphs and t.is_cuda and t.shape[0] == 1):
            return None
        if self._graphs is None:
            from phase1.hpcm_graphs import HPCMGraphs

            self._graphs = HPCMGraphs(self)
        return self._graphs


# ---------------------------------------------------------------------- helpers


def _full(x):
    """Autocast's half-precision outputs back to float32; float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def _ste_round(x):
    return (torch.round(x) - x).detach() + x


def _add_noise(x):
    return x + torch.empty_like(x).uniform_(-0.5, 0.5)


def _check_image(x):
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"HPCM expects images of shape (B, 3, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"HPCM expects float images in [0, 1], got dtype {x.dtype}")
    return x


def pad_to_multiple(x, multiple: int = PAD_MULTIPLE):
    """Zero-pad (centred, as the official evaluation does) to a multiple of 256; returns (padded, (H, W))."""
    h, w = x.shape[2], x.shape[3]
    H, W = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    if (H, W) == (h, w):
        return x, (h, w)
    left, top = (W - w) // 2, (H - h) // 2
    return F.pad(x, (left, W - w - left, top, H - h - top)), (h, w)


def crop(x, size):
    """Inverse of pad_to_multiple."""
    h, w = size
    H, W = x.shape[2], x.shape[3]
    left, top = (W - w) // 2, (H - h) // 2
    return x[:, :, top : top + h, left : left + w]


def load_hpcm_state_dict(model: HPCM, state_dict: dict) -> list[str]:
    """Load weights saved by this project or by the official code (plain `net.state_dict()`, possibly under
    DataParallel's `module.` prefix). Returns notes about what was adapted.

    Official checkpoints saved before `adaptive_params_list` became a ParameterList lack the 10 step gains;
    that code used constant ones for them, so ones are filled in. Empty coding tables (checkpoints saved during
    training) are kept empty: call update() before coding."""
    notes = []
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    own = model.state_dict()
    missing_gains = [k for k in own if k.startswith("adaptive_params_list.") and k not in sd]
    if missing_gains:
        for k in missing_gains:
            sd[k] = torch.ones_like(own[k])
        notes.append(f"{len(missing_gains)} step gains (adaptive_params_list) absent: set to 1 as the old code had")
    model.load_state_dict(sd, strict=True)
    if model.quantized_cdf_y.numel() == 0:
        notes.append("checkpoint has no coding tables: update() builds them")
    return notes
