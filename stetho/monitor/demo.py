"""The monitoring demo behind ``stetho demo-monitor`` / ``make demo-monitor``: a simulated day of
three machines, one of which develops a fault at mid-day, run through the real service and watcher.

What :func:`run_demo` does, each step with the same commands a plant engineer would use:

1. writes a toy training set of healthy pumps (:func:`stetho.synth.make_toy_dataset`) and trains a
   ``stats`` run on it (:func:`stetho.pipeline.train`);
2. renders a day of recordings per asset (:func:`plan_day`, :func:`render_recording`), one every
   ``interval_minutes``: each asset runs at its own operating point with its own random stream; the
   faulty asset's recordings are normal until mid-day and carry the fault after it (its level drawn
   per recording over the synthesiser's range, so some faulty recordings are nearly inaudible);
3. starts ``stetho serve`` (127.0.0.1, a free port, an SQLite database and a token file in the demo
   folder) and ``stetho watch INBOX`` on the same database, as subprocesses;
4. feeds the day in time order: assets with ``via="http"`` are uploaded (``POST /v1/score`` with
   ``recorded_at`` = the simulated time), assets with ``via="inbox"`` are dropped into
   ``INBOX/<asset>/`` as ``*.wav.part``, given the simulated time as their modification time and
   renamed to ``*.wav`` (the watcher takes a file's modification time as its recording time, as a
   recorder copying with ``rsync -t`` or ``cp -p`` keeps it);
5. waits until every recording is stored, reads the verdicts and alerts back over HTTP
   (``GET /v1/assets/<asset>/verdicts``, ``GET /v1/alerts``) and stops both processes.

:func:`format_demo` turns the :class:`DemoResult` into the text the command prints.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from stetho.errors import ConfigError, StethoError

log = logging.getLogger(__name__)

#: How an asset's recordings reach stetho: uploaded to the service, or dropped into the inbox.
VIA = ("http", "inbox")

#: The folders and files :func:`run_demo` owns in its work folder (replaced on every run).
OWNED = ("train_data", "run", "recordings", "inbox", "monitor.db", "api-token", "serve.log", "watch.log")


@dataclass(frozen=True)
class DemoAsset:
    """One machine of the demo.

    Attributes:
        name: the asset id (its name in the database, its folder in the inbox).
        machine_type: a toy machine type (:data:`stetho.synth.MACHINES`).
        attributes: its operating point, ``(name, value)`` pairs of the machine type's source domain.
        via: ``"http"`` (uploaded to the service) or ``"inbox"`` (dropped for the watcher).
        fault: the fault kind that appears at mid-day, or ``None`` for a healthy machine.
    """

    name: str
    machine_type: str
    attributes: tuple[tuple[str, str], ...]
    via: str
    fault: str | None = None


#: The default plant: three pumps at different operating points; pump-3 (in the inbox) starts to
#: cavitate at mid-day. Cavitation is a fault the ``stats`` run separates on the toy pump (about
#: 3 in 4 faulty 2-s recordings flagged at a 10 % calibrated false-alarm rate).
DEFAULT_ASSETS: tuple[DemoAsset, ...] = (
    DemoAsset("pump-1", "pump", (("spd", "24"), ("pres", "1")), "http"),
    DemoAsset("pump-2", "pump", (("spd", "29"), ("pres", "2")), "http"),
    DemoAsset("pump-3", "pump", (("spd", "24"), ("pres", "3")), "inbox", fault="cavitation"),
)

#: Midnight (UTC) of the simulated day.
DEFAULT_DAY = datetime(2026, 3, 2, tzinfo=timezone.utc)


@dataclass(frozen=True)
class DemoRecording:
    """One planned recording: ``faulty`` says whether the asset's fault is in it."""

    asset: DemoAsset
    index: int
    recorded_at: datetime
    faulty: bool

    @property
    def file_name(self) -> str:
        """``<asset>_<YYYYmmddTHHMMSSZ>.wav``: sorts by time, as recorders name their files."""
        return f"{self.asset.name}_{self.recorded_at.strftime('%Y%m%dT%H%M%SZ')}.wav"


@dataclass
class AssetReport:
    """What the database holds for one asset after the demo (read back over HTTP).

    ``anomalous``: recordings whose default score mode's decision is anomalous;
    ``first_anomalous``: the recording time of the first of them; ``recording_ids``: distinct ids.
    """

    name: str
    via: str
    fault: str | None
    fault_from: datetime | None
    fed: int
    recordings: int
    distinct_sha256: int
    anomalous: int
    first_anomalous: datetime | None
    verdict_rows: int = 0


@dataclass
class DemoAlert:
    """One alert the demo raised: ``first_recording`` / ``last_recording`` are the recording times
    of the earliest and newest recording that triggered it (the newest is when, in the simulated
    day, it would have gone off)."""

    id: int
    asset: str
    rule: str
    score_mode: str
    message: str
    first_recording: datetime
    last_recording: datetime


@dataclass
class DemoResult:
    """The outcome of :func:`run_demo`."""

    workdir: Path
    db_url: str
    run_dir: Path
    inbox: Path
    token_file: Path
    port: int
    default_mode: str
    day_start: datetime
    midday: datetime
    interval_minutes: float
    assets: list[AssetReport]
    alerts: list[DemoAlert]
    rejections: int
    seconds: dict[str, float] = field(default_factory=dict)


# -------------------------------------------------------------------------------------------------
# The day's recordings


def plan_day(assets: Sequence[DemoAsset], recordings_per_asset: int, interval_minutes: float = 30.0,
             day_start: datetime = DEFAULT_DAY) -> list[DemoRecording]:
    """Every asset's recordings of the day, in time order (assets in their given order per slot).

    Recording ``i`` of an asset is taken at ``day_start + i * interval_minutes``; the faulty
    assets' recordings from index ``recordings_per_asset // 2`` on carry their fault.
    """
    if isinstance(recordings_per_asset, bool) or not isinstance(recordings_per_asset, int) \
            or recordings_per_asset < 2:
        raise ConfigError(f"recordings_per_asset must be an integer of at least 2, got {recordings_per_asset!r}")
    if not interval_minutes > 0:
        raise ConfigError(f"interval_minutes must be above 0, got {interval_minutes!r}")
    if day_start.utcoffset() is None:
        raise ConfigError(f"day_start {day_start.isoformat()} has no UTC offset")
    half = recordings_per_asset // 2
    return [DemoRecording(a, i, day_start + timedelta(minutes=i * interval_minutes), a.fault is not None and i >= half)
            for i in range(recordings_per_asset) for a in assets]


def render_recording(rec: DemoRecording, duration: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """The audio of one planned recording (float32, ``(round(duration * sr),)``), source domain.

    Each (seed, asset, index) has its own generator, so an asset's day does not depend on the
    other assets and differs from every clip of the toy training set (seeded by split and label)."""
    from stetho.synth import synthesize_clip

    ss = np.random.SeedSequence([seed, zlib.crc32(b"demo-monitor"), zlib.crc32(rec.asset.name.encode()), rec.index])
    return synthesize_clip(rec.asset.machine_type, "source", rec.asset.fault if rec.faulty else None,
                           dict(rec.asset.attributes), duration, sr, np.random.default_rng(ss))


def check_assets(assets: Sequence[DemoAsset]) -> None:
    """:class:`ConfigError` for a duplicate name, an unknown ``via``, machine type, attribute or fault."""
    from stetho.synth import MACHINES

    if not assets:
        raise ConfigError("the demo needs at least one asset")
    names = [a.name for a in assets]
    if len(set(names)) != len(names):
        raise ConfigError(f"asset names must be unique, got {names}")
    for a in assets:
        if a.via not in VIA:
            raise ConfigError(f"asset {a.name}: via must be one of {', '.join(VIA)}, got {a.via!r}")
        if a.machine_type not in MACHINES:
            raise ConfigError(f"asset {a.name}: unknown machine type {a.machine_type!r}; known: {', '.join(MACHINES)}")
        mtype = MACHINES[a.machine_type]
        if a.fault is not None and a.fault not in mtype.anomalies:
            raise ConfigError(f"asset {a.name}: {a.machine_type} has no fault {a.fault!r}; "
                              f"one of {', '.join(mtype.anomalies)}")
        if tuple(a.attributes) not in mtype.combinations("source"):
            raise ConfigError(f"asset {a.name}: {dict(a.attributes)} is not a source operating point of "
                              f"{a.machine_type}: {[dict(c) for c in mtype.combinations('source')]}")


# -------------------------------------------------------------------------------------------------
# The processes


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stetho_command(*args: str) -> list[str]:
    """``stetho ARGS`` run by this Python (so the demo works from any venv without PATH)."""
    return [sys.executable, "-m", "stetho.cli", *args]


def _start(args: list[str], log_file: Path) -> subprocess.Popen:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # two scoring processes share the machine
    with open(log_file, "wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(proc: subprocess.Popen | None, sig: int, what: str, timeout: float = 15.0) -> None:
    """Ask ``proc`` to stop with ``sig`` (it shuts down cleanly on it), kill it after ``timeout`` s."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop within %.0f s of signal %d; killing it", what, timeout, sig)
        proc.kill()
        proc.wait()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _Client:
    """The few HTTP calls the demo makes to the service (standard library only)."""

    def __init__(self, base: str, token: str, timeout: float = 30.0) -> None:
        self.base, self.token, self.timeout = base, token, timeout

    def get(self, path: str, **query: Any) -> Any:
        url = f"{self.base}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        with urllib.request.urlopen(url, timeout=self.timeout) as resp:
            return json.loads(resp.read())

    def score(self, data: bytes, **query: Any) -> dict:
        url = f"{self.base}/v1/score?{urllib.parse.urlencode(query)}"
        req = urllib.request.Request(url, data=data, method="POST", headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "audio/wav"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise StethoError(f"POST {url}: HTTP {exc.code} {exc.read().decode(errors='replace')}") from None


def _wait_healthy(client: _Client, proc: subprocess.Popen, log_file: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise StethoError(f"stetho serve exited with status {proc.returncode}; its log {log_file} ends:\n"
                              f"{_tail(log_file)}")
        try:
            client.get("/healthz")
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() > deadline:
            raise StethoError(f"stetho serve did not answer /healthz within {timeout:.0f} s; see {log_file}")
        time.sleep(0.2)


# -------------------------------------------------------------------------------------------------
# The demo


def run_demo(workdir: str | Path, *, assets: Sequence[DemoAsset] = DEFAULT_ASSETS, recordings_per_asset: int = 48,
             interval_minutes: float = 30.0, duration: float = 4.0, seed: int = 0, port: int = 0,
             train_clips: int = 60, alert_k: int = 3, alert_n: int = 5, day_start: datetime = DEFAULT_DAY,
             timeout: float = 120.0, score_mode: str = "mahalanobis") -> DemoResult:
    """Train on toy data, run ``stetho serve`` and ``stetho watch``, feed a simulated day, read back
    what was stored (see the module docstring).

    Args:
        workdir: the demo folder (created); what the demo wrote there before (:data:`OWNED`) is replaced.
        assets: the machines (:data:`DEFAULT_ASSETS`: three pumps, pump-3 faulty from mid-day).
        recordings_per_asset: recordings of each asset over the day (48: one every 30 min).
        interval_minutes: simulated minutes between an asset's recordings.
        duration: length of every recording (and training clip) in seconds.
        seed: seed of the training set and of the day's recordings.
        port: the service's port on 127.0.0.1 (0: a free one).
        train_clips: healthy source-domain training clips per machine type.
        alert_k, alert_n: the alert rule: ``k`` of the last ``n`` recordings anomalous.
        score_mode: the ``stats`` run's own score mode, the one the alert rules watch
            (``mahalanobis``: the best ``stats`` mode on the real recordings of README
            "Leaderboard"; over 12 seeds of this day, alerting on it, no healthy pump alarmed and
            pump-3 alarmed every time, while ``density`` alarmed on a healthy pump on 3 days).
        day_start: when the simulated day starts (timezone-aware).
        timeout: seconds to wait for the service to start and for every recording to be stored.

    Raises:
        ConfigError: a bad argument. StethoError: a process that failed (its log's end included).
    """
    from stetho import pipeline
    from stetho.audio.io import write_wav
    from stetho.synth import make_toy_dataset

    assets = list(assets)
    check_assets(assets)
    plan = plan_day(assets, recordings_per_asset, interval_minutes, day_start)
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for name in OWNED:
        p = workdir / name
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()

    machines = sorted({a.machine_type for a in assets})
    log.info("1/5 training a stats run on %d healthy toy clips per machine type (%s)", train_clips, ", ".join(machines))
    make_toy_dataset(workdir / "train_data", machines=machines, train_clips=train_clips, target_train_clips=4,
                     test_clips=0, duration=duration, seed=seed)
    run_dir = pipeline.train({"data": str(workdir / "train_data"), "out": str(workdir / "run"), "model": "stats",
                              "params": {"score_mode": score_mode}, "progress": False, "cache": False})
    seconds["train"] = time.perf_counter() - t0

    t = time.perf_counter()
    log.info("2/5 rendering %d recordings (%d per asset, one every %g min)", len(plan), recordings_per_asset,
             interval_minutes)
    sr = 16000
    files: dict[tuple[str, int], Path] = {}
    for rec in plan:
        path = workdir / "recordings" / rec.asset.name / rec.file_name
        write_wav(path, render_recording(rec, duration, sr, seed), sr)
        files[(rec.asset.name, rec.index)] = path
    seconds["render"] = time.perf_counter() - t

    db_url = f"sqlite:///{workdir / 'monitor.db'}"
    token_file = workdir / "api-token"
    token_file.write_text(secrets.token_hex(24) + "\n", encoding="utf-8")
    os.chmod(token_file, 0o600)
    inbox = workdir / "inbox"
    for a in assets:
        if a.via == "inbox":
            (inbox / a.name).mkdir(parents=True, exist_ok=True)
            (inbox / a.name / "machine_type").write_text(a.machine_type + "\n", encoding="utf-8")
    inbox.mkdir(exist_ok=True)
    port = port or free_port()
    alert_opts = ["--alert-k", str(alert_k), "--alert-n", str(alert_n)]
    server = watcher = None
    try:
        t = time.perf_counter()
        log.info("3/5 starting stetho serve on http://127.0.0.1:%d and stetho watch %s (database %s)", port, inbox, db_url)
        # the service first: it creates the database (migrations) before the watcher opens it
        server = _start(_stetho_command("serve", str(run_dir), "--db", db_url, "--port", str(port),
                                        "--token-file", str(token_file), *alert_opts), workdir / "serve.log")
        client = _Client(f"http://127.0.0.1:{port}", token_file.read_text(encoding="utf-8").strip())
        _wait_healthy(client, server, workdir / "serve.log", timeout)
        watcher = _start(_stetho_command("watch", str(inbox), "--run", str(run_dir), "--db", db_url,
                                         "--poll", "0.2", *alert_opts), workdir / "watch.log")
        seconds["start"] = time.perf_counter() - t

        t = time.perf_counter()
        log.info("4/5 feeding the day: %s", ", ".join(f"{a.name} via {a.via}" for a in assets))
        for rec in plan:
            src = files[(rec.asset.name, rec.index)]
            if rec.asset.via == "http":
                client.score(src.read_bytes(), asset=rec.asset.name, machine_type=rec.asset.machine_type,
                             attributes=json.dumps(dict(rec.asset.attributes)),
                             recorded_at=rec.recorded_at.isoformat(), filename=rec.file_name)
            else:
                _drop(src, inbox / rec.asset.name / rec.file_name, rec.recorded_at)
            if watcher.poll() is not None:
                raise StethoError(f"stetho watch exited with status {watcher.returncode}; its log "
                                  f"{workdir / 'watch.log'} ends:\n{_tail(workdir / 'watch.log')}")
        seconds["feed"] = time.perf_counter() - t

        t = time.perf_counter()
        log.info("5/5 waiting until all %d recordings are stored", len(plan))
        expected = {a.name: recordings_per_asset for a in assets}
        deadline = time.monotonic() + timeout
        while True:
            stored = {row["name"]: row["recordings"] for row in client.get("/v1/assets")}
            if all(stored.get(k, 0) >= v for k, v in expected.items()):
                break
            if watcher.poll() is not None or time.monotonic() > deadline:
                raise StethoError(f"only {stored} of {expected} recordings were stored; see {workdir / 'watch.log'}:\n"
                                  f"{_tail(workdir / 'watch.log')}")
            time.sleep(0.2)
        seconds["wait"] = time.perf_counter() - t
        default_mode = _default_mode(run_dir)
        summaries, alerts = _read_back(client, assets, plan, default_mode)
    finally:
        _stop(watcher, signal.SIGTERM, "stetho watch")
        _stop(server, signal.SIGINT, "stetho serve")
    from stetho.monitor.db import open_database

    with open_database(db_url) as db:  # rejections have no endpoint: read them from the database
        rejections = len(db.rejections())
    seconds["total"] = time.perf_counter() - t0
    half = plan_day(assets[:1], recordings_per_asset, interval_minutes, day_start)[recordings_per_asset // 2]
    return DemoResult(workdir=workdir, db_url=db_url, run_dir=Path(run_dir), inbox=inbox, token_file=token_file,
                      port=port, default_mode=default_mode, day_start=day_start, midday=half.recorded_at,
                      interval_minutes=interval_minutes, assets=summaries, alerts=alerts, rejections=rejections,
                      seconds=seconds)


def _drop(src: Path, target: Path, recorded_at: datetime) -> None:
    """Put ``src`` into the inbox as a recorder should: ``target.part`` first, its modification time
    set to the recording time, then renamed to ``target`` (a rename keeps the time)."""
    part = target.with_name(target.name + ".part")
    shutil.copyfile(src, part)
    stamp = recorded_at.timestamp()
    os.utime(part, (stamp, stamp))
    os.replace(part, target)


def _default_mode(run_dir: str | Path) -> str:
    """The run's own score mode (what a verdict's ``anomalous`` is decided by)."""
    from stetho.monitor.scoring import Scorer

    scorer = Scorer.load(run_dir)
    return scorer.default_mode(scorer.machine_types[0])


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)


def _read_back(client: _Client, assets: Sequence[DemoAsset], plan: Sequence[DemoRecording],
               default_mode: str) -> tuple[list[AssetReport], list[DemoAlert]]:
    """Per-asset summaries from ``GET /v1/assets/<asset>/verdicts`` and the alerts of ``GET /v1/alerts``
    (oldest first), each alert with the times of the recordings that triggered it."""
    summaries, time_of = [], {}
    for a in assets:
        fed = [r for r in plan if r.asset.name == a.name]
        rows = client.get(f"/v1/assets/{urllib.parse.quote(a.name)}/verdicts", limit=10_000)
        for r in rows:
            time_of[r["recording_id"]] = _when(r["recorded_at"])
        mine = sorted((r for r in rows if r["score_mode"] == default_mode), key=lambda r: r["recorded_at"])
        flagged = [_when(r["recorded_at"]) for r in mine if r["decision"]]
        onset = next((r.recorded_at for r in fed if r.faulty), None)
        summaries.append(AssetReport(
            name=a.name, via=a.via, fault=a.fault, fault_from=onset, fed=len(fed),
            recordings=len({r["recording_id"] for r in rows}), distinct_sha256=len({r["sha256"] for r in rows}),
            anomalous=len(flagged), first_anomalous=min(flagged, default=None), verdict_rows=len(rows)))
    alerts = []
    for row in sorted(client.get("/v1/alerts"), key=lambda r: r["id"]):
        times = [time_of[i] for i in row["recording_ids"] if i in time_of]
        alerts.append(DemoAlert(id=row["id"], asset=row["asset"], rule=row["rule"], score_mode=row["score_mode"],
                                message=row["message"], first_recording=min(times), last_recording=max(times)))
    return summaries, alerts


def format_demo(result: DemoResult) -> str:
    """The text ``stetho demo-monitor`` prints: per asset, the alerts, where the database is and how
    to query it."""
    hm = "%H:%M"
    lines = [f"A simulated day ({result.day_start:%Y-%m-%d}, UTC), one recording every "
             f"{result.interval_minutes:g} min per asset; anomalous = the '{result.default_mode}' decision.", ""]
    lines.append(f"{'asset':<10} {'fed via':<8} {'fault':<22} {'stored':>6} {'anomalous':>9}  first anomalous")
    for s in result.assets:
        fault = f"{s.fault} from {s.fault_from:{hm}}" if s.fault else "healthy"
        first = f"{s.first_anomalous:{hm}}" if s.first_anomalous else "-"
        lines.append(f"{s.name:<10} {s.via:<8} {fault:<22} {s.recordings:>6} {s.anomalous:>9}  {first}")
    lines += ["", f"Alerts raised: {len(result.alerts)}"]
    for a in result.alerts:
        lines.append(f"  #{a.id} {a.asset} {a.rule} ({a.score_mode}) at {a.last_recording:{hm}} "
                     f"[recordings {a.first_recording:{hm}}-{a.last_recording:{hm}}]: {a.message}")
    if result.rejections:
        lines.append(f"Rejected files: {result.rejections}")
    port = 8000
    lines += [
        "",
        f"Database: {result.db_url}  (run: {result.run_dir}; inbox: {result.inbox})",
        f"Took {result.seconds.get('total', 0):.0f} s. Look at it in the dashboard (http://127.0.0.1:{port}/) "
        "or query it:",
        f"  stetho serve {result.run_dir} --db {result.db_url} --token-file {result.token_file} --port {port} &",
        f"  curl -s http://127.0.0.1:{port}/v1/assets",
        f"  curl -s 'http://127.0.0.1:{port}/v1/assets/{result.assets[-1].name}/verdicts?limit=5'",
        f"  curl -s 'http://127.0.0.1:{port}/v1/alerts?open=true'",
    ]
    return "\n".join(lines)


__all__ = ["DEFAULT_ASSETS", "DemoAlert", "DemoAsset", "DemoRecording", "DemoResult", "AssetReport", "check_assets",
           "format_demo", "plan_day", "render_recording", "run_demo"]
