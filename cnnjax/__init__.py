"""cnnjax: the classic ImageNet convolutional networks in JAX/Flax.

Importing `cnnjax` (or any of its modules) imports nothing heavy and changes
nothing global: no environment variable, JAX option or malloc setting.
Process-wide CPU settings are `cnnjax.xla_cpu.configure_process()`, which
train.py and the benchmarks call first thing. The submodules are layered:
`cnnjax.models` needs only jax and flax, `cnnjax.train` adds optax and
orbax, and `cnnjax.data` alone imports TensorFlow and tfds.
"""

__version__ = "0.1.0"
