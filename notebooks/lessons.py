"""What notebooks 07-10 share: training and scoring runs on the generated `shapes` dataset.

Each run is built from cnnjax's public pieces, the ones `train.py` uses:
`cnnjax.data.train_iterator` (the augmentation presets) and `eval_iterator`
(the test views), `cnnjax.train.optim.create_optimizer` (SGD with momentum
and masked weight decay), `cnnjax.train.state.init_train_state` and the pure
`cnnjax.train.steps.train_step_fn`, and `cnnjax.scoring` (the
posteriors averaged over views, as the papers did). Every seed of one
setting reuses one compiled step, so a setting costs one compilation.

`REDUCED` (CNNJAX_SMOKE=1, set by notebooks/conftest.py for CI) makes every
notebook run the same code with fewer steps, seeds and images (`steps`, `SEEDS`,
`shapes`), compiled with most of XLA's optimisations off; its numbers are only a
check that the code runs.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

REDUCED = os.environ.get("CNNJAX_SMOKE") == "1"
SEEDS = (0, 1) if REDUCED else (0, 1, 2)
if REDUCED and "JAX_DISABLE_MOST_OPTIMIZATIONS" not in os.environ:
  # A reduced run is mostly XLA compilation (a handful of steps per compiled setting):
  # compiling without most of XLA's optimisations costs less CPU (a process compiling a
  # quarter-width ResNet-56 train step: 56 -> 25 CPU-seconds; the reduced runs of notebook
  # 07: 135 -> 107, of 09: 137 -> 75, 160 -> 120 s wall, on a loaded 2-core machine), for
  # steps that run slower. Same graphs, same code;
  # JAX_DISABLE_MOST_OPTIMIZATIONS=0 keeps the optimised compilation.
  jax.config.update("jax_disable_most_optimizations", True)


def steps(full: int) -> int:
  """The number of steps of a run: `full` as committed, a handful in the reduced mode."""
  return max(4, full // 50) if REDUCED else full


def shapes(*, train: int, test: int, size: int) -> str:
  """A notebook's `shapes` dataset name: as committed, or in the reduced mode at most 256
  training and 250 test images (a smoke run then spends its time compiling, not generating
  and scoring images)."""
  if REDUCED:
    train, test = min(train, 256), min(test, 250)
  return f"shapes:train={train},test={test},size={size}"


def machine() -> str:
  """Where and when: for the notebooks' header lines."""
  return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPU cores visible, jax {jax.__version__} on {jax.default_backend()}")


@dataclasses.dataclass(frozen=True)
class Recipe:
  """One training setting (everything but the seed)."""
  dataset: str
  image_size: int
  augment: str = "none"
  augment_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  num_steps: int = 300
  batch_size: int = 64
  learning_rate: float = 0.05
  weight_decay: float = 5e-4
  weight_decay_mask: str = "kernels"
  warmup_steps: int = 20
  normalize: str = "per_channel_std"  # mean and std per channel, from the training split


@dataclasses.dataclass
class Run:
  """A trained network and its training curve (the top-1 error of each window of batches)."""
  model: Any
  variables: dict
  seed: int
  curve_steps: np.ndarray
  curve_error: np.ndarray
  seconds: float


# Compiled programs are shared by every run with the same network object and optimiser
# settings (recipes that differ only in their data reuse one compilation).
_OPTIMIZERS: dict[tuple, tuple] = {}
_INITS: dict[tuple, Callable] = {}
_SCORES: dict[int, Callable] = {}


def _train_step():
  from cnnjax.train import steps as steps_lib  # pylint: disable=import-outside-toplevel
  if "step" not in _INITS:
    _INITS["step"] = jax.jit(steps_lib.train_step_fn, donate_argnums=0)
  return _INITS["step"]


class Trainer:
  """Trains one model under one recipe from any seed; compiles its step once."""

  def __init__(self, model, recipe: Recipe, data_dir: str):
    from cnnjax.train import optim, state  # pylint: disable=import-outside-toplevel
    self.model, self.recipe, self.data_dir = model, recipe, data_dir
    key = (recipe.learning_rate, recipe.weight_decay, recipe.weight_decay_mask,
           recipe.num_steps, recipe.warmup_steps)
    if key not in _OPTIMIZERS:
      tx = optim.create_optimizer(optim.OptimizerSettings(
          learning_rate=recipe.learning_rate, momentum=0.9, weight_decay=recipe.weight_decay,
          weight_decay_mask=recipe.weight_decay_mask), recipe.batch_size)
      schedule = optax.warmup_cosine_decay_schedule(
          0.0, recipe.learning_rate, min(recipe.warmup_steps, recipe.num_steps // 2),
          recipe.num_steps)
      _OPTIMIZERS[key] = (tx, state.StepRules(learning_rate_fn=schedule))
    self.tx, self.step_rules = _OPTIMIZERS[key]
    init_key = (id(model), id(self.tx))
    if init_key not in _INITS:
      _INITS[init_key] = jax.jit(lambda rng, image: state.init_train_state(
          model, self.tx, self.step_rules, rng, image))
    self._init = _INITS[init_key]
    self._step = _train_step()

  def run(self, seed: int, *, start: Callable[[dict], dict] | None = None,
          log_every: int = 10) -> Run:
    """Trains from `seed` (initialisation and batch order); `start` may replace the
    initial variables (e.g. a constructed solution)."""
    import cnnjax.data  # pylint: disable=import-outside-toplevel
    recipe = self.recipe
    started = time.perf_counter()
    batches = cnnjax.data.train_iterator(
        recipe.dataset, data_dir=self.data_dir, global_batch_size=recipe.batch_size,
        augment=recipe.augment, augment_kwargs=dict(recipe.augment_kwargs),
        image_size=recipe.image_size, seed=seed, normalize=recipe.normalize,
        boundary="float32")
    sample = jnp.zeros((recipe.batch_size, recipe.image_size, recipe.image_size, 3))
    train_state = self._init(jax.random.PRNGKey(seed), sample)
    if start is not None:
      variables = start({"params": train_state.params, "batch_stats": train_state.batch_stats})
      train_state = train_state.replace(
          params=jax.tree.map(jnp.asarray, variables["params"]),
          batch_stats=jax.tree.map(jnp.asarray, variables.get("batch_stats", {})),
          opt_state=self.tx.init(jax.tree.map(jnp.asarray, variables["params"])))
    errors, window = [], []
    for _ in range(recipe.num_steps):
      batch = next(batches)
      train_state, metrics = self._step(train_state, {"image": batch["image"],
                                                      "label": batch["label"]})
      window.append(metrics["top1_error"])
      if len(window) == log_every:
        errors.append(float(jnp.mean(jnp.stack(window))))
        window = []
    if window:
      errors.append(float(jnp.mean(jnp.stack(window))))
    if int(train_state.first_nonfinite[0]):
      raise FloatingPointError(f"seed {seed}: a NaN/Inf at step {int(train_state.first_nonfinite[0])}")
    variables = jax.device_get(train_state.variables())
    curve_steps = np.minimum(np.arange(1, len(errors) + 1) * log_every, recipe.num_steps)
    return Run(self.model, variables, seed, curve_steps, np.array(errors),
               time.perf_counter() - started)


class Scorer:
  """Posteriors of a split under a test view, for any variables of a model; compiled once."""

  def __init__(self, model, dataset: str, data_dir: str, *, split: str = "test",
               image_size: int, view: str = "center", view_kwargs: Mapping[str, Any] | None = None,
               batch_size: int = 250, normalize: str = "per_channel_std",
               transform: Callable[[dict], dict] | None = None):
    """`transform` rewrites each batch of images (e.g. rescaled copies for multi-scale testing)."""
    import cnnjax.data  # pylint: disable=import-outside-toplevel
    from cnnjax import scoring  # pylint: disable=import-outside-toplevel
    self.batches = []
    for batch in cnnjax.data.eval_iterator(dataset, data_dir=data_dir, split=split,
                                           global_batch_size=batch_size, view=view,
                                           view_kwargs=dict(view_kwargs or {}),
                                           image_size=image_size, normalize=normalize,
                                           boundary="float32"):
      batch = dict(batch)
      if transform is not None:
        batch = transform(batch)
      self.batches.append(batch)
    self.labels = np.concatenate([b["label"][b["mask"]] for b in self.batches])
    keys = [k for k in self.batches[0] if k not in ("label", "mask")]
    if id(model) not in _SCORES:
      _SCORES[id(model)] = jax.jit(lambda variables, images: jax.nn.softmax(
          scoring.view_scores(model.apply, variables, images), axis=-1))
    self._scores = _SCORES[id(model)]
    self._keys = keys

  def posteriors(self, variables) -> np.ndarray:
    """[N, classes]: the softmax averaged over the view's images, real examples only."""
    out = []
    for batch in self.batches:
      probs = self._scores(variables, {k: batch[k] for k in self._keys})
      out.append(np.asarray(probs)[batch["mask"]])
    return np.concatenate(out)

  def error(self, variables) -> float:
    return top1_error(self.posteriors(variables), self.labels)


def top1_error(posteriors: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean(np.argmax(posteriors, axis=-1) != labels))


def spread(values: Sequence[float]) -> str:
  """"mean% (min-max%)" of per-seed errors."""
  values = 100 * np.asarray(values, np.float64)
  return f"{values.mean():.1f}% ({values.min():.1f}-{values.max():.1f})"


def gap_verdict(claimed: Sequence[float], control: Sequence[float], *, lower_is_claimed: bool = True,
                what: str = "error") -> tuple[str, np.ndarray]:
  """Per-seed gap (control - claimed, in points) and whether it has one sign for every seed."""
  gaps = 100 * (np.asarray(control) - np.asarray(claimed))
  if not lower_is_claimed:
    gaps = -gaps
  if (gaps > 0).all():
    word = "reproduced"
  elif (gaps < 0).all():
    word = "reversed"
  else:
    word = "not separated from seed noise"
  return (f"{word}: {what} gap {gaps.mean():+.1f} points (seeds {gaps.min():+.1f} to "
          f"{gaps.max():+.1f})", gaps)
