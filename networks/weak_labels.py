"""The two networks of the self-play patch game (:mod:`marlseg.weak_labels`).

``PresenceDetector``: a small fully convolutional CNN trained on image-level tags ("this 2D
crop contains the ROI" / "does not"). Its last layer is a 1x1 convolution to one channel, a
class activation map (CAM) of presence logits, pooled over the image by log-sum-exp (LSE): a
smooth maximum, so a crop is positive when some part of it looks like the ROI, not only when
all of it does. The presence probability of any image (a crop, a game patch) is
``sigmoid(LSE(CAM))``; the CAM itself, upsampled, is the baseline the game is compared with.

``PatchPolicy``: one network for both players. Input: per-patch feature channels on the patch
grid (detector score, image statistics, the taken-mask and the game flags, see
``marlseg.weak_labels.game.PatchGame.observe``). A shared per-patch trunk with one 3x3 layer of grid context
gives the patch head (one logit per patch, a categorical over the grid); max- and mean-pooled
trunk features give the termination head (one Bernoulli logit, bounded so that it never stops
exploring) and a value head (the return
baseline for REINFORCE). Fully convolutional: any grid shape works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PresenceDetector(nn.Module):
    """Presence of the ROI in a 2D image: logits from LSE-pooled class activation maps.

    Inputs are raw intensities ``(N, 1, H, W)`` (uint8 range, any float dtype); ``mean`` and
    ``std`` (buffers, set from the training crops) standardise them. H, W >= 4.
    """

    def __init__(self, width: int = 16, lse_r: float = 5.0):
        super().__init__()
        w = width

        def conv(i: int, o: int) -> nn.Conv2d:
            # reflect padding: small patches must not see an artificial dark frame
            return nn.Conv2d(i, o, 3, padding=1, padding_mode="reflect")

        self.features = nn.Sequential(
            conv(1, w),
            nn.ReLU(),
            conv(w, w),
            nn.ReLU(),
            nn.MaxPool2d(2),
            conv(w, 2 * w),
            nn.ReLU(),
            conv(2 * w, 2 * w),
            nn.ReLU(),
        )
        self.classifier = nn.Conv2d(2 * w, 1, 1)
        self.lse_r = float(lse_r)
        self.register_buffer("mean", torch.tensor(128.0))
        self.register_buffer("std", torch.tensor(64.0))

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """Presence logits per location, ``(N, H//2, W//2)``."""
        x = (x.float() - self.mean) / self.std
        return self.classifier(self.features(x))[:, 0]

    def pool(self, cam: torch.Tensor) -> torch.Tensor:
        """LSE pooling ``(1/r) log mean exp(r cam)`` over the map: ``(N, h, w) -> (N,)``."""
        flat = cam.flatten(1)
        n = torch.tensor(float(flat.shape[1]), device=flat.device)
        return (torch.logsumexp(self.lse_r * flat, dim=1) - torch.log(n)) / self.lse_r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Presence logit per image, ``(N,)``."""
        return self.pool(self.cam(x))

    def cam_full(self, x: torch.Tensor) -> torch.Tensor:
        """The CAM upsampled (bilinear) to the input size: ``(N, H, W)`` logits."""
        c = self.cam(x)[:, None]
        return F.interpolate(c, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


class PatchPolicy(nn.Module):
    """Patch head over the grid + termination head (+ value baseline), shared by both players.

    ``forward(obs)`` with ``obs`` of shape ``(B, C, gh, gw)`` returns
    ``(patch_logits (B, gh*gw), termination_logit (B,), value (B,))``.
    """

    def __init__(self, in_channels: int, width: int = 32, termination_bound: float = 3.0):
        super().__init__()
        w = width
        self.termination_bound = float(termination_bound)
        self.trunk = nn.Sequential(
            nn.Conv2d(in_channels, w, 1),
            nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, w, 1),
            nn.ReLU(),
        )
        self.patch_head = nn.Conv2d(w, 1, 1)
        self.pooled = nn.Sequential(nn.Linear(2 * w, w), nn.ReLU())
        self.termination_head = nn.Linear(w, 1)
        self.value_head = nn.Linear(w, 1)
        # start by rarely terminating, so the first games are long enough to learn from
        nn.init.constant_(self.termination_head.bias, -2.0)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.trunk(obs)
        logits = self.patch_head(h).flatten(1)
        g = self.pooled(torch.cat([h.amax(dim=(2, 3)), h.mean(dim=(2, 3))], dim=1))
        # bounded termination logit: a saturated Bernoulli stops exploring (its policy gradient
        # vanishes), and an agent that learnt early to terminate against weak old opponents
        # would never find out that continuing pays once opponents improve
        b = self.termination_bound
        term = b * torch.tanh(self.termination_head(g)[:, 0] / b)
        return logits, term, self.value_head(g)[:, 0]
