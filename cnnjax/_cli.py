"""What every cnnjax command line shares: absl flags, a user's mistake as one line.

Each command (`cnnjax-train`, `cnnjax-evaluate`, `cnnjax-embed`,
`cnnjax-models`, and their `python -m` forms) defines its flags on a
`FlagValues` of its own, so its `main(argv)` can be called from Python more
than once, and parses them here: `--help` prints the command's flags, an
unknown flag or a value of the wrong type prints one line naming it and
exits with status 2. A mistake the library finds later (a `CnnjaxError`, a
missing extra) is printed by `print_user_error` as one line too; only a
bug prints a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from absl import flags

HELP_FLAGS = ("-h", "--help", "-help", "--helpfull", "--helpshort")
USAGE_ERROR = 2  # the status of a command given flags it cannot take (as argparse's)


def parse(argv: Sequence[str], define: Callable[[flags.FlagValues], None], *, prog: str,
          doc: str) -> tuple[flags.FlagValues, list[str]]:
  """(the parsed flags, the positional arguments) of `argv`; exits on --help or a flag error.

  `define(flag_values)` defines the command's flags; `argv[0]` is the
  program name, as in `sys.argv`.
  """
  flag_values = flags.FlagValues()
  define(flag_values)
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top,unused-import
  for flag in flags.FLAGS.get_flags_for_module("absl.logging"):  # --verbosity, --logtostderr...
    flag_values[flag.name] = flag
  if any(arg in HELP_FLAGS for arg in argv[1:]):
    print(f"usage: {prog} [flags]\n\n{doc.strip()}\n\nflags:\n{flag_values.get_help(include_special_flags=False)}")
    sys.exit(0)
  try:
    positional = flag_values(list(argv))
  except flags.Error as error:
    cause = _cnnjax_error_in(error)
    if cause is not None:  # e.g. a recipe refusing its argument: the library's words alone
      print_user_error(cause)
      sys.exit(USAGE_ERROR)
    # absl's own words and prefix (absl.app prints the same for a program it runs)
    print(f"FATAL Flags parsing error: {error}\nTry '{prog} --help'.", file=sys.stderr)
    sys.exit(USAGE_ERROR)
  return flag_values, positional[1:]


def _cnnjax_error_in(error: BaseException) -> BaseException | None:
  """The first CnnjaxError that caused `error`, if one did.

  A flag parser wraps what it calls (ml_collections re-raises a recipe's
  error with its traceback in the message): the innermost one is the library's own.
  """
  from cnnjax.errors import CnnjaxError  # pylint: disable=g-import-not-at-top
  found, seen = None, set()
  while error is not None and id(error) not in seen:
    if isinstance(error, CnnjaxError):
      found = error
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return found


def print_user_error(error: BaseException) -> None:
  """`ErrorClass: message` on stderr: a mistake the user can fix, not a bug to debug."""
  print(f"{type(error).__name__}: {error}", file=sys.stderr)


def define_verbose(flag_values: flags.FlagValues) -> None:
  flags.DEFINE_bool("verbose", False, "show the libraries' own log lines (TensorFlow, tfds, "
                    "absl, orbax); by default only their errors print", flag_values=flag_values)


def asks_verbose(argv: Sequence[str]) -> bool:
  """Whether `argv` turns --verbose on, read before the flags are parsed (for what must
  precede the libraries' imports, which parsing a recipe may already cause)."""
  verbose = False
  for arg in argv[1:]:
    name, _, value = arg.lstrip("-").partition("=")
    if name == "verbose":
      verbose = value.lower() not in ("false", "0")
    elif name == "noverbose":
      verbose = False
  return verbose


def _launch(target: str) -> int:
  """Runs the command `module:function`; a missing extra is one line, not a traceback."""
  import importlib  # pylint: disable=g-import-not-at-top

  from cnnjax._imports import MissingExtraError  # pylint: disable=g-import-not-at-top
  module_name, _, function = target.partition(":")
  try:
    return getattr(importlib.import_module(module_name), function)()
  except MissingExtraError as error:
    print_user_error(error)
    return USAGE_ERROR


# The console scripts of pyproject.toml.
def train() -> int:
  return _launch("cnnjax.train.__main__:main")


def evaluate() -> int:
  return _launch("cnnjax.evaluate.__main__:main")


def embed() -> int:
  return _launch("cnnjax.embed:main")


def models() -> int:
  return _launch("cnnjax.models.__main__:main")
