"""`stetho demo-monitor` (stetho.monitor.demo) end to end, in a small configuration: a real toy
training set and stats run, real `stetho serve` and `stetho watch` subprocesses on one SQLite file;
what they stored is checked by reading the database directly, not through the demo's own read-back."""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest

from stetho import cli
from stetho.errors import ConfigError
from stetho.monitor.db import open_database
from stetho.monitor.demo import DEFAULT_ASSETS, DEFAULT_DAY, DemoAsset, check_assets, plan_day

N = 16  # recordings per asset: 8 healthy, then (pump-3) 8 with the fault


def test_plan_day_times_and_fault_onset():
    plan = plan_day(DEFAULT_ASSETS, 4, interval_minutes=30.0)
    assert len(plan) == 12
    assert [r.recorded_at for r in plan if r.asset.name == "pump-3"] == [
        DEFAULT_DAY + timedelta(minutes=30 * i) for i in range(4)]
    assert [r.faulty for r in plan if r.asset.name == "pump-3"] == [False, False, True, True]
    assert not any(r.faulty for r in plan if r.asset.fault is None)
    assert plan[0].file_name == "pump-1_20260302T000000Z.wav"


def test_check_assets_refuses_bad_plants():
    with pytest.raises(ConfigError, match="via"):
        check_assets([DemoAsset("a", "pump", (("spd", "24"), ("pres", "1")), "ftp")])
    with pytest.raises(ConfigError, match="no fault 'tooth'"):
        check_assets([DemoAsset("a", "pump", (("spd", "24"), ("pres", "1")), "http", fault="tooth")])
    with pytest.raises(ConfigError, match="source operating point"):
        check_assets([DemoAsset("a", "pump", (("spd", "34"), ("pres", "1")), "http")])
    with pytest.raises(ConfigError, match="unique"):
        check_assets([DEFAULT_ASSETS[0], DEFAULT_ASSETS[0]])


def test_demo_monitor_end_to_end(tmp_path, capsys):
    port = _free_port()
    assert cli.main(["demo-monitor", str(tmp_path / "demo"), "--recordings", str(N), "--duration", "4",
                     "--seed", "0", "--port", str(port)]) == 0
    out = capsys.readouterr().out
    midday = DEFAULT_DAY + timedelta(minutes=30 * (N // 2))
    planned = {a.name: {DEFAULT_DAY + timedelta(minutes=30 * i) for i in range(N)} for a in DEFAULT_ASSETS}

    with open_database(f"sqlite:///{tmp_path / 'demo' / 'monitor.db'}") as db:
        assets = {a.name: a for a in db.assets()}
        times = {}
        for a in DEFAULT_ASSETS:
            rows = db.verdicts(a.name, limit=10_000)
            # every fed recording stored exactly once, at its simulated time, by the path it was fed through
            assert assets[a.name].recordings == N
            assert len({r.recording_id for r in rows}) == N and len({r.sha256 for r in rows}) == N
            assert {r.recorded_at for r in rows} == planned[a.name]
            assert {r.source for r in rows} == {"watch" if a.via == "inbox" else "http"}
            times.update({r.recording_id: r.recorded_at for r in rows})
        alerts = db.alerts()
        assert not db.rejections()

    by_asset = {name: [al for al in alerts if al.asset == name] for name in planned}
    assert by_asset["pump-1"] == [] and by_asset["pump-2"] == []  # the healthy pumps: no alert
    faulty = by_asset["pump-3"]
    assert any(min(times[i] for i in al.recording_ids) >= midday for al in faulty)
    assert all(max(times[i] for i in al.recording_ids) >= midday for al in faulty)  # none before the fault

    # what it printed agrees with the database
    assert f"Alerts raised: {len(alerts)}" in out
    for al in alerts:
        assert al.message in out
    assert "pump-3     inbox    cavitation from 04:00" in out
    assert f"sqlite:///{tmp_path / 'demo' / 'monitor.db'}" in out and "curl -s" in out
    # both processes were stopped: the port is free again, and uvicorn shut down cleanly
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    assert "Finished server process" in (tmp_path / "demo" / "serve.log").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
