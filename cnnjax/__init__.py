"""cnnjax: the classic ImageNet convolutional networks in JAX/Flax.

Importing `cnnjax` imports nothing heavy (it only adds tuned XLA:CPU
options to XLA_FLAGS, see `cnnjax.xla_cpu`); the submodules are layered:
`cnnjax.models` needs only jax and flax, `cnnjax.train` adds optax and
orbax, and `cnnjax.data` alone imports TensorFlow and tfds.
"""

from cnnjax import xla_cpu as _xla_cpu

__version__ = "0.1.0"

# Before any JAX backend starts: see cnnjax/xla_cpu.py (CNNJAX_XLA_CPU_FLAGS=off keeps XLA's).
_xla_cpu.configure()
