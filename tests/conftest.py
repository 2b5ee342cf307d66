"""Shared pytest fixtures.

* ``real_data``: the folder of real machine recordings kept next to the repository
  (``../shared/data/real``); tests using it are skipped in a clone that does not have it.
* ``one_torch_thread`` (module scope): torch on one thread while a module's tests run; tiny
  networks train fastest so and do not stall when other processes share the cores.
* An autouse session fixture points ``STETHO_CACHE_DIR`` at a temporary folder so no test ever
  writes to the user's ``~/.cache``.
* ``postgresql_server`` / ``postgresql_database`` / ``database_url`` (from ``tests/pg.py``): a
  throw-away PostgreSQL server for the session, a fresh database per test, and a URL parametrised
  over SQLite and PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pg import database_url, postgresql_database, postgresql_server  # noqa: F401 (fixtures)

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """``../shared/data/real`` (see its README.md), or skip the test when it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip("../shared/data/real not present (a user's clone has no shared data)")
    return REAL_DATA


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache_dir(tmp_path_factory):
    """Send every cache write of the test session to a temporary folder, not ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("STETHO_CACHE_DIR", str(tmp_path_factory.mktemp("stetho_cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch limited to one intra-op thread for the module's tests (restored afterwards)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
