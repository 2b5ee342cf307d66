"""Calibrated vs official decision thresholds on real recordings: the share of held-out normal
test clips each model and score mode flags (issue 14).

    OMP_NUM_THREADS=1 python bench/calibration_real.py OUT [--models ae,arae,cande,bigan,discriminative]
        [--datasets slider,gearbox,mimii_fan] [--seeds 13711,1] [--thresholds calibrated,official]
        [--data-root DIR] [--disc-epochs 40]

For every dataset, model, seed and threshold kind (``calibrated``: the default held-out
calibration, ``decision_fpr`` 0.1; ``official``: the DCASE baselines' in-sample Gamma(0.9) fit)
it trains a small CPU-sized model with ``stetho train`` into ``OUT/runs/<dataset>/<model>/
<threshold>_seed<seed>/``, tests it with ``stetho test --score all`` and reads the decision files
(``bench/false_alarms.py``). Finished runs (``summary.csv`` present) are reused, so the script can
be stopped and started again; a failed training is recorded with its last error line. Prints a
markdown table (and writes it to ``OUT/calibration_real.md``): per dataset, model, score mode and
threshold kind, the share of normal test clips flagged (all / source / target), of anomalies
flagged, the number of normal test clips and of calibration clips (the clips the threshold was
fitted on: held out of training for ``calibrated``, every training clip for ``official``). With
several seeds a cell is the mean over seeds with the per-seed values in brackets.

Datasets (under ``/work/shared/data/real`` or ``../shared/data/real``; the script exits with a
message when neither exists). None of the test clips is ever a training clip.

* ``slider``: DCASE2020 dev subset, slider id_00. Its test folder has 3 normal clips only, so a
  manifest (``OUT/manifests/slider.csv``) moves 20 of the 75 training normals (evenly spread over
  the sorted file names, leaving out the two names test/ also uses for other recordings) to the
  test split: 55 train / 23 test normals + 3 test anomalies.
* ``gearbox``: DCASE2021 dev subset as it is (31 source training clips in 3 sections, no target
  training clip; 9 + 9 normal and 9 + 10 anomalous test clips in source / target).
* ``mimii_fan``: MIMII fan id_00 (20 normal + 20 abnormal). MIMII's own rule puts every normal in
  the test split (as many test normals as anomalies), so a manifest
  (``OUT/manifests/mimii_fan.csv``) keeps the 10 last normals by name as training reference and
  tests the first 10 normals + the 20 anomalies.

CPU settings (small on purpose, 2 shared cores): see ``MODEL_ARGS``. The discriminative model
uses the CPU recipe's parameters with ``--disc-epochs`` epochs (ensemble of the last three
even epochs ending at it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from false_alarms import false_alarms  # noqa: E402

DATASETS = ("slider", "gearbox", "mimii_fan")
MODELS = ("ae", "arae", "cande", "bigan", "discriminative")
SEEDS = (13711, 1)
THRESHOLDS = ("calibrated", "official")

BIGAN = {"n_mels": 128, "patch_frames": 64, "patch_hop": 8, "latent": 16, "enc_channels": "[4,8,8]",
         "gen_hidden": 64, "gen_channels": "[8,4]", "dis_channels": 8, "dis_z_hidden": 32, "dis_feature": 64,
         "batch_size": 32, "lr": 1.0e-4}


def model_args(model: str, disc_epochs: int) -> list[str]:
    """``stetho train`` arguments of the small CPU settings of each model."""
    if model == "ae":
        return ["--epochs", "30"]
    if model == "arae":
        return ["--epochs", "5", "--param", "hidden=[64]", "--param", "latent=8", "--param", "steps=2",
                "--param", "eps=0.05", "--param", "batch_size=256", "--param", "lr=0.003"]
    if model == "cande":
        return ["--epochs", "20", "--param", "predictor_epochs=5", "--param", "predictor_hidden=[64,32]"]
    if model == "bigan":  # recipes/dcase2023_bigan_cpu.yaml
        return ["--epochs", "10"] + [a for k, v in BIGAN.items() for a in ("--param", f"{k}={v}")]
    if model == "discriminative":  # recipes/dcase2023_discriminative_cpu.yaml, epochs cut to disc_epochs
        ens = [disc_epochs - 8, disc_epochs - 4, disc_epochs] if disc_epochs >= 12 else [disc_epochs]
        return ["--epochs", str(disc_epochs), "--param", 'branches=["stft:1024:512","stft:256:128"]',
                "--param", "tile_seconds=1.5", "--param", "channels=[8,16,32,64]", "--param", "fft_channels=32",
                "--param", "batch_size=32", "--param", f"ensemble_epochs={ens}", "--param", "pseudo_labels=none"]
    raise ValueError(model)


def find_data_root(given: str | None) -> Path | None:
    cands = [Path(given)] if given else [Path("/work/shared/data/real"), HERE.parent.parent / "shared/data/real"]
    return next((p for p in cands if p.is_dir()), None)


def build_data(name: str, real: Path, out: Path) -> Path:
    """The ``--data`` of a dataset: its folder, or a manifest written into ``OUT/manifests``."""
    from stetho.datasets import scan_dataset
    from stetho.datasets.manifest import write_manifest
    from stetho.datasets.resplit import move_to_test, reference_normals

    if name == "gearbox":
        return real / "dcase2021t2_dev_subset"
    dest = out / "manifests" / f"{name}.csv"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if name == "slider":
        clips = move_to_test(scan_dataset(real / "dcase2020t2_dev_subset", machines=["slider"]).clips, 20)
        write_manifest(dest, clips, dataset="dcase2020")
    elif name == "mimii_fan":
        clips = scan_dataset(real / "mimii_fan_id00_subset", dataset="mimii").clips
        clips = reference_normals(clips, sum(c.label == 0 for c in clips) // 2)
        write_manifest(dest, clips, dataset="mimii")
    else:
        raise ValueError(name)
    return dest


def git_state(split: bool = False):
    """The repository's HEAD commit and whether stetho/ has uncommitted changes."""
    try:
        commit = subprocess.run(["git", "-C", str(HERE.parent), "log", "-1", "--format=%h"], capture_output=True,
                                text=True).stdout.strip() or "?"
        dirty = bool(subprocess.run(["git", "-C", str(HERE.parent), "status", "--short", "--", "stetho"],
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = "?", False
    return (commit, dirty) if split else commit + (" + uncommitted changes under stetho/" if dirty else "")


def run_one(data: Path, run: Path, model: str, seed: int, threshold: str, disc_epochs: int, log) -> str | None:
    """Train and test one run (reused when finished); the error's last line on failure."""
    if (run / "summary.csv").is_file() and (run / "test_files.csv").is_file():
        return None
    err = run.parent / f"{run.name}.error"
    if err.is_file():
        return err.read_text().strip()
    stetho = [str(Path(sys.executable).with_name("stetho"))]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    train = stetho + ["-q", "train", "--data", str(data), "--out", str(run), "--model", model, "--seed", str(seed),
                      "--threshold", threshold, "--device", "cpu", "--no-progress"]
    train += model_args(model, disc_epochs)
    test = stetho + ["-q", "test", "--run", str(run), "--score", "all", "--no-progress"]
    for cmd in ([] if any((run / "models").glob("*.pt")) else [train]) + [test]:
        t0 = time.time()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        log(f"  {' '.join(cmd[1:3])} {run.relative_to(run.parents[2])}: rc {p.returncode}, {time.time() - t0:.0f} s")
        if p.returncode != 0:
            lines = [x for x in (p.stderr or p.stdout).strip().splitlines() if x.strip()]
            msg = lines[-1] if lines else f"exit code {p.returncode}"
            if cmd is train:
                err.write_text(msg + "\n")
            return msg
        if cmd is train:
            (run / "calibration_real_commit.txt").write_text(git_state() + "\n")
    return None


def n_calibration(run: Path) -> int:
    from stetho.models import Detector

    return sum(len(Detector.load(p).calibration_["file"]) for p in sorted((run / "models").glob("*.pt")))


def fmt(values: list[float]) -> str:
    v = [x for x in values if x == x]
    if not v:
        return "–"
    if len(values) == 1:
        return f"{v[0]:.2f}"
    return f"{statistics.mean(v):.2f} ({'/'.join('–' if x != x else f'{x:.2f}' for x in values)})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--thresholds", default=",".join(THRESHOLDS))
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--disc-epochs", type=int, default=40)
    ap.add_argument("--no-train", action="store_true", help="only tabulate the runs already finished")
    a = ap.parse_args(argv)
    real = find_data_root(a.data_root)
    if real is None:
        print("calibration_real: no real recordings (/work/shared/data/real or ../shared/data/real); skipped")
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    a.out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    seeds = [int(s) for s in a.seeds.split(",")]
    rows = []
    for ds in a.datasets.split(","):
        data = build_data(ds, real, a.out)
        for model in a.models.split(","):
            for thr in a.thresholds.split(","):
                per_seed: dict[str, dict[str, list]] = {}
                ncal, errors, modes = [], [], []
                for seed in seeds:
                    run = a.out / "runs" / ds / model / f"{thr}_seed{seed}"
                    run.parent.mkdir(parents=True, exist_ok=True)
                    if a.no_train and not (run / "summary.csv").is_file():
                        errors.append(f"seed {seed}: not run")
                        continue
                    e = run_one(data, run, model, seed, thr, a.disc_epochs, log)
                    if e:
                        errors.append(f"seed {seed}: {e}")
                        continue
                    ncal.append(n_calibration(run))
                    for r in false_alarms(run):
                        if r["mode"] not in modes:
                            modes.append(r["mode"])
                        d = per_seed.setdefault(r["mode"], {k: [] for k in ("normal", "normal_source",
                                                                               "normal_target", "anomaly", "n")})
                        for k in ("normal", "normal_source", "normal_target", "anomaly"):
                            d[k].append(r[k])
                        d["n"].append(r["n_normal"])
                for mode in modes:
                    d = per_seed[mode]
                    rows.append([ds, model, mode, thr, fmt(d["normal"]), fmt(d["normal_source"]),
                                 fmt(d["normal_target"]), fmt(d["anomaly"]),
                                 "/".join(map(str, sorted(set(d["n"])))), "/".join(map(str, ncal)),
                                 str(len(d["n"])) + ("; " + "; ".join(errors) if errors else "")])
                if not modes:
                    rows.append([ds, model, "–", thr, "–", "–", "–", "–", "–", "–",
                                 "0; " + ("; ".join(errors) or "no run")])
    head = ["dataset", "model", "score mode", "threshold", "normal flagged (all)", "source", "target",
            "anomalies flagged", "n normal", "n calibration", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    commit, dirty = git_state(split=True)
    header = (f"Share of normal test clips (never trained on) flagged by the decision threshold, target "
              f"decision_fpr 0.1 (calibrated) vs the in-sample Gamma(0.9) fit (official); seeds {seeds}; "
              f"a cell with several seeds is their mean (per-seed values in brackets). n calibration: clips "
              f"the threshold was fitted on (held out of training for calibrated; the training clips for "
              f"official). Table written at stetho {commit}{' + uncommitted changes under stetho/' if dirty else ''}; "
              f"the commit each run was trained at: RUN/calibration_real_commit.txt.\n\n")
    text = header + text
    (a.out / "calibration_real.md").write_text(text)
    (a.out / "calibration_real.json").write_text(json.dumps({"seeds": seeds, "rows": rows, "head": head}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
