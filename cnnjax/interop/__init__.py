"""Weights from other frameworks.

`cnnjax.interop.torchvision.load(name, state_dict)` turns torchvision's
ImageNet models (AlexNet, VGG 11-19 with and without BatchNorm, GoogLeNet,
ResNet-18..152) into cnnjax models with the same outputs. PyTorch is needed
only to read `.pth` files or torch tensors (the `torch` extra);
`.safetensors` files and numpy state dicts read without it.
"""

from cnnjax.interop import state_dict, torchvision
from cnnjax.interop.state_dict import read_state_dict

__all__ = ["read_state_dict", "state_dict", "torchvision"]
