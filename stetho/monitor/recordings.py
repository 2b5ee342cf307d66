"""The service's endpoints of one stored recording (what the dashboard's recording page shows):

* ``GET /v1/recordings/{id}``: the recording, its verdict per score mode, the default mode and the
  alerts it helped raise;
* ``GET /v1/recordings/{id}/audio``: its bytes (``audio/wav`` for a WAV), from the audio archive,
  its recorded path or the watcher's ``done/`` folder (:func:`~stetho.monitor.archive.find_audio`);
* ``GET /v1/recordings/{id}/spectrogram``: its log-mel, the average log-mel of its run's normal
  training clips and their difference (:mod:`stetho.monitor.spectra`), pooled to at most
  :data:`MAX_COLUMNS` time columns and rounded to 0.1 dB.

Errors are the service's ``{"error", "detail"}``: 404 ``unknown_recording``; 404
``audio_not_kept`` when its bytes are nowhere; 409 ``run_not_loaded`` when the run that scored it is
not served any more, ``no_training_data`` when the run's training clips are gone.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from stetho.errors import AudioError, ScoringError
from stetho.monitor.archive import AudioArchive, content_type, find_audio
from stetho.monitor.db import Database, RecordingRow
from stetho.monitor.scoring import Scorer
from stetho.monitor.spectra import NormalProfiles, ProfileError, align, difference, pool_time, recording_spectrogram

#: Most time columns a spectrogram answer has (frames are mean-pooled beyond it): 400 x 128 values
#: of three matrices is about 1 MB of JSON.
MAX_COLUMNS = 400


class RecordingModeOut(BaseModel):
    """One score mode's stored verdict of the recording."""

    score: float
    threshold: float
    decision: bool = Field(description="score > threshold")
    run_id: str = Field(description="the run that scored it")


class RecordingAlertOut(BaseModel):
    """An alert the recording is one of the triggering recordings of."""

    id: int
    rule: str = Field(description="k_of_n or drift")
    score_mode: str
    message: str
    raised_at: datetime
    acknowledged_at: datetime | None


class RecordingOut(BaseModel):
    """A stored recording with its verdicts."""

    id: int
    asset: str
    machine_type: str
    path: str = Field(description="the path the watcher read, or the uploaded file's name")
    sha256: str
    recorded_at: datetime
    received_at: datetime
    duration_s: float = Field(description="length in seconds at the model's sample rate")
    sample_rate: int = Field(description="the recording's own sample rate in Hz")
    source: str = Field(description="http, watch or cli")
    section: str | None = Field(description="the section it was scored in (null: stored before sections were kept)")
    default_mode: str | None = Field(description="the machine type's own score mode (null: no loaded run serves it)")
    anomalous: bool | None = Field(description="the decision of default_mode (null when it has no verdict)")
    modes: dict[str, RecordingModeOut] = Field(description="score mode -> stored verdict")
    alerts: list[RecordingAlertOut] = Field(description="alerts it helped raise, newest first")
    audio_kept: bool = Field(description="its audio can be fetched from /v1/recordings/{id}/audio")


class SpectrogramOut(BaseModel):
    """Log-mel spectrograms in dB (rounded to 0.1), time-major: ``recording[t][m]`` is time column
    ``t`` (at ``times_s[t]``), mel band ``m`` (centred at ``mel_hz[m]``)."""

    times_s: list[float] = Field(description="centre of each time column in seconds")
    mel_hz: list[float] = Field(description="centre frequency of each mel band in Hz")
    frames_per_column: int = Field(description="log-mel frames averaged into each column (the last may have fewer)")
    recording: list[list[float]] = Field(description="the recording's log-mel (dB)")
    normal: list[list[float]] = Field(description="the average log-mel of its run's normal training clips (dB), "
                                                  "on the recording's frames")
    difference: list[list[float]] = Field(description="recording - normal (dB)")
    n_normal_clips: int = Field(description="training clips averaged into normal")
    normal_sections: str = Field(description="'own': its section's training clips; 'all': the section has none, "
                                             "every section's were used")
    run_id: str
    sample_rate: int = Field(description="the sample rate the log-mels are computed at (the run's), Hz")


def _round(values: np.ndarray) -> list[list[float]]:
    return np.round(values.astype(np.float64), 1).tolist()


def recordings_router(scorer: Scorer, db: Database, archive: AudioArchive | None,
                      profiles: NormalProfiles, api_error: type[Exception], error_model: Any) -> APIRouter:
    """The endpoints of the module docstring; errors are raised as ``api_error(status, kind,
    detail)`` (the service's :class:`~stetho.monitor.service.ApiError`), documented as ``error_model``."""
    router = APIRouter()

    def stored(recording_id: int) -> RecordingRow:
        rec = db.recording(recording_id)
        if rec is None:
            raise api_error(404, "unknown_recording", f"no recording {recording_id}")
        return rec

    def audio_of(rec: RecordingRow) -> Path:
        found = find_audio(rec.sha256, rec.path, rec.asset, archive)
        if found is None:
            where = f"the audio archive ({archive.root}), " if archive is not None else ""
            raise api_error(404, "audio_not_kept", f"recording {rec.id}: its audio was not kept: not in {where}not at "
                                                   f"{rec.path} with SHA-256 {rec.sha256[:12]}..., nor in a done/ "
                                                   "folder (serve with --archive DIR to keep uploads)")
        return found

    def describe(recording_id: int) -> RecordingOut:
        rec = stored(recording_id)
        verdicts = db.recording_verdicts(recording_id)
        alerts = db.recording_alerts(recording_id)
        try:
            default = scorer.default_mode(rec.machine_type)
        except ScoringError:
            default = None
        modes = {v.score_mode: RecordingModeOut(score=v.score, threshold=v.threshold, decision=v.decision,
                                                run_id=v.run_hash) for v in verdicts}
        return RecordingOut(
            id=rec.id, asset=rec.asset, machine_type=rec.machine_type, path=rec.path, sha256=rec.sha256,
            recorded_at=rec.recorded_at, received_at=rec.received_at, duration_s=rec.duration_s,
            sample_rate=rec.sample_rate, source=rec.source, section=rec.section, default_mode=default,
            anomalous=modes[default].decision if default in modes else None, modes=modes,
            alerts=[RecordingAlertOut(id=a.id, rule=a.rule, score_mode=a.score_mode, message=a.message,
                                      raised_at=a.raised_at, acknowledged_at=a.acknowledged_at) for a in alerts],
            audio_kept=find_audio(rec.sha256, rec.path, rec.asset, archive) is not None)

    not_found = {404: {"model": error_model}}

    @router.get("/v1/recordings/{recording_id}", response_model=RecordingOut, responses=not_found,
                summary="A stored recording: its verdict per score mode and the alerts it helped raise")
    async def recording(recording_id: int) -> RecordingOut:
        return await run_in_threadpool(describe, recording_id)

    @router.get("/v1/recordings/{recording_id}/audio", response_class=FileResponse, summary="A recording's audio",
                responses={200: {"content": {"audio/wav": {}, "application/octet-stream": {}},
                                 "description": "the recording's bytes as uploaded or read"}, **not_found})
    async def audio(recording_id: int) -> FileResponse:
        path = await run_in_threadpool(lambda: audio_of(stored(recording_id)))
        return FileResponse(path, media_type=content_type(path))

    def spectrogram(recording_id: int, columns: int) -> SpectrogramOut:
        rec = stored(recording_id)
        verdicts = db.recording_verdicts(recording_id)
        run_id = verdicts[0].run_hash if verdicts else ""
        run = next((r for r in scorer.runs if r.run_id == run_id), None)
        if run is None or rec.machine_type not in run.machine_types:
            raise api_error(409, "run_not_loaded", f"recording {rec.id} was scored by run {run_id or '?'}, which this "
                                                   "service does not serve: its training data is not known")
        path = audio_of(rec)
        # the run's own sample rate and channel (what its detector reads)
        detector = scorer._lookup(rec.machine_type, str(path)).detector  # noqa: SLF001 (same package)
        sr, channel = detector.signal_spec[0], int(getattr(detector, "channel", 0))
        try:
            spec = recording_spectrogram(path, sr, params=profiles.params, channel=channel)
        except AudioError as exc:
            raise api_error(409, "audio_unreadable", f"recording {rec.id}: {exc}") from None
        try:
            profile = profiles.get(run.path, run.run_id, rec.machine_type, rec.section, sr, channel)
        except ProfileError as exc:
            raise api_error(409, "no_training_data", str(exc)) from None
        normal = align(profile.mean, spec.db.shape[0])
        diff = difference(spec.db, profile.mean)
        stacked = np.stack([spec.db, normal, diff], axis=1).astype(np.float64)  # (T, 3, n_mels)
        pooled, starts = pool_time(stacked, columns)
        times, _ = pool_time(spec.times_s, columns)
        step = int(starts[1] - starts[0]) if len(starts) > 1 else 1
        return SpectrogramOut(times_s=np.round(times, 4).tolist(), mel_hz=np.round(spec.mel_hz, 1).tolist(),
                              frames_per_column=step, recording=_round(pooled[:, 0]), normal=_round(pooled[:, 1]),
                              difference=_round(pooled[:, 2]), n_normal_clips=profile.n_clips,
                              normal_sections="all" if profile.all_sections else "own", run_id=run.run_id,
                              sample_rate=sr)

    @router.get("/v1/recordings/{recording_id}/spectrogram", response_model=SpectrogramOut,
                responses={404: {"model": error_model}, 409: {"model": error_model}},
                summary="A recording's log-mel beside its run's average normal log-mel, and their difference")
    async def spectrogram_view(recording_id: int, columns: int = Query(
            MAX_COLUMNS, ge=1, le=5000, description="at most this many time columns (frames are mean-pooled)")
    ) -> SpectrogramOut:
        return await run_in_threadpool(spectrogram, recording_id, columns)

    return router


__all__ = ["MAX_COLUMNS", "RecordingOut", "SpectrogramOut", "recordings_router"]
