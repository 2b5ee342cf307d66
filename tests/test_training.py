"""The one training loop (stetho/models/training.py): RNG handling, resume, progress, threads."""

from __future__ import annotations

import logging
import math
import random

import numpy as np
import pytest
import torch

from stetho.models import training
from stetho.models.training import (
    BestState, Trainer, default_threads, fingerprint, fork_global_rngs, make_generator, make_rng,
    resolve_threads, run_epochs, torch_fork_rng, training_settings, use_threads,
)

EPOCHS = 6
DIM = 8


def _global_states():
    return torch.get_rng_state().clone(), np.random.get_state(), random.getstate()


def _assert_same_global(before) -> None:
    t, n, p = before
    assert torch.equal(torch.get_rng_state(), t)
    now = np.random.get_state()
    assert now[0] == n[0] and np.array_equal(now[1], n[1]) and now[2:] == n[2:]
    assert random.getstate() == p


class Crash(RuntimeError):
    pass


def _train(tmp_path, *, crash_at: int | None = None, every: int = 1, hidden: int = 16, lr: float = 1e-2,
           ckpt: bool = True, keep: bool = False, stop=None):
    """A tiny net with dropout (global RNG), shuffles (the trainer's generator), input noise (the
    trainer's NumPy rng), a scheduler, a BestState and a dict of extra state. ``crash_at``: the
    per-epoch callback raises at that epoch, before its checkpoint is written."""
    data = torch.from_numpy(np.random.default_rng(0).normal(size=(96, DIM)).astype(np.float32))
    trainer = Trainer(7, device="cpu", threads=1, checkpoint_every=every, keep_checkpoints=keep, log_interval=0)
    with trainer as tr:
        net = torch.nn.Sequential(torch.nn.Linear(DIM, hidden), torch.nn.BatchNorm1d(hidden), torch.nn.ReLU(),
                                  torch.nn.Dropout(0.3), torch.nn.Linear(hidden, DIM))
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        best = BestState(net)
        extra = {"steps": 0, "snapshots": {}, "noise_sum": np.zeros(DIM)}
        net.train()

        def batches(epoch):
            order = torch.randperm(len(data), generator=tr.generator)
            for s in range(0, len(data), 16):
                yield data[order[s:s + 16]]

        def step(x):
            noise = torch.from_numpy(tr.rng.normal(scale=0.1, size=x.shape).astype(np.float32))
            loss = torch.nn.functional.mse_loss(net(x + noise), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            extra["steps"] += 1
            extra["noise_sum"] = extra["noise_sum"] + noise.numpy().sum(0)
            return float(loss.detach())

        def validate():
            net.eval()
            with torch.no_grad():
                v = float(torch.nn.functional.mse_loss(net(data[:32]), data[:32]))
            net.train()
            return v

        def on_epoch(epoch, hist):
            if crash_at is not None and epoch == crash_at:
                raise Crash(f"crash at epoch {epoch}")
            sched.step()
            best.update(epoch, hist["val_loss"][-1])
            hist.setdefault("lr", []).append(opt.param_groups[0]["lr"])
            if epoch in (2, 5):
                extra["snapshots"][str(epoch)] = {k: v.clone() for k, v in net.state_dict().items()}

        history = tr.run(step, batches, EPOCHS, evaluate=validate, on_epoch=on_epoch, desc="tiny epochs",
                         checkpoint=tmp_path / "tiny.ckpt" if ckpt else None,
                         state={"net": net, "opt": opt, "sched": sched, "best": best, "extra": extra},
                         fingerprint={"lr": lr, "data": data}, stop=stop)
        after = tr.generator.get_state(), tr.rng.bit_generator.state, torch.rand(3)
    return trainer, net, history, best, extra, after


def _assert_same_training(a, b) -> None:
    _, net_a, hist_a, best_a, extra_a, after_a = a
    _, net_b, hist_b, best_b, extra_b, after_b = b
    for (k, va), (_, vb) in zip(net_a.state_dict().items(), net_b.state_dict().items()):
        assert torch.equal(va, vb), k
    assert hist_a == hist_b
    assert best_a.epoch == best_b.epoch and best_a.value == best_b.value
    assert all(torch.equal(best_a._state[k], best_b._state[k]) for k in best_a._state)
    assert extra_a["steps"] == extra_b["steps"]
    assert np.array_equal(extra_a["noise_sum"], extra_b["noise_sum"])
    assert sorted(extra_a["snapshots"]) == sorted(extra_b["snapshots"]) == ["2", "5"]
    for e in extra_a["snapshots"]:
        assert all(torch.equal(extra_a["snapshots"][e][k], extra_b["snapshots"][e][k]) for k in extra_a["snapshots"][e])
    assert torch.equal(after_a[0], after_b[0]) and after_a[1] == after_b[1] and torch.equal(after_a[2], after_b[2])


# -- random numbers ------------------------------------------------------------------------------
def test_generators_and_forks_leave_the_global_rngs_alone():
    before = _global_states()
    g1, g2 = make_generator(3), make_generator(3)
    assert torch.equal(torch.rand(5, generator=g1), torch.rand(5, generator=g2))
    assert make_rng(3).normal() == make_rng(3).normal()
    with torch_fork_rng(11):
        a = torch.nn.Linear(4, 3).weight.detach().clone()
    with torch_fork_rng(11):
        b = torch.nn.Linear(4, 3).weight.detach().clone()
    with fork_global_rngs(12):
        c = torch.nn.Linear(4, 3).weight.detach().clone()
        np_draw, py_draw = np.random.rand(), random.random()
    with fork_global_rngs(12):
        assert np.random.rand() == np_draw and random.random() == py_draw
    assert torch.equal(a, b) and not torch.equal(a, c)
    _assert_same_global(before)


def test_a_trainer_leaves_global_rngs_and_threads_as_they_were(tmp_path):
    threads = torch.get_num_threads()
    before = _global_states()
    _train(tmp_path)
    _assert_same_global(before)
    assert torch.get_num_threads() == threads


def test_the_same_seed_gives_the_same_training(tmp_path):
    _assert_same_training(_train(tmp_path / "a", ckpt=False), _train(tmp_path / "b"))


# -- checkpoints and resume ----------------------------------------------------------------------
@pytest.mark.parametrize(("every", "crash_at", "resumed_after"), [(1, 4, 3), (2, 4, 2), (2, 3, 2), (1, 2, 1)])
def test_resumed_training_is_bit_identical(tmp_path, every, crash_at, resumed_after):
    straight = _train(tmp_path / "straight", ckpt=False)
    with pytest.raises(Crash):
        _train(tmp_path / "resumed", crash_at=crash_at, every=every)
    path = tmp_path / "resumed" / "tiny.ckpt"
    assert path.exists()  # an exception keeps the checkpoint
    resumed = _train(tmp_path / "resumed", every=every)
    assert resumed[0].resumed_[path] == resumed_after
    _assert_same_training(straight, resumed)
    assert resumed[2]["epoch"] == list(range(1, EPOCHS + 1))
    assert not path.exists()  # deleted once the fit ended


def test_a_stop_request_ends_after_a_checkpoint_and_the_next_run_resumes_bit_identically(tmp_path):
    from stetho.models.training import TrainingStopped

    straight = _train(tmp_path / "straight", ckpt=False)
    asked = []

    def stop():  # a time budget that runs out once three epochs are done
        asked.append(1)
        return len(asked) >= 3
    with pytest.raises(TrainingStopped, match=r"tiny epochs: stopped after epoch 3 of 6 \(time budget\)") as err:
        _train(tmp_path / "b", stop=stop)
    assert (err.value.epoch, err.value.epochs) == (3, EPOCHS) and len(asked) == 3  # not asked before epoch 1
    resumed = _train(tmp_path / "b")
    assert resumed[0].resumed_[tmp_path / "b" / "tiny.ckpt"] == 3
    _assert_same_training(straight, resumed)


def test_a_finished_checkpoint_is_restored_without_training(tmp_path, caplog):
    first = _train(tmp_path, keep=True)
    assert (tmp_path / "tiny.ckpt").exists()
    with caplog.at_level(logging.INFO, logger="stetho.models.training"):
        again = _train(tmp_path)
    assert again[0].resumed_[tmp_path / "tiny.ckpt"] == EPOCHS
    assert "resuming after epoch 6 of 6" in caplog.text
    assert "epoch 1/6" not in caplog.text  # nothing trained
    _assert_same_training(first, again)


@pytest.mark.parametrize("change", [{"lr": 2e-2}, {"hidden": 12}])
def test_a_checkpoint_of_other_settings_is_never_resumed(tmp_path, caplog, change):
    with pytest.raises(Crash):
        _train(tmp_path, crash_at=4)
    with caplog.at_level(logging.WARNING, logger="stetho.models.training"):
        fresh = _train(tmp_path, **change)
    assert "other settings" in caplog.text
    assert fresh[0].resumed_[tmp_path / "tiny.ckpt"] == 0
    assert fresh[2]["epoch"] == list(range(1, EPOCHS + 1))
    _assert_same_training(fresh, _train(tmp_path / "straight", ckpt=False, **change))


def test_an_unreadable_checkpoint_is_a_warning_and_a_fresh_start(tmp_path, caplog):
    (tmp_path / "tiny.ckpt").write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING, logger="stetho.models.training"):
        result = _train(tmp_path)
    assert "unreadable" in caplog.text
    _assert_same_training(result, _train(tmp_path / "straight", ckpt=False))


def test_state_without_a_state_is_refused_before_training(tmp_path):
    with pytest.raises(TypeError, match="'thing'"):
        Trainer(0, threads=1).run(lambda b: 0.0, lambda e: [1], 1, checkpoint=tmp_path / "x.ckpt",
                                  state={"thing": object()})


# -- progress and errors -------------------------------------------------------------------------
def _quiet_run(epochs, evaluate=None, progress=False, log_interval=0.0, losses=None):
    losses = losses or {}
    return run_epochs(lambda b: losses.get(b, 0.5), evaluate, lambda e: [e + 1, e + 1], epochs, progress=progress,
                      desc="AE epochs", log_interval=log_interval)


@pytest.mark.parametrize("progress", [True, False])
def test_one_log_line_per_epoch_when_stderr_is_not_a_terminal(monkeypatch, caplog, progress):
    monkeypatch.setattr(training, "_stderr_is_terminal", lambda: False)
    with caplog.at_level(logging.INFO, logger="stetho.models.training"):
        _quiet_run(5, progress=progress)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5
    assert lines[2].startswith("AE epochs: epoch 3/5 loss 0.5 ") and lines[2].endswith(" s")
    assert not any("nan" in line.lower() or "val" in line for line in lines)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="stetho.models.training"):
        _quiet_run(3, evaluate=lambda: 0.25, progress=progress)
    assert all("(val 0.25)" in r.getMessage() for r in caplog.records) and len(caplog.records) == 3


def test_log_lines_are_rate_limited_but_show_the_first_and_last_epoch(monkeypatch, caplog):
    monkeypatch.setattr(training, "_stderr_is_terminal", lambda: False)
    with caplog.at_level(logging.INFO, logger="stetho.models.training"):
        _quiet_run(50, log_interval=3600)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" loss")[0] for line in lines] == ["AE epochs: epoch 1/50", "AE epochs: epoch 50/50"]


def test_a_bar_and_no_log_lines_on_a_terminal(monkeypatch, caplog):
    monkeypatch.setattr(training, "_stderr_is_terminal", lambda: True)
    with caplog.at_level(logging.INFO, logger="stetho.models.training"):
        _quiet_run(3, progress=True)
    assert not caplog.records


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_loss_raises(bad):
    with pytest.raises(FloatingPointError, match="epoch 2, step 1"):
        _quiet_run(4, losses={2: bad})


def test_run_epochs_keeps_its_older_contract():
    seen = []
    hist = run_epochs(lambda b: 1.0, None, lambda e: [0], 3, checkpoint=lambda e, h: seen.append(e))
    assert seen == [1, 2, 3] and hist["epoch"] == [1, 2, 3] and hist["train_loss"] == [1.0] * 3
    assert all(math.isnan(v) for v in hist["val_loss"])


# -- fingerprints --------------------------------------------------------------------------------
def test_fingerprint_digests_content_not_identity():
    a = np.arange(6.0)
    assert fingerprint({"x": 1, "y": [a]}) == fingerprint({"y": [a.copy()], "x": 1})
    assert fingerprint({"x": 1}) != fingerprint({"x": 1.0}) != fingerprint({"x": "1"})
    assert fingerprint(a) != fingerprint(a.reshape(2, 3)) != fingerprint(a.astype(np.float32))
    assert fingerprint(torch.ones(3)) == fingerprint(np.ones(3, dtype=np.float32))
    with pytest.raises(TypeError):
        fingerprint(object())


# -- threads -------------------------------------------------------------------------------------
def test_threads_default_and_context(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [default_threads(c) for c in (1, 2, 3, 4, 8, 64)] == [1, 1, 1, 2, 4, 4]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads(2) == 3 and resolve_threads(None) == 3 and resolve_threads("auto") == 3
    assert resolve_threads(2) == 2
    for bad in (0, -1, 1.5, "two", True):
        with pytest.raises(ValueError):
            resolve_threads(bad)
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with use_threads(target) as n:
        assert n == target == torch.get_num_threads()
    assert torch.get_num_threads() == before


def test_training_settings_leave_out_what_does_not_change_the_result():
    params = {"epochs": 5, "lr": 1e-3, "progress": True, "threads": 2, "device": "cpu", "resume": True}
    assert training_settings(params) == {"epochs": 5, "lr": 1e-3}
    assert fingerprint(training_settings(params)) == fingerprint(training_settings({**params, "progress": False}))


def test_threads_option_in_config_and_cli():
    from stetho.cli import build_parser
    from stetho.config import resolve
    from stetho.errors import ConfigError

    assert resolve()["threads"] == "auto" and resolve({"threads": 3})["threads"] == 3
    for bad in (0, -2, 1.5, "many", True):
        with pytest.raises(ConfigError, match="threads"):
            resolve({"threads": bad})
    parser = build_parser()
    assert parser.parse_args(["train", "--data", "d", "--out", "o", "--threads", "2"]).threads == 2
    assert parser.parse_args(["test", "--run", "r", "--threads", "auto"]).threads == "auto"
    assert parser.parse_args(["run", "recipe.yaml", "--threads", "1"]).threads == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--data", "d", "--out", "o", "--threads", "0"])
