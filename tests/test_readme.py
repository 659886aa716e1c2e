"""The README works as a front door: its commands are right, its example runs, it stays short.

The two commands at the top are checked against what they rely on (bash
syntax, the extras and console script they name, CI running the test
command verbatim); the Python example runs in a fresh process; the page
keeps its shape (length, table of contents, paragraphs a reader can take in,
links that lead somewhere).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
MAX_LINES = 250
MAX_PARAGRAPH_WORDS = 120
# Pages written beside this one; a link to them is checked once they are in the tree.
PAGES_WRITTEN_ELSEWHERE = {"docs/reliability.md", "docs/weights.md", "docs/lessons.md",
                           "docs/input.md"}


def _text() -> str:
  with open(README, encoding="utf-8") as f:
    return f.read()


def _blocks(language: str) -> list[str]:
  return re.findall(rf"```{language}\n(.*?)```", _text(), re.S)


def _pyproject() -> dict:
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)


def test_the_two_commands_come_first_and_parse():
  train_command, test_command = _blocks("bash")[:2]
  assert _text().index(train_command) < _text().index("## Contents")
  for command in (train_command, test_command):
    subprocess.run(["bash", "-n", "-c", command], check=True)  # valid shell


def test_the_main_command_installs_what_it_runs():
  command = _blocks("bash")[0].strip()
  assert command.startswith("python3 -m venv .venv && . .venv/bin/activate && ")
  extras = re.findall(r'pip install -e "\.\[(\w+)\]"', command)
  assert extras == ["train"], command
  assert "train" in _pyproject()["project"]["optional-dependencies"]
  runs = command.rsplit("&&", 1)[1].split()[0]
  assert runs in _pyproject()["project"]["scripts"], runs


def test_ci_runs_the_readme_test_command_verbatim():
  command = _blocks("bash")[1].strip()
  assert re.fullmatch(r'pip install -e "\.\[test\]" && python -m pytest .+', command), command
  with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
    ci = f.read()
  assert command in ci.splitlines(), "CI must run the README's test command as written"


@pytest.mark.slow  # a fresh process importing JAX and tracing ResNet-50: ~40 s on a busy 2-core CPU
def test_the_python_example_runs(tmp_path):
  example = _blocks("python")[0]
  assert len(example.strip().splitlines()) <= 10
  environ = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, env=environ,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == "(2, 10) 25,557,032 parameters in ResNet-50", result.stdout


def test_the_page_is_short_with_a_table_of_contents():
  lines = _text().splitlines()
  assert len(lines) <= MAX_LINES, len(lines)
  headings = [line[3:] for line in lines if line.startswith("## ")]
  anchors = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
  contents = re.findall(r"^- \[[^]]+\]\(#([\w-]+)\)$", _text(), re.M)
  assert set(contents) == anchors - {"contents"}, (contents, anchors)


def test_no_paragraph_is_a_wall_of_text():
  text = re.sub(r"```.*?```", "", _text(), flags=re.S)
  for paragraph in text.split("\n\n"):
    if paragraph.lstrip().startswith(("|", "#", "<!--")):
      continue
    words = len(paragraph.split())
    assert words <= MAX_PARAGRAPH_WORDS, (words, paragraph[:200])


def test_links_lead_somewhere():
  missing = []
  for target in re.findall(r"\]\(([^)#\s]+)(?:#[\w-]+)?\)", _text()):
    if target.startswith(("http://", "https://")):
      continue
    if not os.path.exists(os.path.join(REPO, target)):
      missing.append(target)
  unexpected = [target for target in missing if target not in PAGES_WRITTEN_ELSEWHERE]
  assert not unexpected, unexpected
  if missing:
    pytest.skip(f"pages not in this tree yet: {sorted(set(missing))}")


def test_docs_pages_link_to_pages_that_exist():
  docs = os.path.join(REPO, "docs")
  unexpected = []
  for name in sorted(os.listdir(docs)):
    with open(os.path.join(docs, name), encoding="utf-8") as f:
      text = re.sub(r"```.*?```", "", f.read(), flags=re.S)
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[\w-]+)?\)", text):
      if target.startswith(("http://", "https://")):
        continue
      path = os.path.normpath(os.path.join("docs", target))
      if not os.path.exists(os.path.join(REPO, path)) and path not in PAGES_WRITTEN_ELSEWHERE:
        unexpected.append(f"{name}: {target}")
  assert not unexpected, unexpected


@pytest.mark.slow  # torchvision's ResNet-18 saved once, then a fresh process: ~40 s on 2 cores
def test_the_weights_example_runs_offline(tmp_path):
  """The README's weights example, verbatim, with torchvision's cache seeded by a random-weights
  file (no download) and a photograph-sized JPEG as cat.jpg."""
  example = _blocks("python")[1]
  assert len(example.strip().splitlines()) <= 10 and "weights.load" in example
  environ = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
                 TORCH_HOME=str(tmp_path / "torch"))
  seed = subprocess.run([sys.executable, os.path.join(REPO, "tests", "weights", "torch_reference.py"),
                         "resnet18", "IMAGENET1K_V1", "32", str(tmp_path)],
                        env=environ, capture_output=True, text=True, timeout=300)
  assert seed.returncode == 0, seed.stderr[-3000:]
  from PIL import Image  # pylint: disable=import-outside-toplevel
  pixels = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(tmp_path / "cat.jpg")
  result = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, env=environ,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 6 and lines[-1] == "(1, 512)", result.stdout
  probabilities = [float(line.split("%")[0]) for line in lines[:5]]
  assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 100
  assert not result.stderr.strip(), result.stderr[-2000:]  # quiet: no library notices
