"""stetho.monitor.alerts: the k-of-n and drift rules over hand-made verdicts stored in real
databases (a SQLite file and a throw-away PostgreSQL server, tests/pg.py), and the webhook against
a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import socket
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stetho.errors import ConfigError
from stetho.monitor.alerts import AlertRules, Webhook, alert_payload
from stetho.monitor.db import AlertRow, RecordingFacts, RunFacts, open_database

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)
RUN = RunFacts(path="runs/pump", run_hash="old", stetho_version="0.2.0", model="stats")
RECALIBRATED = RunFacts(path="runs/pump2", run_hash="new", stetho_version="0.2.0", model="stats")


@pytest.fixture
def db(database_url):
    with open_database(database_url) as database:
        yield database


def store(db, i: int, score: float, threshold: float = 1.5, *, asset: str = "pump-7", run: RunFacts = RUN,
          minute: int | None = None) -> int:
    """Store recording ``i`` (recorded at T0 + ``minute`` (default i) minutes) with one ``mse``
    verdict whose decision is score > threshold, as the Scorer decides; its recording id."""
    facts = RecordingFacts(path=f"{asset}/{i:03d}.wav", sha256=f"{asset}{i:058d}"[-64:],
                           recorded_at=T0 + timedelta(minutes=i if minute is None else minute),
                           duration_s=10.0, sample_rate=16000, source="watch")
    return db.record(asset, "pump", facts, run, [("mse", score, threshold, score > threshold)]).recording_id


def feed(db, rules, scores, threshold=1.5, start=1, **kw) -> tuple[list[int], list[list[int]]]:
    """Store ``scores`` one by one, evaluating after each: recording ids and new alert ids per step."""
    ids, fired = [], []
    for i, s in enumerate(scores, start):
        ids.append(store(db, i, s, threshold, **kw))
        fired.append(rules.evaluate(db, "pump-7", "mse"))
    return ids, fired


def test_the_rules_watch_the_default_mode_all_modes_or_the_named_ones():
    from types import SimpleNamespace

    v = SimpleNamespace(modes={"density": 1, "knn": 2, "mahalanobis": 3}, default_mode="knn")
    assert AlertRules().modes_of(v) == ["knn"]
    assert AlertRules(modes="all").modes_of(v) == ["density", "knn", "mahalanobis"]
    assert AlertRules(modes=("mahalanobis", "gmm")).modes_of(v) == ["mahalanobis"]
    assert AlertRules().modes_of(SimpleNamespace(modes={"mse": 1, "maha": 2}, default_mode=None)) == ["mse"]
    for bad in ("every", ()):
        with pytest.raises(ConfigError, match="modes"):
            AlertRules(modes=bad)
    AlertRules(modes=("knn",)).check_modes(["density", "knn"])
    with pytest.raises(ConfigError, match=r"unknown score mode\(s\) knnn; the loaded models score density, knn"):
        AlertRules(modes=("knnn",)).check_modes(["knn", "density"])


def test_the_rules_validate_their_parameters():
    assert (AlertRules().k, AlertRules().n, AlertRules().drift_window) == (3, 5, 9)
    for bad, words in [(dict(k=0), "need 1 <= k <= n"), (dict(k=6, n=5), "k=6, n=5"),
                       (dict(drift_window=2), "drift_window=2")]:
        with pytest.raises(ConfigError, match=words):
            AlertRules(**bad)
    assert AlertRules(k=5, n=5, drift_window=3).k == 5


def test_k_of_n_fires_at_the_third_anomalous_of_five_once_and_again_after_ack(db):
    rules = AlertRules(k=3, n=5, drift_window=20)  # drift needs 20 verdicts: silent here
    #        N    A    N    A    N    A    A
    ids, fired = feed(db, rules, [1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 2.0])
    # after #5 the last five are N A N A N (2 anomalous); #6 makes A N A N A (3)
    assert [len(f) for f in fired] == [0, 0, 0, 0, 0, 1, 0]  # #7: the open alert is not repeated
    [alert] = db.alerts()
    assert alert.id == fired[5][0] and alert.rule == "k_of_n" and alert.acknowledged_at is None
    assert alert.recording_ids == (ids[1], ids[3], ids[5])
    assert alert.message == "3 of the last 5 recordings of pump-7 were anomalous (mse)"

    db.ack_alert(alert.id, "alice")
    assert rules.evaluate(db, "pump-7", "mse") == []  # the episode after #6 holds only #7 (1 anomalous)
    more, fired = feed(db, rules, [2.0, 2.0], start=8)
    # #7, #8, #9 are newer than #6, the acknowledged alert's last triggering recording
    assert [len(f) for f in fired] == [0, 1]
    second = db.alerts(ids=fired[1])[0]
    assert second.recording_ids == (ids[6], *more)
    assert second.message == "3 of the last 3 recordings of pump-7 were anomalous (mse)"
    assert [a.id for a in db.alerts(open_only=True)] == [second.id]
    store(db, 1, 2.0, asset="pump-8")  # another asset's verdicts count for that asset only
    assert rules.evaluate(db, "pump-8", "mse") == [] and rules.evaluate(db, "pump-7", "knn") == []


def test_a_rising_median_raises_drift_with_k_of_n_at_the_same_verdict(db):
    """With one threshold, a median of 5 above it means 3 of those 5 are above it too: both fire."""
    rules = AlertRules(k=3, n=5, drift_window=5)
    ids, fired = feed(db, rules, [1.0, 1.1, 1.2, 1.3, 1.4, 1.6, 1.7, 1.8])
    # medians of the full windows: #5 1.2, #6 1.3, #7 1.4, #8 median(1.3, 1.4, 1.6, 1.7, 1.8) = 1.6 > 1.5
    assert [len(f) for f in fired] == [0] * 7 + [2]
    by_rule = {a.rule: a for a in db.alerts(ids=fired[7])}
    k_of_n, drift = by_rule["k_of_n"], by_rule["drift"]
    assert (k_of_n.rule, k_of_n.recording_ids) == ("k_of_n", tuple(ids[5:8]))
    assert (drift.rule, drift.recording_ids) == ("drift", tuple(ids[3:8]))
    assert drift.message == ("the median score of the last 5 recordings of pump-7 is 1.6, "
                             "above the threshold 1.5 (mse)")
    assert fired[7] == sorted(fired[7])  # k_of_n stored first


def test_drift_fires_against_the_latest_threshold_with_no_single_verdict_anomalous(db):
    """A recalibrated run lowers the threshold from 2.0 to 1.5: every verdict was normal against
    its own threshold, but the median of the last 5 is above the threshold now in force."""
    rules = AlertRules(k=3, n=5, drift_window=5)
    ids, fired = feed(db, rules, [1.0, 1.2, 1.6, 1.7, 1.8], threshold=2.0)
    assert fired == [[]] * 5  # #5: median 1.6 < 2.0
    ids.append(store(db, 6, 1.4, 1.5, run=RECALIBRATED))
    assert not any(v.decision for v in db.last_verdicts("pump-7", "mse", 10))
    [alert_id] = rules.evaluate(db, "pump-7", "mse")  # median(1.2, 1.6, 1.7, 1.8, 1.4) = 1.6 > 1.5
    [alert] = db.alerts(ids=[alert_id])
    assert (alert.rule, alert.recording_ids) == ("drift", tuple(ids[1:6]))
    assert "is 1.6, above the threshold 1.5" in alert.message
    store(db, 7, 1.45, 1.5, run=RECALIBRATED)
    assert rules.evaluate(db, "pump-7", "mse") == []  # still open: stored once
    db.ack_alert(alert_id, "bob")
    store(db, 8, 1.45, 1.5, run=RECALIBRATED)
    assert rules.evaluate(db, "pump-7", "mse") == []  # a new episode needs 5 verdicts after #6


def test_last_verdicts_newer_than_and_latest_alert(db):
    a = store(db, 1, 1.0, minute=10)
    b = store(db, 2, 2.0, minute=20)
    c = store(db, 3, 3.0, minute=20)  # same time as b: the later id is the newer
    d = store(db, 4, 4.0, minute=5)   # delivered late: older than all by recording time
    assert [v.recording_id for v in db.last_verdicts("pump-7", "mse", 10)] == [c, b, a, d]
    assert [v.recording_id for v in db.last_verdicts("pump-7", "mse", 10, newer_than=[a, d])] == [c, b]
    assert [v.recording_id for v in db.last_verdicts("pump-7", "mse", 10, newer_than=[b])] == [c]
    assert db.last_verdicts("pump-7", "mse", 10, newer_than=[c]) == []
    assert db.latest_alert("pump-7", "mse", "drift") is None
    first = db.add_alert("pump-7", "mse", "drift", "x", [a])
    second = db.add_alert("pump-7", "mse", "drift", "y", [b])
    db.add_alert("pump-7", "mse", "k_of_n", "z", [c])
    assert db.latest_alert("pump-7", "mse", "drift").id == second != first


def test_raise_alert_stores_an_episode_once_even_from_threads_at_once(db):
    ids = [store(db, i, 2.0) for i in range(1, 5)]
    barrier = threading.Barrier(6)
    got: list[int | None] = []

    def raise_one() -> None:
        barrier.wait()
        got.append(db.raise_alert("pump-7", "mse", "k_of_n", "m", ids[:3]))

    threads = [threading.Thread(target=raise_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 6 and sum(g is not None for g in got) == 1 and len(db.alerts()) == 1
    db.ack_alert(next(g for g in got if g is not None), "alice")
    assert db.raise_alert("pump-7", "mse", "k_of_n", "m", ids[2:]) is None  # #3 raised the acked one
    assert db.raise_alert("pump-7", "mse", "k_of_n", "m", ids[3:]) is not None


# -- the webhook ------------------------------------------------------------------------------

ALERT = AlertRow(id=7, asset="pump-7", score_mode="mse", rule="k_of_n", raised_at=T0,
                 message="3 of the last 5 recordings of pump-7 were anomalous (mse)",
                 acknowledged_at=None, acknowledged_by=None, recording_ids=(2, 4, 6))


@pytest.fixture
def receiver():
    """A real HTTP server on 127.0.0.1 answering each POST with the next status of ``statuses``
    (then 200); ``bodies`` collects what arrived."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            server.bodies.append((self.headers["Content-Type"], json.loads(self.rfile.read(length))))
            self.send_response(server.statuses.pop(0) if server.statuses else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.bodies, server.statuses = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    yield server
    server.shutdown()
    server.server_close()


def test_the_webhook_posts_the_alert_as_json(receiver):
    assert Webhook(receiver.url).send(ALERT) is True
    assert receiver.bodies == [("application/json", {
        "id": 7, "asset": "pump-7", "score_mode": "mse", "rule": "k_of_n",
        "message": "3 of the last 5 recordings of pump-7 were anomalous (mse)",
        "raised_at": "2026-03-01T08:00:00+00:00", "recording_ids": [2, 4, 6]})]
    assert alert_payload(ALERT) == receiver.bodies[0][1]


def test_a_failing_receiver_is_retried_a_bounded_number_of_times_and_logged(receiver, caplog):
    receiver.statuses = [500]
    with caplog.at_level(logging.WARNING, logger="stetho.monitor.alerts"):
        assert Webhook(receiver.url, retries=2, backoff=0).send(ALERT) is True
    assert len(receiver.bodies) == 2 and receiver.bodies[0] == receiver.bodies[1]
    assert "alert 7, attempt 1 of 3 failed: HTTP 500" in caplog.text
    caplog.clear()
    receiver.statuses = [500, 503, 500, 200]
    with caplog.at_level(logging.WARNING, logger="stetho.monitor.alerts"):
        assert Webhook(receiver.url, retries=2, backoff=0).send(ALERT) is False
    assert len(receiver.bodies) == 5  # 2 before + 3 attempts, the 200 never asked for
    assert [r.getMessage().split(": ")[-1] for r in caplog.records] == ["HTTP 500", "HTTP 503", "HTTP 500"]


def test_an_unreachable_webhook_does_not_raise(caplog):
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with caplog.at_level(logging.WARNING, logger="stetho.monitor.alerts"):
        assert Webhook(f"http://127.0.0.1:{port}/", timeout=1, retries=1, backoff=0).send(ALERT) is False
    assert caplog.text.count("failed") == 2
    with pytest.raises(ConfigError, match="not an http"):
        Webhook("ftp://example.org/x")
