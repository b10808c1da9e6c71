"""Additive angular margin classifiers over L2-normalised embeddings.

Both hold one learnable unit vector per training class. For an embedding x of class y with
cos(theta_j) = <x, w_j>:

- **ArcFace** (Deng et al. 2019): logit_y = s * cos(theta_y + m), logit_j = s * cos(theta_j).
  When theta_y + m > pi the usual fallback cos(theta_y) - m * sin(m) keeps it monotonic.
- **CurricularFace** (Huang et al. 2020): the same positive logit; a negative j that is
  harder than the positive (cos(theta_j) > cos(theta_y + m)) becomes cos(theta_j) * (t + cos(theta_j)),
  where t is an running average of the positive cosine (easy samples first, hard ones later).

``forward`` returns the scaled logits; use cross-entropy on them.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ArcMarginHead(nn.Module):
    def __init__(self, dim: int, n_classes: int, *, margin: float = 0.5, scale: float = 30.0, curricular: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, dim))
        nn.init.xavier_uniform_(self.weight)
        self.margin, self.scale, self.curricular = float(margin), float(scale), bool(curricular)
        self.cos_m, self.sin_m = math.cos(margin), math.sin(margin)
        self.th = math.cos(math.pi - margin)  # theta + m > pi beyond this cosine
        self.mm = math.sin(math.pi - margin) * margin
        self.register_buffer("t", torch.zeros(1))  # CurricularFace running positive cosine

    def cosines(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(nn.functional.normalize(x, dim=1), nn.functional.normalize(self.weight, dim=1))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = self.cosines(x).clamp(-1.0 + 1e-7, 1.0 - 1e-7)
        target = cos.gather(1, labels.view(-1, 1))
        sin = torch.sqrt((1.0 - target * target).clamp_min(0.0))
        phi = target * self.cos_m - sin * self.sin_m  # cos(theta_y + m)
        phi = torch.where(target > self.th, phi, target - self.mm)
        if self.curricular:
            with torch.no_grad():
                self.t.mul_(0.99).add_(0.01 * target.mean())
            hard = cos > phi
            cos = torch.where(hard, cos * (self.t + cos), cos)
        logits = cos.scatter(1, labels.view(-1, 1), phi)
        return logits * self.scale
