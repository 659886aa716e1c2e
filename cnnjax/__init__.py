"""cnnjax: the classic ImageNet convolutional networks in JAX/Flax.

Importing `cnnjax` imports nothing heavy; the submodules are layered:
`cnnjax.models` needs only jax and flax, `cnnjax.train` adds optax and
orbax, and `cnnjax.data` alone imports TensorFlow and tfds.
"""

__version__ = "0.1.0"
