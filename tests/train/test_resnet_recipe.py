"""resnet_imagenet.py: shortcut options and the version each quoted target belongs to."""

import pytest

from cnnjax.configs import resnet_imagenet
from cnnjax.errors import ConfigError


@pytest.mark.parametrize("arg,kwargs", [
    ("34", {}), ("34,A", {"shortcut": "A"}), ("34,C", {"shortcut": "C"}),
    ("50,v1", {"version": "1"}), ("50,v1,B", {"version": "1", "shortcut": "B"}),
])
def test_shortcut_and_version_options(arg, kwargs):
  config = resnet_imagenet.get_config(arg)
  assert dict(config.model.kwargs or {}) == kwargs
  assert config.model.name == "resnet" + arg.split(",")[0]


def test_shortcut_options_build_the_papers_networks():
  from cnnjax import models
  a = models.create("resnet34", num_classes=10, **resnet_imagenet.get_config("34,A").model.kwargs)
  assert a.shortcut == "A"


@pytest.mark.parametrize("arg", ["34,A,B", "34,plain,A", "34,D"])
def test_bad_shortcut_arguments(arg):
  with pytest.raises(ConfigError):
    resnet_imagenet.get_config(arg)


def test_targets_name_their_shortcut_and_version():
  doc = resnet_imagenet.__doc__
  assert "25.03 / 7.76   `:34,A`" in doc and "24.52 / 7.46   `:34`" in doc
  assert "22.85 / 6.71   `:50,v1`" in doc
  assert "per-pixel mean subtracted" in doc and 'normalize="per_channel"' in doc
