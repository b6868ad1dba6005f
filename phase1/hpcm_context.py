"""Where each latent element sits in HPCM's hierarchical coding schedule, as index tensors.

The latent y (C, H, W) is coded in 11 steps over three scales:
  s1 (H/4 x W/4, 2 steps) -> s2 (H/2 x W/2, 4 steps, the first being all of s1) -> s3 (H x W, 8 steps, the first
  two being all of s2).
A scale is a strided subsampling of y whose phase depends on the channel group: the C channels form 8 groups
(and 4 and 2 groups for the coarser splits), and each group starts its sub-grid at a different offset, so that
every scale sees all spatial phases of y. Within a scale, each step takes a checkerboard-like part of it.

The tables below are the published model's schedule (trained weights depend on it). One of its transforms,
placing the hyperprior's parameters onto s2, is a fixed shuffle rather than the natural placement for 6 of the
8 channel groups (see `_hyper_s2_sources`); it is kept as is, because the published weights were trained with it.

Everything here is index bookkeeping, computed once per latent size on the CPU and cached per device, so the
coding steps are gathers and scatters (one kernel each, no host synchronisation, CUDA-graph friendly).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# s2 phase (row, col) of y taken by each of the 8 channel groups
S2_PHASE = [(0, 0), (1, 1), (0, 1), (1, 0), (0, 0), (1, 1), (0, 1), (1, 0)]
# s1 phase of s2 taken by each of the 4 channel groups (so s1 is a 4x subsampling of y)
S1_PHASE = [(0, 0), (0, 1), (1, 0), (1, 1)]
# per 8-group cell of a 4x4 tile of y that the published code treats as "already in s1" when it places the
# hyperprior onto s2 (for groups 0 and 1 these are the true s1 cells, for the others they are not)
S1_TILE_CELL = [(0, 0), (1, 1), (0, 1), (1, 0), (0, 2), (1, 3), (0, 3), (1, 2)]
# s2 steps: part t of s2 gives channel quarter q the s1-phase S1_PHASE[S2_PARTS[t][q]]; part 0 is s1 itself
S2_PARTS = [[0, 1, 2, 3], [3, 2, 1, 0], [2, 3, 0, 1], [1, 0, 3, 2]]
# s3 steps: 8 patterns of 2 cells in a 4x4 tile of y; part t gives 8-group g the pattern S3_PARTS[t][g]
S3_PATTERNS = [
    ((0, 0), (2, 2)), ((0, 2), (2, 0)), ((1, 1), (3, 3)), ((1, 3), (3, 1)),
    ((0, 1), (2, 3)), ((0, 3), (2, 1)), ((1, 0), (3, 2)), ((1, 2), (3, 0)),
]  # fmt: skip
S3_PARTS = [
    [0, 2, 4, 6, 1, 3, 5, 7],
    [1, 3, 5, 7, 0, 2, 4, 6],
    [2, 4, 6, 0, 3, 5, 7, 1],
    [3, 5, 7, 1, 2, 4, 6, 0],
    [4, 6, 0, 2, 5, 7, 1, 3],
    [5, 7, 1, 3, 4, 6, 0, 2],
    [6, 0, 2, 4, 7, 1, 3, 5],
    [7, 1, 3, 5, 6, 0, 2, 4],
]  # fmt: skip (parts 0 and 1 together are s2)

STEP_SCALE = (1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 3)  # the scale each of the 11 coded steps works at
LATENT_MULTIPLE = 16  # H and W of y: s1 is H/4 and its attention windows are 4 wide


@dataclass
class ContextLayout:
    """Index tensors for one latent size (C, H, W). Flat spatial indices unless said otherwise.

    s1_from_y   (C, H/4*W/4): the y cell of each s1 cell
    s1_in_s2    (C, H/4*W/4): the s2 cell of each s1 cell
    s2_in_y     (C, H/2*W/2): the y cell of each s2 cell
    ctx_s2      (2C, H/2*W/2): source of the s2 starting context in cat(hyperprior params (H*W), s1 context)
    ctx_s3      (2C, H*W): source of the s3 starting context in cat(hyperprior params (H*W), s2 context)
    steps[k]    (pos, full, pos2): step k's elements as flat indices into its scale's (C*h*w) tensor, into y's
                (C*H*W), and into the (2C*h*w) tensor of [scales; means] (pos then pos + C*h*w)
    """

    shape: tuple
    s1_from_y: torch.Tensor
    s1_in_s2: torch.Tensor
    s2_in_y: torch.Tensor
    ctx_s2: torch.Tensor
    ctx_s3: torch.Tensor
    steps: list

    def to(self, device) -> ContextLayout:
        def move(v):
            if isinstance(v, torch.Tensor):
                return v.to(device)
            if isinstance(v, (list, tuple)) and v and not isinstance(v[0], int):
                return type(v)(move(u) for u in v)
            return v

        return ContextLayout(**{k: move(v) for k, v in vars(self).items()})


_CACHE: dict = {}


def context_layout(channels: int, height: int, width: int, device) -> ContextLayout:
    key = (channels, height, width, str(device))
    if key not in _CACHE:
        cpu = _CACHE.get((channels, height, width, "cpu")) or _build(channels, height, width)
        _CACHE[(channels, height, width, "cpu")] = cpu
        _CACHE[key] = cpu.to(device)
    return _CACHE[key]


def _groups(channels: int, n: int) -> torch.Tensor:
    return torch.arange(channels) // (channels // n)


def _build(C: int, H: int, W: int) -> ContextLayout:
    if C % 8:
        raise ValueError(f"latent channels M={C} must be a multiple of 8 (the schedule splits them in 8 groups)")
    if H % LATENT_MULTIPLE or W % LATENT_MULTIPLE:
        raise ValueError(f"latent {H}x{W} must be a multiple of {LATENT_MULTIPLE} (pad the image to 256)")
    g8, g4, g2 = _groups(C, 8), _groups(C, 4), _groups(C, 2)
    h2, w2, h1, w1 = H // 2, W // 2, H // 4, W // 4
    ph2 = torch.tensor(S2_PHASE)[g8]  # (C, 2)
    ph1 = torch.tensor(S1_PHASE)[g4]

    # s2 cell (i, j) of channel c is y (2i + a, 2j + b), (a, b) = its group's s2 phase
    i2, j2 = _grid(h2, w2)
    s2_row = 2 * i2 + ph2[:, 0, None, None]  # (C, h2, w2)
    s2_col = 2 * j2 + ph2[:, 1, None, None]
    s2_in_y = (s2_row * W + s2_col).reshape(C, -1)
    # s1 cell (i, j) is s2 (2i + a', 2j + b')
    i1, j1 = _grid(h1, w1)
    r1 = 2 * i1 + ph1[:, 0, None, None]
    c1 = 2 * j1 + ph1[:, 1, None, None]
    s1_in_s2 = (r1 * w2 + c1).reshape(C, -1)
    s1_from_y = torch.gather(s2_in_y, 1, s1_in_s2)

    is_s1_in_s2 = ((i2 % 2 == ph1[:, 0, None, None]) & (j2 % 2 == ph1[:, 1, None, None])).reshape(C, -1)
    s1_rank = torch.cumsum(is_s1_in_s2, 1) - 1  # raster rank of an s1 cell among the s1 cells of s2
    hyper_src = _hyper_s2_sources(C, H, W, g8, ph2, is_s1_in_s2)
    ctx_s2 = torch.where(is_s1_in_s2, H * W + s1_rank, hyper_src)

    is_s2_in_y = torch.zeros(C, H * W, dtype=torch.bool).scatter_(1, s2_in_y, True)
    s2_rank = torch.zeros(C, H * W, dtype=torch.int64).scatter_(1, s2_in_y, torch.arange(h2 * w2).expand(C, -1))
    ctx_s3 = torch.where(is_s2_in_y, H * W + s2_rank, torch.arange(H * W).expand(C, -1))

    steps = []
    ii, jj = _grid(h1, w1)
    s1_even = ((ii + jj) % 2 == 0).reshape(1, -1)
    first_s1 = s1_even == (g2 == 0)[:, None]  # first channel half: even cells first; second half: odd
    for mask in (first_s1, ~first_s1):
        steps.append(_step(mask, s1_from_y, H * W))
    for t in (1, 2, 3):
        phase = torch.tensor(S1_PHASE)[torch.tensor(S2_PARTS[t])[g4]]  # (C, 2)
        mask = ((i2 % 2 == phase[:, 0, None, None]) & (j2 % 2 == phase[:, 1, None, None])).reshape(C, -1)
        steps.append(_step(mask, s2_in_y, H * W))
    r, q = _grid(H, W)
    tile = torch.zeros(8, 4, 4, dtype=torch.bool)
    for p, cells in enumerate(S3_PATTERNS):
        for a, b in cells:
            tile[p, a, b] = True
    for t in range(2, 8):
        pattern = torch.tensor(S3_PARTS[t])[g8]  # (C,)
        mask = tile[pattern[:, None, None], r % 4, q % 4].reshape(C, -1)
        steps.append(_step(mask, torch.arange(H * W).expand(C, -1), H * W))

    two = lambda t: torch.cat((t, t), 0)  # noqa: E731  scales and means halves share their channel's indices
    return ContextLayout((C, H, W), s1_from_y, s1_in_s2, s2_in_y, two(ctx_s2), two(ctx_s3), steps)


def _grid(h: int, w: int):
    return torch.arange(h)[:, None].expand(h, w), torch.arange(w)[None, :].expand(h, w)


def _hyper_s2_sources(C, H, W, g8, ph2, is_s1_in_s2) -> torch.Tensor:
    """Which y cell's hyperprior parameters each non-s1 cell of s2 starts from.

    The published code fills the non-s1 cells of s2 (raster order) from the y cells of the group's s2 phase that
    are not the group's S1_TILE_CELL (raster order). For groups 0 and 1 that is the natural placement; for
    groups 2-7 the two sets differ, which amounts to a fixed shuffle."""
    r, q = _grid(H, W)
    out = torch.zeros(C, (H // 2) * (W // 2), dtype=torch.int64)
    for g in range(8):
        c = int(torch.nonzero(g8 == g)[0])
        a, b = S2_PHASE[g]
        ta, tb = S1_TILE_CELL[g]
        src = (r % 2 == a) & (q % 2 == b) & ~((r % 4 == ta) & (q % 4 == tb))
        src_idx = torch.nonzero(src.reshape(-1)).squeeze(1)
        tgt_idx = torch.nonzero(~is_s1_in_s2[c]).squeeze(1)
        assert len(src_idx) == len(tgt_idx)
        row = torch.zeros((H // 2) * (W // 2), dtype=torch.int64)
        row[tgt_idx] = src_idx
        out[g8 == g] = row
    return out


def _step(mask: torch.Tensor, cell_in_y: torch.Tensor, hw: int):
    """(pos, full, pos2) of the elements where `mask` (C, n_cells) is set; `cell_in_y` maps cells to y."""
    C, n = mask.shape
    pos = torch.nonzero(mask.reshape(-1)).squeeze(1)
    chan = pos // n
    full = chan * hw + cell_in_y.reshape(-1)[pos]
    return pos, full, torch.cat((pos, pos + C * n))
