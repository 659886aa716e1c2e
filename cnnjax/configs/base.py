"""Every key the trainer understands, with its type, default and meaning.

A recipe calls `get_base_config()`, overrides what its paper specifies and
returns the locked result, so an unknown key (a typo on the command line or
in a recipe) is an error instead of a silently ignored setting. The allowed
values of the enumerated keys live in `CHOICES`; `cnnjax.train.config`
checks every key against this file before anything is compiled.

Durations come in pairs, `<name>_steps` (int) and `<name>_epochs` (float);
a recipe sets the one its paper used and leaves the other at -1. When both
are set the step count wins, so `--config.num_steps=100` shortens any
recipe. `cnnjax.train.durations.to_steps` is the one place that converts.
"""

from typing import Any

# Enumerated keys and their allowed values.
CHOICES = {
    "dtype": ("float32", "bfloat16"),  # float16 needs loss scaling, which cnnjax does not do
    "augment": ("none", "cifar", "alexnet", "scale_jitter", "inception"),
    "eval_view": ("center", "10crop"),
    "optimizer": ("sgd",),
    "schedule": ("constant", "multistep", "plateau", "exponential", "warmup_cosine"),
    "lr_scaling": ("none", "linear"),
    "weight_decay_mask": ("kernels", "kernels_and_biases", "all", "none"),
    "loss": ("categorical_cross_entropy", "binary_cross_entropy", "mean_squared_error"),
    "on_bad_image": ("raise", "skip"),
    "cpu_kernels": ("auto", "on", "off"),
    "input_boundary": ("auto", "float32", "uint8", "canvas", "dali"),
}

# Keys whose value is a free-form dict forwarded to another module.
FREE_FORM_KEYS = ("model_kwargs", "augment_kwargs", "eval_view_kwargs")

# Duration pairs `<name>_steps` / `<name>_epochs` (see the module docstring).
DURATIONS = ("num", "eval_every", "checkpoint_every", "warmup", "lr_decay_every")


def default_values() -> dict[str, Any]:
  """Every key with its neutral default, as a plain dict (no ml_collections needed:
  the training code validates and runs any mapping with these keys)."""
  return {
    # --- model -------------------------------------------------------------
    "model": "cifar_resnet20",  # a name from cnnjax.models.list_models()
    "model_kwargs": {},  # forwarded to cnnjax.models.create
    "num_classes": 0,  # 0: the dataset's number of classes
    "dtype": "float32",  # compute dtype; params, optimiser state and BN statistics stay float32
    # Examples per BatchNorm statistics group. 0: the per-device batch (the
    # papers' per-GPU statistics, no cross-device traffic); -1: synchronised
    # over the whole global batch; n > 0: groups of n examples.
    "bn_group_size": 0,
    "init_from": "",  # a trained run's workdir or published weights ("keras/vgg16:<file>"): fine-tuning
    # The CPU-tuned model parts (cnnjax.models.cpu: same variables and values,
    # a faster train step on XLA:CPU, benchmarks/RESULTS.md): "auto" uses them
    # when the process runs on the CPU backend, "on" always, "off" never.
    "cpu_kernels": "auto",

    # --- data --------------------------------------------------------------
    "dataset": "digits",  # a tfds name, "image_folder:<path>", or the embedded "digits"
    "data_dir": "",  # "": tfds default
    "train_split": "",  # "": the dataset's training split
    "eval_split": "",  # "": the dataset's validation split
    "image_size": 0,  # 0: the augmentation's / dataset's default
    "normalize": "per_channel",  # mean subtraction, see cnnjax.data
    "augment": "none",
    "augment_kwargs": {},
    # Where the host stops (cnnjax.preprocessing.boundary): "float32" finishes
    # the images on the host; "uint8" ships uint8 (+ crop windows) and the
    # jitted steps colour-augment and normalise them (a quarter of the bytes);
    # "canvas" (inception) also leaves the crop's resize and flip to the step;
    # "dali" decodes the training images on the GPU with NVIDIA DALI (`pip
    # install -e ".[dali]"`; evaluation stays on tf.data, as "uint8"); "auto":
    # uint8 with an accelerator, and on a CPU-only JAX the faster there
    # (float32: RESULTS.md, "uint8 to the device").
    "input_boundary": "auto",
    # Training images from a copy of the dataset whose longer side is at most
    # this many pixels (prepared once; fewer pixels to decode, so fewer host
    # cores per accelerator; cnnjax.data.bounded for the policy). 0: the
    # original. Evaluation always reads the original.
    "max_resolution": 0,
    "eval_view": "center",  # view of the periodic validation (full protocols: cnnjax evaluation)
    "eval_view_kwargs": {},
    "eval_batch_size": 0,  # 0: batch_size
    "eval_num_batches": 0,  # 0: the whole validation split
    # An unreadable image file (image folders): "raise" stops before training
    # with a DataError naming it; "skip" leaves it out and counts it.
    "on_bad_image": "raise",

    # --- batch and duration -------------------------------------------------
    "batch_size": 128,  # global, over every device of every process
    "num_steps": -1,
    "num_epochs": -1.0,

    # --- optimiser ----------------------------------------------------------
    "optimizer": "sgd",
    "learning_rate": 0.1,
    "lr_scaling": "none",  # "linear": lr = learning_rate * batch_size / lr_base_batch_size
    "lr_base_batch_size": 256,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 1e-4,
    # Which parameters decay: conv/dense "kernels" (modern default), also their
    # biases ("kernels_and_biases"), every parameter incl. BN ("all", Caffe's
    # default as used by AlexNet/VGG/GoogLeNet), or "none".
    "weight_decay_mask": "kernels",
    "grad_clip_norm": 0.0,  # 0: no clipping

    # --- learning-rate schedule ---------------------------------------------
    # constant | multistep (x lr_decay_factor at each boundary) | plateau (x
    # lr_decay_factor when validation error stops improving, at most
    # plateau_max_reductions times) | exponential (x lr_decay_factor every
    # lr_decay_every) | warmup_cosine (linear warm-up, cosine to 0).
    "schedule": "constant",
    "lr_decay_factor": 0.1,
    "lr_boundaries_steps": (),
    "lr_boundaries_epochs": (),
    "lr_decay_every_steps": -1,
    "lr_decay_every_epochs": -1.0,
    "warmup_steps": -1,  # linear warm-up from 0 (any schedule)
    "warmup_epochs": -1.0,
    "plateau_patience": 2,  # evaluations without improvement before a reduction
    "plateau_rtol": 1e-3,  # relative improvement that counts
    "plateau_max_reductions": 3,
    # ResNet-110's warm-up: lr x error_warmup_factor until a training batch's
    # top-1 error drops below error_warmup_threshold. 0: off.
    "error_warmup_factor": 0.0,
    "error_warmup_threshold": 0.8,
    "ema_decay": 0.0,  # Polyak/EMA averaging of params, evaluated separately; 0: off

    # --- loss ---------------------------------------------------------------
    "loss": "categorical_cross_entropy",
    "label_smoothing": 0.0,
    "aux_loss_weight": 0.3,  # GoogLeNet's auxiliary classifiers

    # --- run ----------------------------------------------------------------
    "seed": 0,
    "log_every_steps": 50,
    "eval_every_steps": -1,  # -1 with eval_every_epochs -1: only at the end
    "eval_every_epochs": -1.0,
    "checkpoint_every_steps": -1,  # -1 with checkpoint_every_epochs -1: only at the end
    "checkpoint_every_epochs": -1.0,
    "keep_checkpoints": 3,  # latest N; the best by validation error is kept besides
    # Batches placed on the devices ahead of the step that uses them, so their
    # host-to-device copies overlap compute (>= 1).
    "prefetch_batches": 2,
    "profile_steps": (),  # (first, last): trace these steps with jax.profiler into <workdir>/profile
    "compilation_cache_dir": "",  # "": $CNNJAX_COMPILATION_CACHE_DIR or ~/.cache/cnnjax/jax
    "progress_bar": True,
  }


def get_base_config():
  """All keys with neutral defaults, as the ml_collections.ConfigDict recipes override and lock."""
  import ml_collections  # pylint: disable=import-outside-toplevel  (config files only)
  return ml_collections.ConfigDict(default_values())


def finalize(config):
  """Locks a recipe: unknown keys become errors; free-form dicts stay open."""
  config.lock()
  for key in FREE_FORM_KEYS:
    config[key].unlock()
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
