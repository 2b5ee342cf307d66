"""The fleet dashboard that ``stetho serve`` shows in a browser: HTML pages over the service's JSON.

Pages (Jinja2 templates in ``stetho/monitor/templates/``; the data come from the JSON endpoints,
polled every ``refresh_seconds`` by ``static/dashboard.js`` and updated in place):

- ``/``: one tile per asset, worst first (``GET /v1/fleet``);
- ``/assets/{asset}``: its score trend over a chosen period, its recent recordings and open
  alerts, which can be acknowledged there;
- ``/recordings/{id}``: its log-mel spectrogram beside the average normal one and their
  difference, an audio player and its verdict per score mode;
- ``/login``: paste the API token once; the browser then holds it as a cookie.

Everything a page loads is served by stetho itself from ``/static/`` (its CSS and JS, and
Plotly.js from the ``plotly`` package), so the dashboard works without internet access.

Login: the cookie holds an HMAC of the token (:func:`cookie_value`), never the token itself, so
it cannot be replayed as ``Authorization: Bearer``; changing the token logs every browser out.
The cookie is HttpOnly (no script reads it) and SameSite=Strict, which is what makes accepting it
for ``POST /v1/alerts/{id}/ack`` safe against cross-site request forgery: a browser never
attaches it to a request another site starts.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

import stetho

#: Name of the login cookie.
COOKIE = "stetho_session"

#: Paths a ``--protect-reads`` service still answers without the token.
OPEN_PATHS = ("/healthz", "/login")
OPEN_PREFIXES = ("/static/",)

#: Paths answered with a JSON 401 rather than a redirect to the login page.
API_PREFIXES = ("/v1/", "/metrics", "/openapi.json")

_TEMPLATES = Jinja2Templates(directory=str(resources.files("stetho.monitor") / "templates"))
_CACHE_FOREVER = "public, max-age=31536000, immutable"  # every URL carries its content hash: ?v=...


def cookie_value(token: str) -> str:
    """What the login cookie holds for ``token``: HMAC-SHA256 of a fixed label, keyed by the token."""
    return hmac.new(token.strip().encode(), b"stetho dashboard login", hashlib.sha256).hexdigest()


def has_access(request: Any, token: str) -> bool:
    """True when ``request`` (a Starlette request) brings ``token`` as ``Authorization: Bearer`` or
    the login cookie; both compared in constant time."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return hmac.compare_digest(header[7:].strip().encode(), token.strip().encode())
    cookie = request.cookies.get(COOKIE)
    return cookie is not None and hmac.compare_digest(cookie.encode(), cookie_value(token).encode())


def has_cookie(request: Any, token: str) -> bool:
    """True when ``request`` brings a valid login cookie (only the cookie counts)."""
    cookie = request.cookies.get(COOKIE)
    return cookie is not None and hmac.compare_digest(cookie.encode(), cookie_value(token).encode())


class ReadGuard:
    """Pure ASGI middleware of ``--protect-reads``: every ``GET``/``HEAD`` except ``/healthz``,
    ``/login`` and ``/static/*`` needs the token (header or login cookie). Without it the JSON
    API answers 401, a page redirects to ``/login?next=<the page>``."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        from starlette.requests import Request as StarletteRequest

        path = scope.get("path", "")
        if (scope["type"] != "http" or scope["method"] not in ("GET", "HEAD") or path in OPEN_PATHS
                or path.startswith(OPEN_PREFIXES) or has_access(StarletteRequest(scope), self.token)):
            await self.app(scope, receive, send)
            return
        if path.startswith(API_PREFIXES):
            response: Response = JSONResponse(
                {"error": "unauthorized", "detail": "this service protects reads: send Authorization: Bearer "
                                                    "<token>, or log in at /login"},
                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        else:
            query = scope.get("query_string", b"").decode("latin-1")
            response = RedirectResponse(f"/login?next={quote(path + ('?' + query if query else ''), safe='')}",
                                        status_code=303)
        await response(scope, receive, send)


@dataclass(frozen=True)
class _Static:
    body: bytes
    gzipped: bytes
    media_type: str
    version: str


@cache
def _static(name: str) -> _Static | None:
    """A file of ``/static/``: Plotly.js from the ``plotly`` package, else ``stetho/monitor/static/NAME``;
    read and gzipped once per process."""
    if name == "plotly.min.js":
        source = resources.files("plotly") / "package_data" / "plotly.min.js"
    else:
        source = resources.files("stetho.monitor") / "static" / name
        if "/" in name or name.startswith(".") or not source.is_file():
            return None
    body = source.read_bytes()
    media = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}.get(name.rsplit(".", 1)[-1],
                                                                                      "application/octet-stream")
    return _Static(body, gzip.compress(body, 6, mtime=0), f"{media}; charset=utf-8" if media.startswith("text")
                   else media, hashlib.sha256(body).hexdigest()[:12])


def static_url(name: str) -> str:
    """``/static/NAME?v=<content hash>``: cached for a year by browsers, new URL when it changes."""
    found = _static(name)
    return f"/static/{name}" + (f"?v={found.version}" if found else "")


def dashboard_router(token: str, refresh_seconds: float = 5.0, protect_reads: bool = False) -> APIRouter:
    """The dashboard's pages, login and static files, to include in the service's app.

    Args:
        token: the service's API token (the login page checks it; the cookie is derived from it).
        refresh_seconds: how often the pages poll the JSON endpoints.
        protect_reads: whether the service protects reads (the pages say so; the guard itself is
            :class:`ReadGuard`).
    """
    if not refresh_seconds > 0:
        raise ValueError(f"refresh_seconds must be above 0, got {refresh_seconds}")
    router = APIRouter(include_in_schema=False)

    def page(request: Request, template: str, **context: Any) -> HTMLResponse:
        return _TEMPLATES.TemplateResponse(request, template, {
            "static_url": static_url, "refresh_ms": int(refresh_seconds * 1000), "version": stetho.__version__,
            "logged_in": has_cookie(request, token), "protect_reads": protect_reads, "plain": False, **context})

    @router.get("/", response_class=HTMLResponse)
    async def fleet_page(request: Request) -> HTMLResponse:
        return page(request, "fleet.html", title="Fleet")

    @router.get("/assets/{asset}", response_class=HTMLResponse)
    async def asset_page(request: Request, asset: str) -> HTMLResponse:
        return page(request, "asset.html", title=asset, asset=asset)

    @router.get("/recordings/{recording_id}", response_class=HTMLResponse)
    async def recording_page(request: Request, recording_id: int) -> HTMLResponse:
        return page(request, "recording.html", title=f"Recording {recording_id}", recording_id=recording_id)

    @router.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request, next: str = "/", why: str = "") -> HTMLResponse:
        return page(request, "login.html", title="Log in", plain=True, next=_safe_next(next), why=why, error="")

    @router.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=3)
        given, target = str(form.get("token") or "").strip(), _safe_next(str(form.get("next") or "/"))
        if not hmac.compare_digest(given.encode(), token.strip().encode()):
            response = page(request, "login.html", title="Log in", plain=True, next=target, why="",
                            error="That is not the service's API token." if given else "Paste the API token.")
            response.status_code = 401
            return response
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, cookie_value(token), httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
        return response

    @router.post("/logout")
    async def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    @router.get("/static/{name}")
    async def static(request: Request, name: str) -> Response:
        found = _static(name)
        if found is None:
            return JSONResponse({"error": "not_found", "detail": f"no static file {name!r}"}, status_code=404)
        headers = {"Cache-Control": _CACHE_FOREVER, "Vary": "Accept-Encoding", "ETag": f'"{found.version}"'}
        if request.headers.get("if-none-match") == f'"{found.version}"':
            return Response(status_code=304, headers=headers)
        if "gzip" in request.headers.get("accept-encoding", ""):
            return Response(found.gzipped, media_type=found.media_type, headers={**headers, "Content-Encoding": "gzip"})
        return Response(found.body, media_type=found.media_type, headers=headers)

    return router


def _safe_next(target: str) -> str:
    """Only a path on this site may follow the login (no ``//host`` or ``http://``: no open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


__all__ = ["COOKIE", "ReadGuard", "cookie_value", "dashboard_router", "has_access", "static_url"]
