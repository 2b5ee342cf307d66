"""The toy synthesiser's output is pinned byte for byte: one SHA-256 over every file it writes.

The digest was computed before the synthesiser moved from ``stetho/datasets/toy.py`` to the
``stetho.synth`` package; a refactor that changes a single sample or a CSV byte fails here. A
deliberate change of the sounds updates ``DIGEST`` (and says so in the changelog: the toy data of
the same seed is then different).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from stetho.synth import DOMAIN_SHIFTS, MACHINES, make_toy_dataset

#: Every machine type (each renderer and its own faults), source and target domains, train and
#: test, normal and anomalous clips, short clips to keep it fast.
SETTINGS = dict(machines=list(MACHINES), train_clips=2, target_train_clips=1, test_clips=4, duration=0.5, seed=7)

#: SHA-256 over (relative path, bytes) of every file, for each ``domain_shift``, in sorted order.
DIGEST = "5e12489051a7070e951e5bdb8d04e433f63609a32c659a3f3eab1919e5007b9d"


def _digest(roots: dict[str, Path]) -> str:
    h = hashlib.sha256()
    for shift, root in roots.items():
        for p in sorted(root.rglob("*")):
            if p.is_file():
                name = f"{shift}/{p.relative_to(root).as_posix()}".encode()
                data = p.read_bytes()
                h.update(len(name).to_bytes(8, "little") + name + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def test_every_domain_shift_is_covered():
    assert sorted(DOMAIN_SHIFTS) == ["factory", "mild", "strong"]


def test_the_toy_dataset_is_byte_identical_to_the_stored_checksum(tmp_path):
    roots = {}
    for shift in sorted(DOMAIN_SHIFTS):
        roots[shift] = tmp_path / shift
        clips = make_toy_dataset(roots[shift], domain_shift=shift, **SETTINGS)
        assert {c.label for c in clips} == {0, 1} and {c.domain for c in clips} == {"source", "target"}
    assert _digest(roots) == DIGEST
