"""False-alarm rates of a tested run: the share of normal test clips each score mode flags.

    python bench/false_alarms.py RUN [RUN ...]

Reads RUN/test_files.csv (labels, domains) and RUN/results/<mode>/decision_result_*.csv; prints
one row per run and score mode: normal clips flagged (all, source, target) and anomalies flagged.
The calibrated thresholds aim at ``decision_fpr`` (0.1 by default) of normal clips.
"""

from __future__ import annotations

import sys
from pathlib import Path

from stetho.outputs.leaderboard import decision_flags


def false_alarms(run: Path) -> list[dict]:
    rows = []
    for folder in sorted(p for p in (run / "results").iterdir() if p.is_dir()):
        flagged = decision_flags(run, folder.name)
        if not flagged:
            continue

        def rate(*keys):
            v = [x for k in keys for x in flagged.get(k, [])]
            return (sum(v) / len(v), len(v)) if v else (float("nan"), 0)

        n_all = rate(("normal", "source"), ("normal", "target"))
        rows.append({"run": str(run), "mode": folder.name, "normal": n_all[0], "n_normal": n_all[1],
                     "normal_source": rate(("normal", "source"))[0], "normal_target": rate(("normal", "target"))[0],
                     "anomaly": rate(("anomaly", "source"), ("anomaly", "target"))[0]})
    return rows


def main(argv: list[str]) -> int:
    print(f"{'run':40s} {'mode':18s} {'normal':>7s} {'(n)':>5s} {'source':>7s} {'target':>7s} {'anomaly':>8s}")
    for run in argv:
        for r in false_alarms(Path(run)):
            print(f"{r['run'][-40:]:40s} {r['mode']:18s} {r['normal']:7.3f} {r['n_normal']:5d} "
                  f"{r['normal_source']:7.3f} {r['normal_target']:7.3f} {r['anomaly']:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
