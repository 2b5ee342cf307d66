"""The HTTP scoring service behind ``stetho serve``: a FastAPI app over a loaded
:class:`~stetho.monitor.scoring.Scorer` and an open :class:`~stetho.monitor.db.Database`.

``POST /v1/score`` scores one uploaded recording (multipart field ``file``, or the raw body) and
stores the verdict; the read endpoints return what was stored; ``/healthz`` and ``/metrics``
(Prometheus text) are for whoever runs it. Every error is JSON ``{"error": kind, "detail":
message}`` with a 4xx status (a database that cannot be written is 503), never a 500 for bad
input, and nothing is stored for a request that failed.

Choices a client sees:

* Writes (``POST``) need ``Authorization: Bearer <token>`` (compared in constant time); reads do not,
  unless ``protect_reads``. Acknowledging an alert also takes the dashboard's login cookie
  (:mod:`stetho.monitor.dashboard` serves the pages at ``/``).
* A body over ``max_body_bytes`` is 413, refused from its ``Content-Length`` or, without one, as
  soon as the bytes read pass the limit (the rest is never read into memory).
* Bad audio: ``not_audio`` 415; ``corrupt`` and ``empty`` 400; ``non_finite``, ``out_of_range``,
  ``sample_rate``, ``channel``, ``too_short`` 422; a machine type no loaded run serves
  (``unknown_machine_type``) 422 rather than 404, because the URL exists and it is a field of the
  request that names something unknown.
* The same bytes uploaded again for the same asset are not stored twice: 200 with the stored
  verdict and ``"duplicate": true``.
* Scoring and database work run in a worker thread, so the event loop keeps answering.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi import BackgroundTasks, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

import stetho
from stetho.errors import ConfigError, DatabaseError, ScoringError, StorageError
from stetho.monitor.alerts import AlertRules
from stetho.monitor.dashboard import ReadGuard, dashboard_router, has_cookie
from stetho.monitor.archive import AudioArchive, audio_suffix
from stetho.monitor.db import Database, VerdictRow
from stetho.monitor.fleet import fleet
from stetho.monitor.recordings import recordings_router
from stetho.monitor.scoring import Scorer, Verdict
from stetho.monitor.spectra import NormalProfiles
from stetho.monitor.store import evaluate_rules, store_verdict

log = logging.getLogger(__name__)

#: HTTP status of each :class:`~stetho.errors.ScoringError` kind (see the module docstring).
STATUS_OF_KIND = {
    "not_audio": 415, "corrupt": 400, "empty": 400, "not_found": 400,
    "non_finite": 422, "out_of_range": 422, "sample_rate": 422, "channel": 422, "too_short": 422,
    "unknown_machine_type": 422,
}

#: Rows a verdicts query returns when no ``limit`` is given, and the most it may ask for.
DEFAULT_LIMIT, MAX_LIMIT = 100, 10_000

#: Called after each newly stored verdict: ``(db, asset, verdict, recording_id) -> new alert ids``.
OnVerdict = Callable[[Database, str, Verdict, int], Sequence[int]]


# ---------------------------------------------------------------------------------------------
# Response models (what /openapi.json documents)


class ErrorOut(BaseModel):
    """Every error: ``error`` names the kind of problem, ``detail`` says it in words."""

    error: str = Field(description="kind of problem, e.g. not_audio, sample_rate, unauthorized, too_large")
    detail: str = Field(description="what was wrong, in words a user can act on")


class ModeOut(BaseModel):
    """One score mode's verdict; ``decision`` is ``score > threshold``."""

    score: float
    threshold: float
    decision: bool


class RunOut(BaseModel):
    """The model run that scored it."""

    run_id: str = Field(description="first 12 hex digits of the SHA-256 of the run's models.json")
    version: str | None = Field(description="stetho version that trained the run (null: unrecorded)")
    model: str | None = Field(description="the run's detector (--model)")


class ScoreOut(BaseModel):
    """The verdict of one upload, as stored."""

    asset: str
    machine_type: str
    section: str
    file: str = Field(description="the upload's file name (or 'upload')")
    sha256: str = Field(description="SHA-256 of the uploaded bytes")
    recorded_at: datetime = Field(description="recording time (UTC)")
    duration_s: float = Field(description="length in seconds at the model's sample rate")
    sample_rate: int = Field(description="the upload's own sample rate in Hz")
    recording_id: int
    duplicate: bool = Field(description="true: these bytes were already stored for this asset; the stored "
                                        "verdict is returned and nothing new is stored")
    default_mode: str = Field(description="the model's own score mode (its `score_mode`)")
    anomalous: bool = Field(description="the decision of the default score mode")
    run: RunOut
    stetho_version: str = Field(description="stetho version that scored it")
    modes: dict[str, ModeOut] = Field(description="score mode -> score, threshold, decision")
    alerts: list[int] = Field(description="ids of alerts this verdict raised")


class AssetOut(BaseModel):
    name: str
    machine_type: str
    created_at: datetime
    recordings: int
    last_verdict_at: datetime | None = Field(description="recording time of its newest scored recording")


class VerdictOut(BaseModel):
    verdict_id: int
    recording_id: int
    asset: str
    path: str
    sha256: str
    recorded_at: datetime
    received_at: datetime
    source: str = Field(description="http, watch or cli")
    run_id: str
    score_mode: str
    score: float
    threshold: float
    decision: bool


class RejectionOut(BaseModel):
    id: int
    path: str = Field(description="the rejected file as the watcher found it")
    sha256: str | None = Field(description="SHA-256 of its bytes, when they could be read")
    reason: str = Field(description="what was wrong, e.g. 'corrupt: ...'")
    rejected_at: datetime
    source: str = Field(description="watch (uploads that fail are answered 4xx and not stored)")


class AlertOut(BaseModel):
    id: int
    asset: str
    score_mode: str
    rule: str = Field(description="k_of_n or drift")
    raised_at: datetime
    message: str
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    recording_ids: list[int]


class PointOut(BaseModel):
    """One recording's verdict in the asset's default score mode."""

    recording_id: int
    recorded_at: datetime
    score: float
    threshold: float
    decision: bool


class FleetOut(BaseModel):
    """One asset's tile of the dashboard (:mod:`stetho.monitor.fleet`)."""

    asset: str
    machine_type: str
    status: str = Field(description="ALARM: an open alert; WARNING: no open alert but one of the last n "
                                    "verdicts is anomalous; OK: otherwise")
    n: int = Field(description="the alert rules' n: how many newest verdicts decide WARNING")
    default_mode: str | None = Field(description="the score mode of last/recent (the machine type's own)")
    last_recording_at: datetime | None
    last: PointOut | None = Field(description="its newest verdict in default_mode")
    recent: list[PointOut] = Field(description="its newest verdicts in default_mode, oldest first")
    open_alerts: list[AlertOut] = Field(description="its unacknowledged alerts, newest first")


class HealthOut(BaseModel):
    status: str = Field(description="ok")
    stetho_version: str
    machine_types: list[str]
    runs: list[RunOut]


# ---------------------------------------------------------------------------------------------
# Errors and the body limit


class ApiError(Exception):
    """A request the service refuses: answered as ``status`` with ``{"error": kind, "detail": ...}``."""

    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail = status, kind, detail


def _error(status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": kind, "detail": detail}, status_code=status, headers=headers)


class _Edge:
    """Pure ASGI middleware around the app: counts requests and their latency for /metrics, and
    refuses a body over ``max_body_bytes`` -- from its Content-Length before any byte is read,
    else while it is read (the endpoint's read raises :class:`ApiError` 413)."""

    def __init__(self, app: Any, max_body_bytes: int, requests: Counter, latency: Histogram) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes
        self.requests, self.latency = requests, latency

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def send_counting(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                await _error(413, "too_large", f"the body has {int(length)} bytes; the limit is "
                                               f"{self.max_body_bytes}")(scope, receive, send_counting)
                return
            seen = [0]

            async def receive_limited() -> dict:
                message = await receive()
                if message["type"] == "http.request":
                    seen[0] += len(message.get("body", b""))
                    if seen[0] > self.max_body_bytes:
                        raise ApiError(413, "too_large", f"the body is over the limit of {self.max_body_bytes} bytes")
                return message

            await self.app(scope, receive_limited, send_counting)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "other"  # the route template: bounded label values
            self.requests.labels(scope["method"], path, str(status[0])).inc()
            self.latency.labels(scope["method"], path).observe(time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# The app


def create_app(scorer: Scorer, db: Database, token: str, max_body_bytes: int = 20 * 1024 * 1024,
               rules: Any = None, webhook: Any = None, on_verdict: OnVerdict | None = None,
               protect_reads: bool = False, refresh_seconds: float = 5.0,
               archive: AudioArchive | None = None) -> FastAPI:
    """The service's FastAPI app (serve it with uvicorn; see :func:`serve`).

    Args:
        scorer: the loaded runs (models are loaded once, before the app is built).
        db: the open verdict database every verdict is stored in.
        token: the API token writes must bring (``Authorization: Bearer <token>``); not empty.
        max_body_bytes: the largest request body accepted (larger: 413).
        rules: the alert rules (:class:`stetho.monitor.alerts.AlertRules`, or any object with
            ``evaluate(db, asset, score_mode) -> list[int]`` of new alert ids), evaluated for each
            score mode after each newly stored verdict; ``None``: no alerts are raised.
        webhook: where new alerts are announced (:class:`stetho.monitor.alerts.Webhook`, or any
            object with ``send(alert_row)``): each new alert is sent after the response went out,
            so a slow receiver never delays scoring.
        on_verdict: a further hook called after each newly stored verdict as
            ``on_verdict(db, asset, verdict, recording_id)``; the alert ids it returns are added.
        archive: where each upload's bytes are kept (:class:`~stetho.monitor.archive.AudioArchive`),
            before its verdict is stored: a stored verdict always has its audio, and an upload
            that cannot be kept is 503 with nothing stored; ``None``: uploads are not kept. Its
            folder also keeps the normal profiles of ``/v1/recordings/{id}/spectrogram``.
        protect_reads: every ``GET`` except ``/healthz``, ``/login`` and ``/static/*`` needs the
            token too (header, or the dashboard's login cookie); pages redirect to ``/login``.
        refresh_seconds: how often the dashboard's pages poll for new data.

    Raises:
        ConfigError: an empty token or a limit below 1 byte.
    """
    if not token or not token.strip():
        raise ConfigError("the scoring service needs an API token (--token-file or STETHO_API_TOKEN)")
    if max_body_bytes < 1:
        raise ConfigError(f"max_body_bytes must be at least 1, got {max_body_bytes}")
    expected = token.strip().encode()
    registry = CollectorRegistry()
    requests = Counter("stetho_http_requests", "HTTP requests answered", ["method", "path", "status"],
                       registry=registry)
    latency = Histogram("stetho_http_request_duration_seconds", "Time to answer an HTTP request",
                        ["method", "path"], registry=registry)
    verdicts_total = Counter("stetho_verdicts", "Verdicts stored (one per upload and score mode)",
                             ["machine_type", "score_mode", "decision"], registry=registry)
    alerts_total = Counter("stetho_alerts", "Alerts raised", registry=registry)

    app = FastAPI(title="stetho scoring service", version=stetho.__version__,
                  description=(__doc__ or "").split("\n\n")[0].replace("\n", " "))
    app.state.scorer, app.state.db, app.state.registry = scorer, db, registry
    app.add_middleware(_Edge, max_body_bytes=max_body_bytes, requests=requests, latency=latency)
    if protect_reads:
        app.add_middleware(ReadGuard, token=token)
    app.include_router(dashboard_router(token, refresh_seconds, protect_reads))
    bearer = HTTPBearer(auto_error=False, description="the service's API token")
    errors = {400: {"model": ErrorOut}, 401: {"model": ErrorOut}, 413: {"model": ErrorOut},
              415: {"model": ErrorOut}, 422: {"model": ErrorOut}, 503: {"model": ErrorOut}}

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.kind, exc.detail, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, "invalid_request", f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, kind, str(exc.detail))

    def authorised(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        given = creds.credentials.encode() if creds is not None else b""
        if not hmac.compare_digest(given, expected):
            raise ApiError(401, "unauthorized", "this needs the service's API token: Authorization: Bearer <token>"
                           if creds is None else "the API token is wrong")

    def authorised_or_cookie(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        # The dashboard's Acknowledge button brings the login cookie instead of the header. The cookie
        # is SameSite=Strict, so a browser never sends it with a request another site starts: no CSRF.
        if creds is None and has_cookie(request, token):
            return
        authorised(creds)

    upload_doc = {"requestBody": {"required": True, "description": (
        "the recording: a multipart form with the audio file in field 'file' (and optionally the query "
        "parameters as form fields), or the audio file's bytes as the raw body"), "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary"}, "asset": {"type": "string"},
            "machine_type": {"type": "string"}, "section": {"type": "string"},
            "attributes": {"type": "string"}, "recorded_at": {"type": "string"}}}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "audio/wav": {"schema": {"type": "string", "format": "binary"}}}}}

    @app.post("/v1/score", response_model=ScoreOut, responses=errors, openapi_extra=upload_doc,
              dependencies=[Depends(authorised)], summary="Score one recording and store its verdict")
    async def score(
        request: Request,
        background: BackgroundTasks,
        asset: str | None = Query(None, description="the machine (asset id) it was recorded on; required"),
        machine_type: str | None = Query(None, description="its machine type (default: the only one served)"),
        section: str | None = Query(None, description="its section / machine ID (default 00)"),
        attributes: str | None = Query(None, description='its attributes as a JSON object, e.g. {"vel": "8"}'),
        recorded_at: str | None = Query(None, description="recording time, ISO 8601 with a UTC offset "
                                                          "(default: now, UTC)"),
        filename: str | None = Query(None, description="its file name (raw body; multipart gives its own)"),
    ) -> ScoreOut:
        fields = {"asset": asset, "machine_type": machine_type, "section": section, "attributes": attributes,
                  "recorded_at": recorded_at}
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=len(fields))
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise ApiError(400, "no_file", "the multipart form has no file in field 'file'")
            data = await upload.read()
            name = upload.filename or filename or "upload"
            for key in fields:
                value = form.get(key)
                if isinstance(value, str) and value and fields[key] is None:
                    fields[key] = value
        else:
            data = await request.body()
            name = filename or "upload"
        out = await run_in_threadpool(_score_and_store, data, name, **fields)
        if out.alerts and webhook is not None:
            background.add_task(_announce, out.alerts)  # after the response: run in a worker thread
        return out

    def _keep(data: bytes, name: str, sha256: str) -> None:
        """Put the upload's bytes in the archive (idempotent: bytes kept before are not written
        again); 503 when they cannot be kept, before anything is stored."""
        if archive is None:
            return
        try:
            archive.put(sha256, data, audio_suffix(name, data))
        except (OSError, StorageError) as exc:
            raise ApiError(503, "archive", f"{name}: cannot keep the audio in {archive.root}: {exc}") from None

    def _announce(alert_ids: list[int]) -> None:
        for row in db.alerts(ids=alert_ids):
            webhook.send(row)

    def _score_and_store(data: bytes, name: str, asset: str | None, machine_type: str | None,
                         section: str | None, attributes: str | None, recorded_at: str | None) -> ScoreOut:
        """Parse the fields, score, store and evaluate the alert rules (in a worker thread)."""
        if not asset or not asset.strip():
            raise ApiError(400, "no_asset", "say which asset (machine) it was recorded on: asset=<id>")
        if not data:
            raise ApiError(400, "empty", f"{name}: the upload has no bytes")
        attrs = _attributes(attributes)
        when = _recorded_at(recorded_at)
        try:
            mtype = scorer.resolve_machine_type(machine_type)
            verdict = scorer.score(data, mtype, section=section, attributes=attrs, filename=name)
        except ScoringError as exc:
            raise ApiError(STATUS_OF_KIND.get(exc.kind, 422), exc.kind, str(exc)) from None
        except ConfigError as exc:
            raise ApiError(422, "no_machine_type", str(exc)) from None
        try:
            _keep(data, name, verdict.sha256)
            stored = store_verdict(db, asset, verdict, path=name, recorded_at=when, source="http")
            if not stored.created:
                return _duplicate(asset, verdict, db.recording_verdicts(stored.recording_id))
            for mode, mv in verdict.modes.items():
                verdicts_total.labels(mtype, mode, "anomaly" if mv.decision else "normal").inc()
            raised = _alerts(asset, verdict, stored.recording_id)
        except DatabaseError as exc:
            raise ApiError(503, "database", str(exc)) from None
        return ScoreOut(asset=asset, machine_type=mtype, section=verdict.section, file=name, sha256=verdict.sha256,
                        recorded_at=when, duration_s=verdict.duration_s, sample_rate=verdict.sample_rate,
                        recording_id=stored.recording_id, duplicate=False, anomalous=verdict.anomalous,
                        default_mode=verdict.default_mode,
                        run=RunOut(run_id=verdict.run.run_id, version=verdict.run.version, model=verdict.run.model),
                        stetho_version=verdict.stetho_version,
                        modes={m: ModeOut(**vars(v)) for m, v in verdict.modes.items()}, alerts=raised)

    def _alerts(asset: str, verdict: Verdict, recording_id: int) -> list[int]:
        raised = evaluate_rules(db, asset, verdict, rules)
        if on_verdict is not None:
            raised += list(on_verdict(db, asset, verdict, recording_id))
        alerts_total.inc(len(raised))
        return raised

    def _duplicate(asset: str, verdict: Verdict, stored: list[VerdictRow]) -> ScoreOut:
        first = stored[0]
        run = next((r for r in scorer.runs if r.run_id == first.run_hash), None)
        modes = {r.score_mode: ModeOut(score=r.score, threshold=r.threshold, decision=r.decision) for r in stored}
        return ScoreOut(asset=asset, machine_type=verdict.machine_type, section=verdict.section, file=first.path,
                        sha256=first.sha256, recorded_at=first.recorded_at, duration_s=verdict.duration_s,
                        sample_rate=verdict.sample_rate, recording_id=first.recording_id, duplicate=True,
                        anomalous=modes[verdict.default_mode].decision if verdict.default_mode in modes
                        else next(iter(modes.values())).decision, default_mode=verdict.default_mode,
                        run=RunOut(run_id=first.run_hash, version=run.version if run else None,
                                   model=run.model if run else None),
                        stetho_version=verdict.stetho_version, modes=modes, alerts=[])

    profiles = NormalProfiles(archive.root if archive is not None else None)
    app.include_router(recordings_router(scorer, db, archive, profiles, ApiError, ErrorOut))

    @app.get("/v1/assets", response_model=list[AssetOut], summary="Every asset with its number of recordings")
    async def assets() -> list[AssetOut]:
        rows = await run_in_threadpool(db.assets)
        return [AssetOut(**vars(a)) for a in rows]

    @app.get("/v1/assets/{asset}/verdicts", response_model=list[VerdictOut], responses={404: {"model": ErrorOut}},
             summary="An asset's verdicts, newest recording first")
    async def asset_verdicts(
        asset: str,
        since: datetime | None = Query(None, description="recorded at or after (ISO 8601 with offset)"),
        until: datetime | None = Query(None, description="recorded before (ISO 8601 with offset)"),
        limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="at most this many rows"),
    ) -> list[VerdictOut]:
        for value, what in ((since, "since"), (until, "until")):
            if value is not None and value.utcoffset() is None:
                raise ApiError(400, "bad_time", f"{what}={value.isoformat()} has no UTC offset; add one (e.g. +00:00)")

        def read() -> list[VerdictRow] | None:
            if asset not in {a.name for a in db.assets()}:
                return None
            return db.verdicts(asset, since=since, until=until, limit=limit)

        rows = await run_in_threadpool(read)
        if rows is None:
            raise ApiError(404, "unknown_asset", f"no asset '{asset}' has been scored")
        return [VerdictOut(**{("run_id" if k == "run_hash" else k): v for k, v in vars(r).items()}) for r in rows]

    @app.get("/v1/alerts", response_model=list[AlertOut], summary="Alerts, newest first")
    async def alerts(open_only: bool = Query(False, alias="open", description="only those not acknowledged"),
                     asset: str | None = Query(None, description="only this asset's")) -> list[AlertOut]:
        rows = await run_in_threadpool(lambda: db.alerts(open_only, asset=asset))
        return [AlertOut(**{**vars(a), "recording_ids": list(a.recording_ids)}) for a in rows]

    @app.get("/v1/rejections", response_model=list[RejectionOut],
             summary="Files the watcher could not score, and why, newest first")
    async def rejections(limit: int = Query(100, ge=1, le=10000, description="at most this many")
                         ) -> list[RejectionOut]:
        rows = await run_in_threadpool(db.rejections, limit)
        return [RejectionOut(**vars(r)) for r in rows]

    @app.post("/v1/alerts/{alert_id}/ack", response_model=AlertOut, dependencies=[Depends(authorised_or_cookie)],
              responses={401: {"model": ErrorOut}, 404: {"model": ErrorOut}}, summary="Acknowledge an alert")
    async def ack(alert_id: int, by: str = Query("api", description="who acknowledges it")) -> AlertOut:
        def write() -> Any:
            if not db.alerts(ids=[alert_id]):
                return None
            return db.ack_alert(alert_id, by)

        try:
            row = await run_in_threadpool(write)
        except DatabaseError as exc:
            raise ApiError(503, "database", str(exc)) from None
        if row is None:
            raise ApiError(404, "unknown_alert", f"no alert {alert_id}")
        return AlertOut(**{**vars(row), "recording_ids": list(row.recording_ids)})

    @app.get("/v1/fleet", response_model=list[FleetOut], summary="Every asset's status, last verdict and recent "
                                                                 "scores, worst first (the dashboard's tiles)")
    async def fleet_view(spark: int = Query(30, ge=1, le=1000, description="verdicts per sparkline")) -> list[FleetOut]:
        n = int(getattr(rules, "n", AlertRules.n))
        tiles = await run_in_threadpool(fleet, db, scorer.default_mode, n, spark)

        def point(v: VerdictRow) -> PointOut:
            return PointOut(recording_id=v.recording_id, recorded_at=v.recorded_at, score=v.score,
                            threshold=v.threshold, decision=v.decision)

        return [FleetOut(asset=t.asset, machine_type=t.machine_type, status=t.status, n=n, default_mode=t.default_mode,
                         last_recording_at=t.last_recording_at, last=point(t.last) if t.last else None,
                         recent=[point(v) for v in t.recent],
                         open_alerts=[AlertOut(**{**vars(a), "recording_ids": list(a.recording_ids)})
                                      for a in t.open_alerts]) for t in tiles]

    @app.get("/healthz", response_model=HealthOut, responses={503: {"model": ErrorOut}}, summary="Liveness")
    async def healthz() -> HealthOut:
        try:
            await run_in_threadpool(db.assets)
        except Exception as exc:  # any database failure means not healthy, said as one line
            raise ApiError(503, "database", f"{db.url}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
        return HealthOut(status="ok", stetho_version=stetho.__version__, machine_types=scorer.machine_types,
                         runs=[RunOut(run_id=r.run_id, version=r.version, model=r.model) for r in scorer.runs])

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (text format)")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry).decode(), media_type=CONTENT_TYPE_LATEST)

    return app


def _attributes(text: str | None) -> dict[str, str] | None:
    """``{name: value}`` from the JSON object of the ``attributes`` field (400 otherwise)."""
    if text is None or not text.strip():
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ApiError(400, "bad_attributes", f'attributes must be a JSON object such as {{"vel": "8"}}, got {text!r}')
    return {str(k): str(v) for k, v in value.items()}


def _recorded_at(text: str | None) -> datetime:
    """The recording time from ISO 8601 with a UTC offset, in UTC; now when not given (400 otherwise)."""
    if text is None or not text.strip():
        return datetime.now(timezone.utc)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ApiError(400, "bad_time", f"recorded_at={text!r} is not an ISO 8601 time") from None
    if when.utcoffset() is None:
        raise ApiError(400, "bad_time", f"recorded_at={text!r} has no UTC offset; add one (e.g. +00:00 or Z)")
    return when.astimezone(timezone.utc)


def serve(runs: Sequence[str], db_url: str, token: str, host: str = "127.0.0.1", port: int = 8000,
          max_body_bytes: int = 20 * 1024 * 1024, resample: bool = True, alert_k: int = 3, alert_n: int = 5,
          alert_modes: str | Sequence[str] = "default",
          webhook_url: str | None = None, protect_reads: bool = False, refresh_seconds: float = 5.0,
          archive: str | Path | None = None, engine: str = "torch") -> None:
    """Load the runs once (``engine="onnx"``: ``runs`` are ONNX export folders, scored with
    onnxruntime: :func:`stetho.monitor.onnx_scoring.load_onnx_scorer`), open the database and serve
    the app with uvicorn until interrupted;
    uploads kept in the audio archive folder ``archive`` when given (see :mod:`stetho.monitor.archive`);
    alerts by :class:`~stetho.monitor.alerts.AlertRules` ``(alert_k, alert_n, alert_modes)``, announced to
    ``webhook_url`` when given; the dashboard at ``/`` (``protect_reads``: reads need the token too)."""
    import uvicorn  # only the service needs it

    from stetho.monitor.alerts import AlertRules, Webhook
    from stetho.monitor.db import open_database

    modes = alert_modes if isinstance(alert_modes, str) else tuple(alert_modes)
    rules = AlertRules(k=alert_k, n=alert_n, modes=modes)
    webhook = Webhook(webhook_url) if webhook_url else None
    kept = AudioArchive(archive) if archive is not None else None
    if engine == "onnx":
        from stetho.monitor.onnx_scoring import load_onnx_scorer

        scorer = load_onnx_scorer(list(runs), resample=resample)
    else:
        scorer = Scorer.load(list(runs), resample=resample)
    rules.check_modes(m for t in scorer.machine_types for m in scorer.score_modes(t))
    with open_database(db_url) as db:
        app = create_app(scorer, db, token, max_body_bytes, archive=kept, rules=rules, webhook=webhook,
                         protect_reads=protect_reads, refresh_seconds=refresh_seconds)
        log.info("serving %s on http://%s:%d (verdicts in %s)", ", ".join(scorer.machine_types), host, port, db.url)
        log.info("uploads kept in %s", kept.root if kept is not None else "no audio archive (--archive DIR)")
        uvicorn.run(app, host=host, port=port, log_level="info")


__all__ = ["ApiError", "STATUS_OF_KIND", "create_app", "serve"]
