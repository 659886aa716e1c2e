"""PyTorch twins of the CIFAR-10 networks, which torchvision does not ship.

The 6n+2-layer ResNets of He et al. (2016, section 4.2): a 3x3 conv of 16
filters, three stages of n basic blocks on 16/32/64 channels, global average
pool, a 10-way linear layer; option A shortcuts (stride-2 subsampling and
zero-padded channels). "cifar_plainN" drops the shortcuts. Only for timing
against cnnjax's `cifar_resnetN` / `cifar_plainN`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional


class BasicBlock(nn.Module):
  """Two 3x3 conv-BN layers, ReLU after the (optional) option-A addition."""

  def __init__(self, in_channels: int, channels: int, stride: int, shortcut: bool):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(channels)
    self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(channels)
    self.stride = stride
    self.extra_channels = channels - in_channels
    self.shortcut = shortcut

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = functional.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if self.shortcut:
      residual = x[:, :, ::self.stride, ::self.stride] if self.stride != 1 else x
      if self.extra_channels > 0:
        residual = functional.pad(residual, (0, 0, 0, 0, 0, self.extra_channels))
      y = y + residual
    return functional.relu(y)


class CifarResNet(nn.Module):

  def __init__(self, blocks_per_stage: int, num_classes: int = 10, shortcut: bool = True):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                              nn.ReLU(inplace=True))
    blocks = []
    in_channels = 16
    for stage, channels in enumerate((16, 32, 64)):
      for index in range(blocks_per_stage):
        stride = 2 if stage > 0 and index == 0 else 1
        blocks.append(BasicBlock(in_channels, channels, stride, shortcut))
        in_channels = channels
    self.blocks = nn.Sequential(*blocks)
    self.fc = nn.Linear(64, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.blocks(self.stem(x))
    return self.fc(torch.flatten(functional.adaptive_avg_pool2d(x, 1), 1))


def cifar_resnet(name: str, num_classes: int = 10) -> CifarResNet:
  """"cifar_resnet56" / "cifar_plain20" -> the network (6n+2 layers)."""
  shortcut = name.startswith("cifar_resnet")
  depth = int(name.removeprefix("cifar_resnet" if shortcut else "cifar_plain"))
  if (depth - 2) % 6:
    raise ValueError(f"CIFAR networks have 6n+2 layers; got {name!r}")
  return CifarResNet((depth - 2) // 6, num_classes, shortcut)
