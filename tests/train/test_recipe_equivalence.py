"""Grouping the settings changed no recipe: each recipe's nested settings, mapped back to
the flat names through the same table that reads old config.json files, equal what the
flat layout resolved (recipes_before.json, written before the settings were grouped)."""

from __future__ import annotations

import json
import os

import pytest
from make_recipes_before import CASES, case_key

from cnnjax.configs import get_recipe
from cnnjax.errors import ConfigError
from cnnjax.train import config as config_lib

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "recipes_before.json")) as _file:
  BEFORE = json.load(_file)


def _as_json(tree):
  return json.loads(json.dumps(tree, default=list))


def test_every_recorded_recipe_is_checked():
  assert sorted(case_key(name, arg) for name, arg in CASES) == sorted(BEFORE)


@pytest.mark.parametrize("name,arg", CASES, ids=[case_key(n, a) for n, a in CASES])
def test_the_grouped_recipe_holds_the_flat_values(name, arg):
  nested = get_recipe(name, arg).to_dict()
  assert _as_json(config_lib.to_flat(nested)) == BEFORE[case_key(name, arg)]


@pytest.mark.parametrize("name,arg", CASES, ids=[case_key(n, a) for n, a in CASES])
def test_the_flat_values_load_as_the_grouped_recipe(name, arg):
  """The old layout's values, read as a config.json of that layout, are the new recipe
  (lr_decay_factor goes to every schedule with a factor: the chosen one's is the recipe's)."""
  loaded = _as_json(config_lib.load(BEFORE[case_key(name, arg)]).to_dict())
  recipe = _as_json(get_recipe(name, arg).to_dict())
  for kind in ("multistep", "plateau", "exponential"):
    if kind != recipe["schedule"]["name"]:
      loaded["schedule"][kind]["factor"] = recipe["schedule"][kind]["factor"]
  assert loaded == recipe


def test_the_table_covers_every_flat_name_and_every_setting_once():
  flat_names = set(next(iter(BEFORE.values())))
  assert set(config_lib.FLAT_TO_NESTED) == flat_names
  paths = [p for paths in config_lib.FLAT_TO_NESTED.values() for p in paths]
  assert len(paths) == len(set(paths))

  def leaves(tree, prefix=""):
    for key, value in tree.items():
      if isinstance(value, dict) and f"{prefix}{key}" not in config_lib.FREE_FORM:
        yield from leaves(value, f"{prefix}{key}.")
      else:
        yield f"{prefix}{key}"
  assert set(paths) == set(leaves(config_lib.defaults()))


@pytest.mark.parametrize("key,replacement", [("device_preprocessing", "input.boundary"),
                                             ("input_pipeline", "input.boundary")])
def test_removed_flat_names_say_what_replaces_them(key, replacement):
  stored = dict(BEFORE["quickstart"], **{key: "on"})
  with pytest.raises(ConfigError, match=f"config.{key} was removed; use config.{replacement}"):
    config_lib.load(stored)
