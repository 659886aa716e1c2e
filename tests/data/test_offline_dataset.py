"""A tfds dataset that is not on disk and cannot be downloaded fails fast, saying how to prepare it.

Without a network, tfds retries a download for minutes before giving up;
`cnnjax.data` first checks that the dataset's download hosts accept a
connection. The real cifar10 builder is used with its hosts replaced by
ones that cannot answer (a name under .invalid, a closed local port), so no
test ever downloads, with or without a network; its download is replaced by
a failure that names itself, should the check let it through.
"""

from __future__ import annotations

import socket
import time

import pytest
import tensorflow_datasets as tfds

import cnnjax.data
from cnnjax.data import sources
from cnnjax.errors import DataError

UNRESOLVABLE = ("cifar-mirror.cnnjax.invalid", 443)  # .invalid never resolves (RFC 6761)


class _DownloadStarted(Exception):
  pass


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
  """cifar10's download_and_prepare raises _DownloadStarted instead of downloading."""
  def refuse(self, *args, **kwargs):
    raise _DownloadStarted("download_and_prepare was called")
  monkeypatch.setattr(tfds.builder_cls("cifar10"), "download_and_prepare", refuse)


def _closed_local_port() -> tuple[str, int]:
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()


@pytest.mark.parametrize("host", [UNRESOLVABLE, None], ids=["unresolvable", "refused"])
def test_unreachable_download_host_fails_fast_naming_data_dir_and_fix(tmp_path, monkeypatch, host):
  host = host or _closed_local_port()
  monkeypatch.setattr(sources, "download_hosts", lambda builder, root=None: [host])
  data_dir = str(tmp_path / "tfds")
  start = time.monotonic()
  with pytest.raises(DataError) as raised:
    cnnjax.data.dataset_info("cifar10", data_dir=data_dir)
  elapsed = time.monotonic() - start
  message = str(raised.value)
  assert elapsed < 15, elapsed
  assert "'cifar10' is not prepared in data_dir " + data_dir in message
  assert "tfds.builder('cifar10', data_dir=" in message and "download_and_prepare()" in message
  assert f"{host[0]}:{host[1]}" in message
  assert not isinstance(raised.value.__cause__, _DownloadStarted)  # never started a download
  assert not (tmp_path / "tfds").exists()  # nothing left behind


def test_reachable_download_host_goes_on_to_download(tmp_path, monkeypatch):
  with socket.socket() as server:
    server.bind(("127.0.0.1", 0))
    server.listen()
    monkeypatch.setattr(sources, "download_hosts", lambda builder, root=None: [server.getsockname()])
    with pytest.raises(DataError, match="download_and_prepare was called") as raised:
      cnnjax.data.dataset_info("cifar10", data_dir=str(tmp_path))
  assert isinstance(raised.value.__cause__, _DownloadStarted)


def test_check_is_bounded_by_its_time_budget(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "DOWNLOAD_CHECK_TIMEOUT_S", 0.0)
  monkeypatch.setattr(sources, "download_hosts", lambda builder, root=None: [("127.0.0.1", 1)])
  with pytest.raises(DataError, match="not tried: out of time"):
    cnnjax.data.dataset_info("cifar10", data_dir=str(tmp_path))


def test_download_hosts_are_the_registered_urls_or_the_proxy(tmp_path, monkeypatch):
  for name in ("https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
    monkeypatch.delenv(name, raising=False)
  builder = tfds.builder("cifar10", data_dir=str(tmp_path))
  assert sources.download_hosts(builder) == [("www.cs.toronto.edu", 443)]
  monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
  assert sources.download_hosts(builder) == [("proxy.example", 3128)]
  monkeypatch.setenv("no_proxy", "cs.toronto.edu")
  assert sources.download_hosts(builder) == [("www.cs.toronto.edu", 443)]


def test_archive_already_in_downloads_needs_no_host(tmp_path):
  """An archive copied into data_dir/downloads (or downloads/manual) is prepared offline."""
  root = str(tmp_path)
  builder = tfds.builder("cifar10", data_dir=root)
  assert sources.download_hosts(builder, root) == [("www.cs.toronto.edu", 443)]
  (url, info), = builder.url_infos.items()
  manual = tmp_path / "downloads" / "manual"
  manual.mkdir(parents=True)
  (manual / info.filename).write_bytes(b"")
  assert sources.download_hosts(builder, root) == []
  (manual / info.filename).unlink()
  cached = tmp_path / "downloads" / tfds.core.download.resource.get_dl_fname(url, info.checksum)
  cached.write_bytes(b"")
  assert sources.download_hosts(builder, root) == [("www.cs.toronto.edu", 443)]  # no .INFO yet
  tfds.core.download.resource.get_info_path(tfds.core.Path(cached)).write_text("{}")
  assert sources.download_hosts(builder, root) == []
