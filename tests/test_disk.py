"""Disk use (issue 23 item 8): the feature cache's size cap with least-recently-used eviction
(stetho/features/cache_limit.py), `stetho cache`, and training checkpoints deleted once a training
succeeds unless `--keep-checkpoints` (stetho/models/checkpoints.py, Trainer)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from stetho.cli import main
from stetho.errors import ConfigError
from stetho.features import FeatureCache
from stetho.features.cache_limit import (DEFAULT_MAX_BYTES, ENV_MAX_SIZE, cache_info, clear, evict, parse_size,
                                         resolve_max_bytes)
from stetho.models.training import Trainer, keep_checkpoints_requested, keeping_checkpoints
from stetho.synth import make_toy_dataset

N = 1000  # float32 values per entry: 4000 bytes of data


def _key(i: int) -> str:
    return f"{i:064x}"


def _fill(cache: FeatureCache, ids, t0: float = 1_000_000.0) -> None:
    """Write one entry per id, each last used one second after the previous one."""
    for i in ids:
        cache.write(_key(i), np.full(N, i, np.float32), 16000)
        os.utime(cache._file(_key(i)), (t0 + i, t0 + i))


def _left(root: Path) -> list[int]:
    return sorted(int(p.stem, 16) for p in (root / "features").rglob("*.npy"))


def test_sizes_parse_in_binary_units():
    assert parse_size("2G") == 2 * 1024**3 == DEFAULT_MAX_BYTES
    assert parse_size("500M") == 500 * 1024**2 and parse_size("1.5GB") == int(1.5 * 1024**3)
    assert parse_size("300k") == 307200 and parse_size("4096") == 4096 and parse_size(0) == 0
    with pytest.raises(ConfigError, match="'12 parsecs' is not a size"):
        parse_size("12 parsecs")


def test_the_cache_evicts_the_least_recently_used_entries_beyond_its_cap(tmp_path):
    probe = FeatureCache(tmp_path / "probe", max_bytes=0)  # 0: no cap
    probe.write(_key(0), np.zeros(N, np.float32))
    entry = probe._file(_key(0)).stat().st_size
    assert entry == 128 + 4 * N + 56  # npy header, data, trailer

    root = tmp_path / "cache"
    cache = FeatureCache(root, max_bytes=5 * entry)  # room for 5 entries
    _fill(cache, range(5))
    assert _left(root) == [0, 1, 2, 3, 4] and cache.limit.evicted == 0
    # reading entry 0 records its use: it is now the most recently used
    assert cache.read(_key(0)).features[0] == 0.0
    assert cache._file(_key(0)).stat().st_mtime > 1_000_000.0 + 10
    # the sixth entry takes the cache over its cap: evicted down to 90 % (4.5 entries -> 4 left),
    # least recently used first: entries 1 and 2 go, 0 (just read) and the newest stay
    _fill(cache, [5])
    assert _left(root) == [0, 3, 4, 5]
    assert cache.limit.evicted == 2 and cache.limit.evicted_bytes == 2 * entry
    info = cache_info(root, max_bytes=5 * entry)
    assert (info.entries, info.bytes) == (4, 4 * entry) and info.kinds == {"logmel": (4, 4 * entry)}
    # the evicted entries are misses, the rest hits
    assert cache.read(_key(1)) is None and cache.read(_key(3)) is not None


def test_a_second_process_sharing_the_cache_sees_what_is_on_disk(tmp_path):
    root = tmp_path / "cache"
    first = FeatureCache(root, max_bytes=0)
    _fill(first, range(8))
    entry = first._file(_key(0)).stat().st_size
    # a new cache object (another run) with a cap of 6 entries: its first write scans the folder
    second = FeatureCache(root, max_bytes=6 * entry)
    _fill(second, [8], t0=2_000_000.0)
    # 9 entries > 6: down to 5.4 entries -> 5 left, the oldest (0-3) evicted
    assert _left(root) == [4, 5, 6, 7, 8]


def test_the_cap_comes_from_the_argument_the_environment_the_stored_size_or_the_default(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_MAX_SIZE, raising=False)
    assert resolve_max_bytes(tmp_path) == DEFAULT_MAX_BYTES
    assert main(["-q", "cache", "--dir", str(tmp_path), "--max-size", "300M"]) == 0
    assert (tmp_path / "max_size").read_text().strip() == str(300 * 1024**2)
    assert resolve_max_bytes(tmp_path) == 300 * 1024**2
    monkeypatch.setenv(ENV_MAX_SIZE, "1G")
    assert resolve_max_bytes(tmp_path) == 1024**3
    assert resolve_max_bytes(tmp_path, "10K") == 10240
    assert FeatureCache(tmp_path, max_bytes="10K").limit.max_bytes == 10240


def test_stetho_cache_shows_trims_and_clears_the_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(ENV_MAX_SIZE, raising=False)
    root = tmp_path / "cache"
    cache = FeatureCache(root, max_bytes=0)
    _fill(cache, range(6))
    entry = cache._file(_key(0)).stat().st_size
    assert main(["-q", "cache", "--dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"feature cache: {root}" in out
    assert f"({6 * entry} bytes) in 6 entries; cap 2.0 GB" in out and "logmel: 6 entries" in out

    # --max-size stores the cap and evicts the least recently used entries beyond it now
    assert main(["-q", "cache", "--dir", str(root), "--max-size", str(4 * entry)]) == 0
    out = capsys.readouterr().out
    assert "2 least recently used entries" in out and f"({4 * entry} bytes) in 4 entries" in out
    assert _left(root) == [2, 3, 4, 5]
    assert evict(root, 4 * entry) == (0, 0)  # within the cap: nothing to do

    # environment variable STETHO_CACHE_DIR is the default folder
    monkeypatch.setenv("STETHO_CACHE_DIR", str(root))
    assert main(["-q", "cache", "--clear"]) == 0
    out = capsys.readouterr().out
    assert f"cleared {root}: 4 entries" in out and "(0 bytes) in 0 entries" in out
    assert _left(root) == [] and (root / "max_size").is_file()  # the cap stays
    assert clear(root) == (0, 0)
    assert main(["-q", "cache", "--dir", str(root), "--max-size", "lots"]) == 2


# -- checkpoints ------------------------------------------------------------------------------------
def _tiny_training(work: Path, epochs: int = 3) -> Trainer:
    """A 2-parameter regression trained with a checkpoint in ``work``; returns its trainer."""
    trainer = Trainer(0, device="cpu", checkpoint_every=1)
    with trainer as tr:
        net = torch.nn.Linear(1, 1)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        x = torch.linspace(-1, 1, 16)[:, None]

        def step(batch) -> float:
            opt.zero_grad()
            loss = ((net(batch) - 2 * batch) ** 2).mean()
            loss.backward()
            opt.step()
            return float(loss.detach())

        tr.run(step, lambda e: [x], epochs, checkpoint=work / "net.ckpt", state={"net": net, "opt": opt},
               fingerprint="tiny")
    return trainer


def test_a_finished_training_deletes_its_checkpoint_unless_asked_to_keep_it(tmp_path, monkeypatch):
    monkeypatch.delenv("STETHO_KEEP_CHECKPOINTS", raising=False)
    _tiny_training(tmp_path / "a")
    assert not (tmp_path / "a" / "net.ckpt").exists()
    assert not keep_checkpoints_requested()
    with keeping_checkpoints():
        assert keep_checkpoints_requested()
        _tiny_training(tmp_path / "b")
    assert not keep_checkpoints_requested()
    blob = torch.load(tmp_path / "b" / "net.ckpt", weights_only=True)
    assert blob["epoch"] == blob["epochs"] == 3  # the last epoch's checkpoint, the only file
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["net.ckpt"]
    # a longer training of the same settings resumes from the kept checkpoint
    trainer = _tiny_training(tmp_path / "b", epochs=5)
    assert trainer.resumed_[tmp_path / "b" / "net.ckpt"] == 3
    assert not (tmp_path / "b" / "net.ckpt").exists()
    monkeypatch.setenv("STETHO_KEEP_CHECKPOINTS", "1")
    _tiny_training(tmp_path / "c")
    assert (tmp_path / "c" / "net.ckpt").is_file()


def test_stetho_train_keeps_checkpoints_only_with_keep_checkpoints(tmp_path, monkeypatch):
    monkeypatch.delenv("STETHO_KEEP_CHECKPOINTS", raising=False)
    data = tmp_path / "data"
    make_toy_dataset(data, machines=["fan"], train_clips=8, target_train_clips=2, test_clips=2, duration=1.0,
                     seed=0)
    common = ["-q", "train", "--data", str(data), "--model", "ae", "--epochs", "2", "--no-progress", "--no-cache"]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert not list((tmp_path / "plain").rglob("*.ckpt"))
    assert main([*common, "--out", str(tmp_path / "kept"), "--keep-checkpoints"]) == 0
    kept = list((tmp_path / "kept").rglob("*.ckpt"))
    assert [p.relative_to(tmp_path / "kept").as_posix() for p in kept] == ["work/ae_fan.ckpt"]
    assert torch.load(kept[0], weights_only=True)["epoch"] == 2
    # the finished run is an ordinary one: tested as usual
    assert main(["-q", "test", "--run", str(tmp_path / "kept"), "--no-progress", "--no-cache"]) == 0
    assert (tmp_path / "kept" / "summary.csv").is_file()
