"""The fleet dashboard (stetho.monitor.dashboard, stetho.monitor.fleet) as a person uses it: the real
service on uvicorn (127.0.0.1, a SQLite file, an audio archive) over a tiny toy `stats` run, three
assets posted over HTTP (OK, WARNING, ALARM), and the pages opened in headless Chromium driven by
Selenium. The numbers on the pages are compared with the database; screenshots (desktop and phone,
each page) go to $STETHO_DASHBOARD_SCREENSHOTS or build/dashboard_screenshots/.

The browser tests skip, saying why, where Chromium or chromedriver is missing (`make test` installs
them); the status rule, the fleet's order and the login/protect-reads rules are also tested
without a browser."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import numpy as np
import pytest

from monitor_toy import run_dir, scorer  # noqa: F401 (fixtures)
from stetho.monitor.alerts import AlertRules
from stetho.monitor.archive import AudioArchive
from stetho.monitor.dashboard import COOKIE, cookie_value
from stetho.monitor.db import open_database
from stetho.monitor.fleet import asset_status, fleet
from stetho.monitor.service import create_app
from stetho.synth import make_toy_dataset
from test_monitor_service import AUTH, TOKEN, Server, wav

ROOT = Path(__file__).resolve().parents[1]
SHOTS = Path(os.environ.get("STETHO_DASHBOARD_SCREENSHOTS") or ROOT / "build" / "dashboard_screenshots")
RULES = AlertRules(k=2, n=3)  # two anomalous of the last three alarm: a small toy fleet shows every status
REFRESH = 0.5  # seconds between the pages' polls (the default is 5; short here so the test waits little)
DESKTOP, PHONE = (1280, 900), (390, 844)


# ---------------------------------------------------------------------------------------------
# The status rule, without a browser


def test_the_status_rule():
    assert asset_status(1, [False, False, False]) == "ALARM"
    assert asset_status(2, []) == "ALARM"
    assert asset_status(0, [False, True, False]) == "WARNING"
    assert asset_status(0, [False, False, False]) == "OK"
    assert asset_status(0, []) == "OK"  # no verdict yet
    with pytest.raises(ValueError):
        asset_status(-1, [])


# ---------------------------------------------------------------------------------------------
# The toy fleet: press-ok (3 normal recordings), fan-warn (2 normal, then 1 anomalous: no alert
# with k=2), fan-alarm (1 normal, then 2 anomalous: a k-of-n alert per score mode that flags them)


@pytest.fixture(scope="module")
def clips(tmp_path_factory, run_dir) -> dict[str, bytes]:  # noqa: F811
    """Recordings as bytes: the toy test clips the run scores normal, and white noise (anomalous)."""
    root = tmp_path_factory.mktemp("toy_clips")
    make_toy_dataset(root, machines=["fan"], train_clips=8, target_train_clips=2, test_clips=2, duration=1.0, seed=0)
    out = {p.stem: p.read_bytes() for p in sorted((root / "fan" / "test").glob("*normal*.wav"))}
    for seed in (1, 2, 3):
        out[f"noise_{seed}"] = wav(seed)
    return out


NORMALS = ["section_00_source_test_normal_0000_spd_20_load_1", "section_00_source_test_normal_0001_spd_20_load_2",
           "section_00_target_test_normal_0000_spd_26_load_1", "section_00_target_test_normal_0001_spd_26_load_2"]
PLAN = {"press-ok": NORMALS[:3], "fan-warn": NORMALS[1:3] + ["noise_1"], "fan-alarm": NORMALS[3:] + ["noise_2", "noise_3"]}
START = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=3)


def post(client: httpx.Client, clips: dict[str, bytes], asset: str, name: str, when: datetime) -> dict:
    r = client.post("/v1/score", headers=AUTH, files={"file": (f"{name}.wav", clips[name], "audio/wav")},
                    data={"asset": asset, "machine_type": "fan", "recorded_at": when.isoformat()})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def fleet_db(tmp_path_factory):
    with open_database(f"sqlite:///{tmp_path_factory.mktemp('dash') / 'monitor.db'}") as db:
        yield db


@pytest.fixture(scope="module")
def service(scorer, fleet_db, clips, tmp_path_factory):  # noqa: F811
    """The service with the toy fleet stored: (base URL, httpx client, {asset: [posted responses]})."""
    archive = AudioArchive(tmp_path_factory.mktemp("audio"))
    app = create_app(scorer, fleet_db, TOKEN, rules=RULES, archive=archive, refresh_seconds=REFRESH)
    with Server(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        posted: dict[str, list[dict]] = {}
        for i, (asset, names) in enumerate(PLAN.items()):
            for j, name in enumerate(names):
                posted.setdefault(asset, []).append(post(client, clips, asset, name,
                                                         START + timedelta(minutes=10 * j + i)))
        yield server.url, client, posted


def test_the_fleet_is_worst_first_with_the_database_numbers(service, fleet_db, scorer):  # noqa: F811
    _, client, posted = service
    assert posted["fan-alarm"][-1]["alerts"], "the toy fleet needs an alert on fan-alarm"
    fleet = client.get("/v1/fleet").json()
    assert [(a["asset"], a["status"]) for a in fleet] == [("fan-alarm", "ALARM"), ("fan-warn", "WARNING"),
                                                          ("press-ok", "OK")]
    mode = scorer.default_mode("fan")
    for tile in fleet:
        rows = fleet_db.verdicts(tile["asset"], score_mode=mode)
        assert tile["machine_type"] == "fan" and tile["default_mode"] == mode and tile["n"] == RULES.n
        assert tile["last"]["score"] == rows[0].score and tile["last"]["threshold"] == rows[0].threshold
        assert [p["score"] for p in tile["recent"]] == [r.score for r in reversed(rows)]
        assert {a["id"] for a in tile["open_alerts"]} == {a.id for a in fleet_db.alerts(open_only=True)
                                                          if a.asset == tile["asset"]}


def test_an_asset_of_a_machine_type_no_run_serves_keeps_its_tile(service, fleet_db):
    """fleet() falls back to the mode of the asset's newest verdict when default_mode raises."""
    from stetho.errors import ScoringError

    def unknown(machine_type: str) -> str:
        raise ScoringError("unknown_machine_type", "<request>", f"machine type '{machine_type}' is not served")

    tiles = {t.asset: t for t in fleet(fleet_db, unknown, n=RULES.n)}
    newest = fleet_db.verdicts("fan-warn", limit=1)[0]
    assert tiles["fan-warn"].default_mode == newest.score_mode and tiles["fan-warn"].last == newest
    assert set(tiles) == {"press-ok", "fan-warn", "fan-alarm"}


def test_static_files_are_served_here_gzipped_and_cached(service):
    _, client, _ = service
    page = client.get("/").text
    assert "http://" not in page and "https://" not in page  # no CDN, no web font: everything from stetho
    plotly = client.get("/static/plotly.min.js", headers={"Accept-Encoding": "gzip"})
    assert plotly.status_code == 200 and plotly.headers["content-encoding"] == "gzip"
    assert "max-age=31536000" in plotly.headers["cache-control"]
    assert int(plotly.headers["content-length"]) < 0.4 * len(plotly.content)  # httpx decoded it
    assert plotly.content.startswith(b"/**") and b"plotly" in plotly.content[:2000].lower()
    assert client.get("/static/../service.py").status_code == 404
    plain = client.get("/static/dashboard.css", headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200 and "content-encoding" not in plain.headers
    assert plain.content == (ROOT / "stetho" / "monitor" / "static" / "dashboard.css").read_bytes()  # as is


def test_protect_reads_needs_the_token_or_the_login_cookie(scorer, fleet_db):  # noqa: F811
    app = create_app(scorer, fleet_db, TOKEN, rules=RULES, protect_reads=True)
    with Server(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/v1/fleet").status_code == 401
        assert client.get("/v1/fleet", headers=AUTH).status_code == 200
        assert client.get("/metrics").status_code == 401
        assert client.get("/healthz").status_code == 200 and client.get("/static/dashboard.js").status_code == 200
        page = client.get("/assets/fan-alarm?x=1")
        assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Fassets%2Ffan-alarm%3Fx%3D1"
        wrong = client.post("/login", data={"token": "nope", "next": "/"})
        assert wrong.status_code == 401 and COOKIE not in wrong.cookies
        evil = client.post("/login", data={"token": TOKEN, "next": "//evil.example/"})
        assert evil.status_code == 303 and evil.headers["location"] == "/"
        cookie = evil.headers["set-cookie"]
        assert f"{COOKIE}={cookie_value(TOKEN)}" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert TOKEN not in cookie  # an HMAC of the token, never the token itself
        assert client.get("/v1/fleet").status_code == 200  # the cookie now rides along
        assert client.get("/").status_code == 200
        # the cookie is not the bearer token: it cannot be replayed as one
        assert httpx.get(f"{server.url}/v1/fleet", headers={"Authorization": f"Bearer {cookie_value(TOKEN)}"}
                         ).status_code == 401


def test_the_login_cookie_acknowledges_but_does_not_score(scorer, fleet_db, clips):  # noqa: F811
    app = create_app(scorer, fleet_db, TOKEN, rules=RULES)
    with Server(app) as server, httpx.Client(base_url=server.url, timeout=30,
                                              cookies={COOKIE: cookie_value(TOKEN)}) as client:
        assert client.post("/v1/alerts/999999/ack").status_code == 404  # authorised, no such alert
        assert client.post("/v1/score", content=clips["noise_1"], params={"asset": "x"}).status_code == 401
        client.cookies.set(COOKIE, "forged")
        assert client.post("/v1/alerts/999999/ack").status_code == 401


# ---------------------------------------------------------------------------------------------
# In the browser


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("the browser tests need Chromium and chromedriver (Debian: chromium, chromium-driver; "
                    "`make test` installs them)")
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={DESKTOP[0]},{DESKTOP[1]}", "--hide-scrollbars", "--mute-audio"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=DriverService(driver_path))
    driver.set_script_timeout(20)
    yield driver
    driver.quit()


def wait_for(driver, script: str, *args, timeout: float = 15.0):
    """Run ``script`` (a JS expression's body returning a value) until it returns something truthy."""
    from selenium.common.exceptions import JavascriptException

    deadline, value = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            value = driver.execute_script(script, *args)
        except JavascriptException as exc:  # e.g. the element is not there yet: the page is still loading
            value = exc.msg
        else:
            if value:
                return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for: {script} (last: {value!r}) on {driver.current_url}")


def shoot(driver, name: str) -> None:
    """Desktop and phone screenshots of the open page (the whole page height), and the phone layout
    must not overflow sideways."""
    SHOTS.mkdir(parents=True, exist_ok=True)

    def viewport(width: int, height: int, mobile: bool) -> None:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})
        time.sleep(0.4)  # Plotly's responsive charts redraw on the resize

    for label, (width, height) in (("desktop", DESKTOP), ("phone", PHONE)):
        viewport(width, height, label == "phone")
        scroll, inner = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert inner == width and scroll <= inner, f"{name} ({label}): the page is {scroll} px wide in {inner} px"
        viewport(width, max(height, min(driver.execute_script("return document.documentElement.scrollHeight"), 4000)),
                 label == "phone")
        driver.save_screenshot(str(SHOTS / f"{name}_{label}.png"))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


TILE = "document.querySelector(`.tile[data-asset='${arguments[0]}']`)"


def tile_facts(driver) -> list[dict]:
    return driver.execute_script("""return [...document.querySelectorAll('.tile')].map((t) => {
        const spark = t.querySelector('.spark');
        return {asset: t.dataset.asset, status: t.querySelector('.status').textContent,
                machine_type: t.querySelector('.machine-type').textContent,
                score: t.querySelector('.last-score').textContent, threshold: t.querySelector('.threshold').textContent,
                points: spark.data ? spark.data[0].y.length : null,
                thresholds: spark.data ? spark.data[1].y : null};
    })""")


def test_the_dashboard_in_a_browser(service, browser, fleet_db, scorer, clips):  # noqa: F811
    from selenium.webdriver.support.select import Select

    url, client, posted = service
    driver, mode = browser, scorer.default_mode("fan")

    # -- the fleet: worst first, the database's numbers, sparklines with every point
    driver.get(url + "/")
    wait_for(driver, "return [...document.querySelectorAll('.tile .spark')].filter((s) => s.data).length === 3")
    tiles = tile_facts(driver)
    assert [(t["asset"], t["status"]) for t in tiles] == [("fan-alarm", "ALARM"), ("fan-warn", "WARNING"),
                                                          ("press-ok", "OK")]
    for t in tiles:
        rows = fleet_db.verdicts(t["asset"], score_mode=mode)
        assert t["machine_type"].startswith("fan") and t["score"] == f"{rows[0].score:.4g}"
        assert t["threshold"] == f"{rows[0].threshold:.4g}"
        assert t["points"] == len(PLAN[t["asset"]]) and t["thresholds"][-1] == rows[0].threshold
    assert wait_for(driver, "return document.getElementById('updated').textContent").startswith("updated ")
    shoot(driver, "fleet")

    # -- live: a new verdict appears without a reload (the page keeps its window marker)
    driver.execute_script("window.__same_page = true")
    new = post(client, clips, "press-ok", NORMALS[3], datetime.now(timezone.utc).replace(microsecond=0))
    wait_for(driver, f"return {TILE}.querySelector('.spark').data[0].y.length === 4", "press-ok")
    assert driver.execute_script("return window.__same_page") is True
    assert driver.execute_script(f"return {TILE}.querySelector('.last-score').textContent", "press-ok") == \
        f"{new['modes'][mode]['score']:.4g}"
    # press-ok now has the newest recording, but fan-warn (WARNING) still comes before it (OK)
    assert [t["asset"] for t in tile_facts(driver)] == ["fan-alarm", "fan-warn", "press-ok"]

    # -- click through to the asset page: trend with every point, the threshold line, the alerts marked
    driver.find_element("css selector", ".tile[data-asset='fan-alarm']").click()
    wait_for(driver, "return location.pathname === '/assets/fan-alarm'")
    trend = wait_for(driver, "const d = document.getElementById('trend').data; return d && d[0].y.length && d")
    rows = fleet_db.verdicts("fan-alarm", score_mode=mode)
    assert trend[0]["y"] == [r.score for r in reversed(rows)] and trend[1]["y"] == [r.threshold for r in reversed(rows)]
    open_alerts = [a for a in fleet_db.alerts(open_only=True) if a.asset == "fan-alarm"]
    assert len(trend[2]["y"]) == sum(a.score_mode == mode for a in open_alerts) >= 1
    table = driver.execute_script("return [...document.querySelectorAll('#recordings tbody tr')].map("
                                  "(r) => [...r.cells].map((c) => c.textContent))")
    assert [row[1] for row in table] == [f"{r.score:.4g}" for r in rows]
    assert [row[3] for row in table] == ["anomalous" if r.decision else "normal" for r in rows]
    buttons = wait_for(driver, "return document.querySelectorAll('button.ack').length")
    assert buttons == len(open_alerts)
    Select(driver.find_element("id", "period")).select_by_value("all")  # a longer period: the same 3 recordings
    wait_for(driver, "const d = document.getElementById('trend').data; return d[0].y.length === 3")
    shoot(driver, "asset")

    # -- a recording: spectrograms of the endpoint's shape, the audio loads, the verdict per mode
    newest = rows[0].recording_id
    driver.find_element("css selector", f"#recordings tr[data-recording='{newest}'] a").click()
    wait_for(driver, f"return location.pathname === '/recordings/{newest}'")
    spec = client.get(f"/v1/recordings/{newest}/spectrogram").json()
    for which in ("recording", "normal", "difference"):
        z = wait_for(driver, f"const d = document.getElementById('spec-{which}').data; return d && d[0].z")
        assert np.shape(z) == (len(spec["times_s"]), len(spec["mel_hz"])) and z == spec[which]
    layout = driver.execute_script("return document.getElementById('spec-recording').layout.yaxis")
    top = len(spec["mel_hz"]) - 1  # bands evenly spaced, labelled with their centre frequency
    assert layout["tickvals"][0] == 0 and layout["tickvals"][-1] == top
    assert layout["ticktext"][-1] == f"{spec['mel_hz'][top] / 1000:.1f} k"
    audio = wait_for(driver, "const a = document.getElementById('audio'); return a.readyState >= 1 && a.currentSrc")
    got = client.get(audio)
    assert got.status_code == 200 and got.content == clips["noise_3"]
    modes = driver.execute_script("return [...document.querySelectorAll('#verdicts tbody tr')].map("
                                  "(r) => [r.dataset.mode, r.cells[1].textContent])")
    assert sorted(map(tuple, modes)) == sorted((v.score_mode, f"{v.score:.4g}") for v in fleet_db.recording_verdicts(newest))
    shoot(driver, "recording")

    # -- acknowledge from the asset page: no cookie yet, so the login page asks for the token first
    driver.get(url + "/assets/fan-alarm")
    wait_for(driver, "return document.querySelectorAll('button.ack').length")
    driver.find_element("css selector", "button.ack").click()
    wait_for(driver, "return location.pathname === '/login'")
    driver.find_element("id", "token").send_keys(TOKEN)
    driver.find_element("id", "login-submit").click()
    wait_for(driver, "return location.pathname === '/assets/fan-alarm'")
    for _ in open_alerts:
        wait_for(driver, "const b = document.querySelector('button.ack:not([disabled])'); return b && (b.click(), true)")
        time.sleep(0.3)
    wait_for(driver, "return document.getElementById('alerts-box').hidden")
    acked = {a.id: a for a in fleet_db.alerts(ids=[a.id for a in open_alerts])}
    assert all(a.acknowledged_at is not None and a.acknowledged_by == "dashboard" for a in acked.values())
    driver.get(url + "/")
    wait_for(driver, f"return {TILE}.querySelector('.status').textContent === 'WARNING'", "fan-alarm")
    assert "ALARM" not in [t["status"] for t in tile_facts(driver)]


def test_the_pages_say_when_the_service_is_unreachable(scorer, fleet_db, browser):  # noqa: F811
    server = Server(create_app(scorer, fleet_db, TOKEN, rules=RULES, refresh_seconds=REFRESH)).__enter__()
    try:
        browser.get(server.url + "/")
        wait_for(browser, "return document.querySelectorAll('.tile').length === 3")
    finally:
        server.__exit__(None)
    banner = wait_for(browser, "const b = document.getElementById('banner'); return !b.hidden && b.textContent")
    assert "unreachable" in banner and len(browser.find_elements("css selector", ".tile")) == 3  # old data stay


def test_protect_reads_in_the_browser(scorer, fleet_db, browser):  # noqa: F811
    app = create_app(scorer, fleet_db, TOKEN, rules=RULES, protect_reads=True, refresh_seconds=REFRESH)
    with Server(app) as server:
        browser.execute_cdp_cmd("Network.clearBrowserCookies", {})  # the earlier login (same host, other port)
        browser.get(server.url + "/assets/press-ok")
        wait_for(browser, "return location.pathname === '/login'")
        browser.find_element("id", "token").send_keys("not the token")
        browser.find_element("id", "login-submit").click()
        assert "not the service's API token" in wait_for(
            browser, "const e = document.getElementById('login-error'); return e && e.textContent")
        shoot(browser, "login")
        browser.find_element("id", "token").send_keys(TOKEN)
        browser.find_element("id", "login-submit").click()
        wait_for(browser, "return location.pathname === '/assets/press-ok'")
        wait_for(browser, "const d = document.getElementById('trend').data; return d && d[0].y.length >= 3")


def test_stetho_serve_protect_reads(run_dir, tmp_path):  # noqa: F811
    """The command a user runs: `stetho serve RUN --protect-reads` keeps pages and the API closed."""
    from test_monitor_service import _free_port

    port = _free_port()
    env = {**os.environ, "STETHO_API_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "stetho.cli", "serve", str(run_dir), "--db",
                             f"sqlite:///{tmp_path / 'm.db'}", "--port", str(port), "--archive", "none",
                             "--protect-reads", "--refresh-seconds", "2"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "stetho serve did not start"
            time.sleep(0.2)
        assert httpx.get(f"{url}/v1/fleet").status_code == 401
        assert httpx.get(f"{url}/v1/fleet", headers=AUTH).json() == []
        assert httpx.get(f"{url}/").headers["location"] == "/login?next=%2F"
        login = httpx.post(f"{url}/login", data={"token": TOKEN, "next": "/"})
        page = httpx.get(f"{url}/", cookies=login.cookies)
        assert page.status_code == 200 and 'data-refresh-ms="2000"' in page.text
    finally:
        proc.terminate()
        proc.wait(10)
