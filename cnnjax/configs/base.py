"""The base config every recipe starts from: every setting the trainer understands.

The settings are grouped by subsystem (model, input, optimizer, schedule,
loss, eval, checkpoint, run); each group is a frozen dataclass declared, with
its defaults and a comment per setting, next to the code that reads it
(`cnnjax.train.config` lists them). `get_base_config()` is those defaults as
an ml_collections.ConfigDict; a recipe overrides what its paper specifies
and returns it locked by `finalize`, so an unknown key (a typo on the
command line or in a recipe) is an error instead of a silently ignored
setting: `--config.optimizer.learnig_rate=0.1` names `learning_rate`.

Durations come in pairs, `<name>_steps` (int) and `<name>_epochs` (float),
in their group (`run.num_steps` / `run.num_epochs`, `eval.every_steps` /
`eval.every_epochs`, ...); a recipe sets the one its paper used and leaves
the other at -1. When both are set the step count wins, so
`--config.run.num_steps=100` shortens any recipe.
`cnnjax.train.durations.to_steps` is the one place that converts.
"""


def get_base_config():
  """Every setting with its default, as the ml_collections.ConfigDict recipes override and lock."""
  import ml_collections  # pylint: disable=import-outside-toplevel  (config files only)
  # The defaults live with the training code (jax, optax, flax): loaded when a
  # recipe is built, not when this package is imported.
  from cnnjax.train import config as settings  # pylint: disable=import-outside-toplevel
  return ml_collections.ConfigDict(settings.defaults())


def free_form_keys() -> tuple[str, ...]:
  """The settings whose value is a free-form dict ("model.kwargs", ...): open after `finalize`."""
  from cnnjax.train import config as settings  # pylint: disable=import-outside-toplevel
  return settings.FREE_FORM


def finalize(config):
  """Locks a recipe: unknown keys become errors; free-form dicts stay open."""
  config.lock()
  for path in free_form_keys():
    group, key = path.split(".")
    config[group][key].unlock()
  return config


def parse_arg(arg: str | None) -> tuple[list[str], dict[str, str]]:
  """Splits a recipe argument 'D,jitter,key=value' into flags and key=values."""
  words, pairs = [], {}
  for part in (arg or "").split(","):
    part = part.strip()
    if not part:
      continue
    if "=" in part:
      key, value = part.split("=", 1)
      pairs[key.strip()] = value.strip()
    else:
      words.append(part)
  return words, pairs
