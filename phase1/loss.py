"""Rate-distortion loss with distortion and rate as separate terms (the original code's RateDistortionLoss).

MSE: loss = lambda * 255^2 * MSE + bpp (CompressAI's convention, so lambdas from the literature carry over).
MS-SSIM: loss = lambda * (1 - MS-SSIM) + bpp. The Balanced optimizer weights the two terms itself, so it takes
`distortion` (lambda already applied) and `bpp_loss` as its two task losses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def bits_per_pixel(likelihoods: dict[str, torch.Tensor], num_pixels: int) -> torch.Tensor:
    """Estimated rate from the entropy model's likelihoods: -sum log2 p / pixels."""
    return sum(torch.log(lk).sum() for lk in likelihoods.values()) / (-math.log(2) * num_pixels)


def psnr(mse: torch.Tensor | float) -> float:
    mse = float(mse)
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


@dataclass
class RateDistortionLoss:
    lmbda: float = 0.013
    metric: str = "mse"  # mse | ms-ssim

    def __post_init__(self):
        if self.metric not in ("mse", "ms-ssim"):
            raise ValueError(f"loss.metric={self.metric!r} must be 'mse' or 'ms-ssim'")
        if not (self.lmbda > 0 and math.isfinite(self.lmbda)):
            raise ValueError(f"lmbda={self.lmbda} must be a finite number > 0")

    def __call__(self, output: dict, target: torch.Tensor) -> dict[str, torch.Tensor]:
        n, _, h, w = target.shape
        bpp = bits_per_pixel(output["likelihoods"], n * h * w)
        x_hat = output["x_hat"]
        mse = torch.mean((x_hat - target) ** 2)
        if self.metric == "mse":
            distortion = self.lmbda * 255**2 * mse
        else:
            distortion = self.lmbda * (1 - ms_ssim(x_hat, target))
        return {"loss": distortion + bpp, "distortion": distortion, "bpp_loss": bpp, "mse_loss": mse}


def ms_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MS-SSIM in [0, 1] for images in [0, 1] (pytorch-msssim, CompressAI's choice). Needs sides >= 161 px."""
    from pytorch_msssim import ms_ssim as _ms_ssim

    return _ms_ssim(x.clamp(0, 1), y, data_range=1.0, size_average=True)
