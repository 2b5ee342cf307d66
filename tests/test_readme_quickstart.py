"""README's own-recordings quick start, run as written: the `stetho` lines of the block after the
``<!-- quickstart -->`` marker, on a folder of healthy toy pump recordings with plain names."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

from stetho import cli
from stetho.synth import make_toy_dataset

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart_commands() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- quickstart[^>]*-->\s*```sh\n(.*?)```", text, re.S)
    assert block, "README has no quickstart block"
    lines = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    return [shlex.split(line) for line in lines if line]


def test_the_readme_quickstart_trains_on_a_folder_and_scores_a_new_file(tmp_path, monkeypatch, capsys):
    commands = quickstart_commands()
    assert [c[:2] for c in commands] == [["stetho", "train"], ["stetho", "score"]]
    toy = tmp_path / "toy"
    make_toy_dataset(toy, machines=["pump"], train_clips=24, target_train_clips=0, test_clips=2, duration=2.0, seed=3)
    train = tmp_path / "recordings" / "pump" / "train"
    train.mkdir(parents=True)
    for i, wav in enumerate(sorted((toy / "pump" / "train").glob("*.wav"))):
        shutil.copy(wav, train / f"2026-03-{i + 1:02d}_0800.wav")  # the names a recorder gives, not DCASE's
    anomaly = sorted((toy / "pump" / "test").glob("*anomaly*.wav"))[0]
    shutil.copy(anomaly, tmp_path / "new.wav")
    monkeypatch.chdir(tmp_path)
    assert cli.main(commands[0][1:]) == 0
    capsys.readouterr()
    assert cli.main(commands[1][1:] + ["--json"]) == 0
    import json

    (verdict,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]  # JSON lines
    assert verdict["file"] == "new.wav" and verdict["machine_type"] == "pump"
    assert verdict["default_mode"] == "density" and set(verdict["modes"]) == {"density", "knn", "mahalanobis", "gmm"}
    for mode in verdict["modes"].values():
        assert mode["decision"] == (mode["score"] > mode["threshold"])
    assert cli.main(commands[1][1:]) == 0  # the table the README describes
    out = capsys.readouterr().out
    assert "new.wav" in out and ("ANOMALY" in out or "normal" in out)


def _headings(path: Path) -> set[str]:
    """GitHub's anchors of the Markdown headings of ``path`` (code blocks skipped)."""
    anchors, fenced = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            text = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_every_link_between_readme_and_the_docs_finds_its_heading():
    docs = README.parent / "docs"
    files = [README, *sorted(docs.glob("*.md"))]
    assert len(files) > 1
    broken = []
    for path in files:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", path.read_text(encoding="utf-8")):
            if "://" in target:
                continue  # a web page: not ours to check offline
            dest = (path.parent / target).resolve() if target else path
            if not dest.is_file() or anchor not in _headings(dest):
                broken.append(f"{path.name}: ({target}#{anchor})")
    assert broken == []
