"""Shared pieces of the statistics-matching reference scripts (sre2l.py, gvbsm.py, rded.py).

The teacher is a tiny BatchNorm ConvNet in PyTorch's layout, written as the ConvNet of the
references (RDED `synthesize/models.py` ConvNet with net_norm='batch', net_pooling=
'avgpooling'; jaxdd's `ConvNet(norm='batch')` has the same layers): depth x [Conv2d 3x3
pad 1 (bias) -> BatchNorm2d (eps 1e-5) -> ReLU -> AvgPool2d(2)] -> flatten (C, H, W) ->
Linear. Weights and running statistics are random but non-trivial (running means away
from 0, running variances away from 1), float64, and saved in the npz under torch names.

Needs torch; run the scripts by hand (see each script's docstring).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn


class TinyConvNetBN(nn.Module):
    def __init__(self, channels: int, width: int, depth: int, num_classes: int, hw: int):
        super().__init__()
        layers, c, s = [], channels, hw
        for _ in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                       nn.AvgPool2d(2)]
            c, s = width, s // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * s * s, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def make_teacher(seed: int, channels: int = 3, width: int = 4, depth: int = 2,
                 num_classes: int = 3, hw: int = 10) -> TinyConvNetBN:
    """A tiny teacher in eval mode with random weights and running statistics."""
    torch.manual_seed(seed)
    net = TinyConvNetBN(channels, width, depth, num_classes, hw)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1.0 + 0.3 * torch.randn_like(m.weight))
                m.bias.copy_(0.2 * torch.randn_like(m.bias))
                m.running_mean.copy_(0.5 * torch.randn_like(m.running_mean))
                m.running_var.copy_(0.5 + 1.5 * torch.rand_like(m.running_var))
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def teacher_arrays(net: nn.Module) -> dict[str, np.ndarray]:
    """Every parameter and buffer (running statistics) under 'w/<torch name>'."""
    out = {}
    for k, v in net.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        out["w/" + k] = v.detach().cpu().numpy().astype(np.float64)
    return out


def conv_bn_names(net: nn.Module) -> list[str]:
    return [k for k, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
