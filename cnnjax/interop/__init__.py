"""Weights from other frameworks, without their conventions (`cnnjax.weights` adds those).

`cnnjax.interop.torchvision.load(name, state_dict)` turns torchvision's
ImageNet models (AlexNet, VGG 11-19 with and without BatchNorm, GoogLeNet,
ResNet-18..152) into cnnjax models with the same outputs. PyTorch is needed
only to read `.pth` files or torch tensors (the `torch` extra);
`.safetensors` files and numpy state dicts read with safetensors and numpy
(the `weights` extra).

`cnnjax.interop.keras.load(name, file)` does the same for keras.applications'
VGG16/VGG19 and ResNet50/101/152 (the papers' own Caffe weights), from
Keras's HDF5 files with h5py alone.
"""

from cnnjax.interop import keras, state_dict, torchvision
from cnnjax.interop.state_dict import read_state_dict

__all__ = ["keras", "read_state_dict", "state_dict", "torchvision"]
