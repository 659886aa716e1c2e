"""The model zoo: AlexNet, VGG, GoogLeNet and ResNet as flax.linen Modules.

    import cnnjax.models
    model = cnnjax.models.create("resnet50", num_classes=1000)
    variables = model.init({"params": key, "dropout": key}, images, train=False)
    logits = model.apply(variables, images)                       # eval
    (logits, feats), state = model.apply(variables, images, train=True, features=True,
                                         rngs={"dropout": key}, mutable=["batch_stats"])

`list_models(family=, pattern=, has_weights=)` filters the names; networks
with published weights load through `cnnjax.weights.load` (`weights_of(name)`
lists their sources).

Every part of a network can be replaced through `create`: `activation=`,
`conv=`, `norm=`, `max_pool=` (see `cnnjax.models.registry.create`). The
default graph is the same on every backend; `cnnjax.models.cpu.parts()` are
the CPU-tuned parts a caller may pass on the CPU backend.

Needs only jax and flax (no TensorFlow, no optax).
"""

from cnnjax.errors import ModelError
from cnnjax.models import alexnet, cpu, googlenet, layers, resnet, vgg
from cnnjax.models.profiling import LayerRow, Profile, profile
from cnnjax.models.registry import (ModelSpec, allowed_overrides, create, dense_form, families,
                                    get_spec, list_models, weights_of)
from cnnjax.models.resnet import to_scanned_variables, to_unscanned_variables

__all__ = [
    "LayerRow", "ModelError", "ModelSpec", "Profile", "alexnet", "allowed_overrides", "cpu",
    "create", "dense_form", "families", "get_spec", "googlenet", "layers", "list_models", "profile", "resnet",
    "to_scanned_variables", "to_unscanned_variables", "vgg", "weights_of",
]
