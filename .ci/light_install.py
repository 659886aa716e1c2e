"""The light install's promise, checked in a fresh environment holding `pip install .` only.

`cnnjax.models` creates and applies a network with jax and flax alone; no
TensorFlow, tfds, torch or ml_collections came with it; the training part
says which extra it needs instead of failing on a bare import.
"""

import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp

import cnnjax.models as models

HEAVY = ("tensorflow", "tensorflow_datasets", "torch", "ml_collections", "tqdm", "sklearn")

installed = [name for name in HEAVY if importlib.util.find_spec(name) is not None]
if installed:
  sys.exit(f"light install: `pip install .` brought {installed}, which only extras may install")

model = models.create("cifar_resnet20", width_multiplier=0.25)
images = jnp.zeros((2, 32, 32, 3))
variables = model.init(jax.random.PRNGKey(0), images, train=False)
logits = model.apply(variables, images, train=False)
if logits.shape != (2, 10):
  sys.exit(f"light install: logits of shape {logits.shape}, expected (2, 10)")

try:
  import cnnjax.train  # noqa: F401
except ImportError as error:
  if "cnnjax[train]" not in str(error):
    sys.exit(f"light install: `import cnnjax.train` failed without naming the extra: {error}")
else:
  sys.exit("light install: `import cnnjax.train` succeeded without the [train] extra")
command = os.path.join(os.path.dirname(sys.executable), "cnnjax-train")
done = subprocess.run([command, "--help"], capture_output=True, text=True, check=False)
if done.returncode != 2 or "cnnjax[train]" not in done.stderr or "Traceback" in done.stderr:
  sys.exit(f"light install: cnnjax-train without the [train] extra should name it in one line "
           f"(exit status {done.returncode}): {done.stderr[-2000:]}")
print("light install: cnnjax.models works with jax and flax alone; cnnjax.train and "
      "cnnjax-train name the extra they need")
