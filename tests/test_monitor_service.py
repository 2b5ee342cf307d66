"""The scoring service (stetho.monitor.service) as a real uvicorn server on 127.0.0.1, spoken to
over real HTTP (httpx), on a tiny `stats` run, storing into a SQLite file and a throw-away
PostgreSQL server (tests/pg.py): scores equal Scorer.score of the same bytes, every bad request a
4xx JSON error with nothing stored."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import httpx
import numpy as np
import pytest
import soundfile as sf
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from monitor_toy import run_dir, scorer  # noqa: F401 (fixtures)
from stetho.monitor.alerts import AlertRules, Webhook
from stetho.monitor.db import open_database
from stetho.monitor.schema import Recording, Verdict
from stetho.monitor.service import create_app

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 200_000  # bytes: a 1 s 16 kHz 16-bit WAV is 32 kB


def wav(seed: int, sr: int = 16000, seconds: float = 1.0, subtype: str = "PCM_16", y=None) -> bytes:
    if y is None:
        y = np.random.default_rng(seed).normal(0, 0.1, int(sr * seconds)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, y, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The app on a real uvicorn server in a thread; ``url`` to talk to it."""

    def __init__(self, app) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def db(database_url):
    with open_database(database_url) as database:
        yield database


@pytest.fixture
def served(scorer, db):
    with Server(create_app(scorer, db, TOKEN, max_body_bytes=LIMIT)) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def rows(db, table) -> int:
    with db.engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(table))


def test_a_multipart_and_a_raw_upload_give_the_scorers_numbers_and_are_stored(served, scorer, db):
    data_a, data_b = wav(1), wav(2)
    r = served.post("/v1/score", headers=AUTH, files={"file": ("a.wav", data_a, "audio/wav")},
                    data={"asset": "fan-1", "machine_type": "fan", "section": "00",
                          "recorded_at": "2026-03-01T09:00:00+01:00"})
    assert r.status_code == 200, r.text
    got = r.json()
    want = scorer.score(data_a, "fan", section="00")
    assert got["modes"] == {m: {"score": v.score, "threshold": v.threshold, "decision": v.decision}
                            for m, v in want.modes.items()}
    assert got["run"]["run_id"] == want.run.run_id and got["sha256"] == want.sha256 and not got["duplicate"]
    assert got["file"] == "a.wav" and got["recorded_at"].startswith("2026-03-01T08:00:00")
    raw = served.post("/v1/score", headers={**AUTH, "content-type": "audio/wav"}, content=data_b,
                      params={"asset": "fan-1", "recorded_at": "2026-03-01T08:30:00Z", "filename": "b.wav"})
    assert raw.status_code == 200, raw.text
    assert raw.json()["modes"] == {m: {"score": v.score, "threshold": v.threshold, "decision": v.decision}
                                   for m, v in scorer.score(data_b, "fan").modes.items()}
    stored = db.verdicts("fan-1")
    assert [(v.path, v.score_mode) for v in stored] == [("b.wav", m) for m in sorted(want.modes)] + \
        [("a.wav", m) for m in sorted(want.modes)]
    assert stored[-1].score == got["modes"][stored[-1].score_mode]["score"]
    assert rows(db, Recording) == 2


def test_the_same_bytes_again_answer_the_stored_verdict_as_a_duplicate(served, db):
    first = served.post("/v1/score", headers=AUTH, content=wav(3), params={"asset": "fan-1"}).json()
    again = served.post("/v1/score", headers=AUTH, content=wav(3), params={"asset": "fan-1"})
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert again.json()["recording_id"] == first["recording_id"] and again.json()["modes"] == first["modes"]
    assert rows(db, Recording) == 1
    other = served.post("/v1/score", headers=AUTH, content=wav(3), params={"asset": "fan-2"}).json()
    assert other["duplicate"] is False and rows(db, Recording) == 2


def test_writes_need_the_token(served, db):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN}x"}):
        r = served.post("/v1/score", headers=headers, content=wav(4), params={"asset": "fan-1"})
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert served.post("/v1/alerts/1/ack").status_code == 401
    assert rows(db, Recording) == 0
    assert served.get("/v1/assets").status_code == 200  # reads need none


def test_a_body_over_the_limit_is_413_with_or_without_content_length(served, db):
    big = wav(5, seconds=10)  # 320 kB
    r = served.post("/v1/score", headers=AUTH, content=big, params={"asset": "fan-1"})
    assert r.status_code == 413 and r.json()["error"] == "too_large"

    def chunks():  # no Content-Length: refused while it is read
        for i in range(0, len(big), 16384):
            yield big[i:i + 16384]

    r = served.post("/v1/score", headers=AUTH, content=chunks(), params={"asset": "fan-1"})
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    assert rows(db, Recording) == 0


def test_bad_uploads_are_4xx_json_and_store_nothing(served, db):
    nan = np.full(16000, np.nan, dtype=np.float32)
    cases = {
        "text": (b"just some words, not audio\n" * 10, {}, 415, "not_audio"),
        "header only": (wav(6)[:30], {}, 415, "not_audio"),
        "truncated": (wav(6)[:1000], {}, 400, "corrupt"),
        "nan": (wav(0, subtype="FLOAT", y=nan), {}, 422, "non_finite"),
        "8k": (wav(7, sr=8000), {}, 422, "sample_rate"),
        "unknown type": (wav(8), {"machine_type": "pump"}, 422, "unknown_machine_type"),
        "no asset": (wav(9), {"asset": ""}, 400, "no_asset"),
        "naive time": (wav(9), {"recorded_at": "2026-03-01T08:00:00"}, 400, "bad_time"),
        "attributes": (wav(9), {"attributes": "[1, 2]"}, 400, "bad_attributes"),
    }
    for what, (data, params, status, kind) in cases.items():
        r = served.post("/v1/score", headers=AUTH, content=data, params={"asset": "fan-1", **params})
        assert 400 <= r.status_code < 500, (what, r.status_code, r.text)
        body = r.json()
        assert set(body) == {"error", "detail"} and body["detail"], what
        if status is not None:
            assert (r.status_code, body["error"]) == (status, kind), (what, body)
    assert "did you mean" in served.post("/v1/score", headers=AUTH, content=wav(8),
                                         params={"asset": "a", "machine_type": "fann"}).json()["detail"]
    assert rows(db, Recording) == 0 and rows(db, Verdict) == 0


def test_the_read_endpoints_return_what_was_stored(served):
    for i, hour in enumerate((8, 9, 10)):
        r = served.post("/v1/score", headers=AUTH, content=wav(10 + i),
                        params={"asset": "fan-7", "recorded_at": f"2026-03-01T{hour:02d}:00:00+00:00"})
        assert r.status_code == 200
    assets = served.get("/v1/assets").json()
    assert [(a["name"], a["machine_type"], a["recordings"]) for a in assets] == [("fan-7", "fan", 3)]
    assert assets[0]["last_verdict_at"].startswith("2026-03-01T10:00:00")
    modes = len(served.post("/v1/score", headers=AUTH, content=wav(10), params={"asset": "fan-7"}).json()["modes"])
    every = served.get("/v1/assets/fan-7/verdicts").json()
    assert len(every) == 3 * modes
    window = served.get("/v1/assets/fan-7/verdicts",
                        params={"since": "2026-03-01T09:00:00+00:00", "until": "2026-03-01T10:00:00Z"}).json()
    assert {v["recorded_at"][:19] for v in window} == {"2026-03-01T09:00:00"} and len(window) == modes
    assert len(served.get("/v1/assets/fan-7/verdicts", params={"limit": 2}).json()) == 2
    assert served.get("/v1/assets/nope/verdicts").status_code == 404
    assert served.get("/v1/assets/fan-7/verdicts", params={"limit": 0}).json()["error"] == "invalid_request"
    assert served.get("/v1/alerts").json() == []


def test_alerts_are_listed_and_acknowledged(served, db):
    rec = served.post("/v1/score", headers=AUTH, content=wav(20), params={"asset": "fan-1"}).json()
    alert_id = db.add_alert("fan-1", "mahalanobis", "k_of_n", "3 of 5 anomalous", [rec["recording_id"]])
    listed = served.get("/v1/alerts", params={"open": True}).json()
    assert [(a["id"], a["recording_ids"], a["acknowledged_at"]) for a in listed] == [
        (alert_id, [rec["recording_id"]], None)]
    acked = served.post(f"/v1/alerts/{alert_id}/ack", headers=AUTH, params={"by": "ops"}).json()
    assert acked["acknowledged_by"] == "ops" and acked["acknowledged_at"] is not None
    assert served.get("/v1/alerts", params={"open": True}).json() == []
    assert served.post("/v1/alerts/999/ack", headers=AUTH).status_code == 404
    assert [a["id"] for a in served.get("/v1/alerts", params={"asset": "fan-1"}).json()] == [alert_id]
    assert served.get("/v1/alerts", params={"asset": "fan-2"}).json() == []


def test_rejections_are_listed_newest_first(served, db):
    first = db.reject("inbox/fan-1/a.wav", "corrupt: not a WAV", "watch", sha256="ab" * 32)
    second = db.reject("inbox/fan-1/b.wav", "too_short: 10 samples", "watch")
    listed = served.get("/v1/rejections").json()
    assert [(r["id"], r["path"], r["reason"], r["sha256"]) for r in listed[:2]] == [
        (second, "inbox/fan-1/b.wav", "too_short: 10 samples", None),
        (first, "inbox/fan-1/a.wav", "corrupt: not a WAV", "ab" * 32)]
    assert [r["id"] for r in served.get("/v1/rejections", params={"limit": 1}).json()] == [second]
    assert served.get("/v1/rejections", params={"limit": 0}).status_code == 422


def test_health_metrics_and_the_openapi_page(served, scorer):
    health = served.get("/healthz").json()
    assert health["status"] == "ok" and health["machine_types"] == ["fan"]
    assert health["runs"][0]["run_id"] == scorer.runs[0].run_id
    served.post("/v1/score", headers=AUTH, content=wav(30), params={"asset": "fan-1"})
    served.post("/v1/score", headers=AUTH, content=b"nope", params={"asset": "fan-1"})
    text = served.get("/metrics").text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    ok = (("method", "POST"), ("path", "/v1/score"), ("status", "200"))
    assert samples[("stetho_http_requests_total", ok)] == 1
    assert samples[("stetho_http_requests_total", (("method", "POST"), ("path", "/v1/score"), ("status", "415")))] == 1
    assert samples[("stetho_http_request_duration_seconds_count", (("method", "POST"), ("path", "/v1/score")))] == 2
    verdicts = sum(v for (name, _), v in samples.items() if name == "stetho_verdicts_total")
    assert verdicts == len(scorer.score(wav(30), "fan").modes)
    spec = served.get("/openapi.json").json()
    score = spec["paths"]["/v1/score"]["post"]
    assert set(score["requestBody"]["content"]) >= {"multipart/form-data", "application/octet-stream"}
    assert score["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/ScoreOut")
    assert {"401", "413", "415", "422"} <= set(score["responses"])
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_eight_clients_of_five_uploads_store_forty_verdicts(served, db):
    def client(c: int) -> list[int]:
        return [served.post("/v1/score", headers=AUTH, content=wav(100 + 5 * c + i),
                            params={"asset": f"fan-{c % 3}"}).status_code for i in range(5)]

    with ThreadPoolExecutor(8) as pool:
        statuses = [s for got in pool.map(client, range(8)) for s in got]
    assert statuses == [200] * 40
    assert rows(db, Recording) == 40
    assert sum(a["recordings"] for a in served.get("/v1/assets").json()) == 40


def test_verdicts_raise_alerts_by_the_rules_and_the_webhook_receives_them(scorer, db):
    received: list[dict] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    app = create_app(scorer, db, TOKEN, LIMIT, rules=AlertRules(k=2, n=3),
                     webhook=Webhook(f"http://127.0.0.1:{hook.server_port}/alerts", retries=0))
    try:
        with Server(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
            first = client.post("/v1/score", headers=AUTH, content=wav(40), params={"asset": "fan-1"}).json()
            second = client.post("/v1/score", headers=AUTH, content=wav(41), params={"asset": "fan-1"}).json()
            default = first["default_mode"]
            both = [default] if first["modes"][default]["decision"] and second["modes"][default]["decision"] else []
            assert both and first["alerts"] == []  # white noise is anomalous to a run trained on toy fans
            # the rules watch the model's own score mode only (AlertRules.modes="default")
            stored = db.alerts()
            assert sorted(second["alerts"]) == sorted(a.id for a in stored)
            assert sorted((a.score_mode, a.rule, a.recording_ids) for a in stored) == [
                (m, "k_of_n", (first["recording_id"], second["recording_id"])) for m in both]
            deadline = time.monotonic() + 10
            while len(received) < len(both) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert sorted(r["id"] for r in received) == sorted(second["alerts"])
            text = client.get("/metrics").text
            assert f"stetho_alerts_total {float(len(both))}" in text
    finally:
        hook.shutdown()
        hook.server_close()


def test_create_app_refuses_an_empty_token(scorer, tmp_path):
    from stetho.errors import ConfigError

    with open_database(f"sqlite:///{tmp_path / 'x.db'}") as database, pytest.raises(ConfigError, match="API token"):
        create_app(scorer, database, "  ")


def test_stetho_serve_starts_from_the_command_line(run_dir, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port = _free_port()
    cmd = [sys.executable, "-m", "stetho.cli", "serve", str(run_dir), "--db", f"sqlite:///{tmp_path / 'm.db'}",
           "--port", str(port), "--token-file", str(token_file), "--max-body-mb", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("STETHO_API_TOKEN", None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert health.json()["machine_types"] == ["fan"]
        r = httpx.post(f"http://127.0.0.1:{port}/v1/score", headers=AUTH, content=wav(1), params={"asset": "f"})
        assert r.status_code == 200 and r.json()["recording_id"] == 1
    finally:
        proc.terminate()
        proc.wait(10)
    no_token = subprocess.run(cmd[:-4], capture_output=True, text=True, env=env, timeout=60)
    assert no_token.returncode == 2 and "API token" in no_token.stderr
