"""``stetho`` command line: a thin skin over :mod:`stetho.pipeline` and the datasets/metrics API.

Errors a user can cause are printed as one line (``stetho: error: ...``) with exit status 2;
no traceback unless ``--debug``.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from stetho import __version__
from stetho.errors import StethoError

log = logging.getLogger("stetho")


def _csv_list(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def _dataset_options(p: argparse.ArgumentParser, test: bool = False) -> None:
    from stetho.datasets import DATASETS
    from stetho.datasets.mimii import SPLIT_RULES

    default = "the run's layout, or auto for other --data" if test else "auto"
    p.add_argument("--dataset", choices=DATASETS, metavar="LAYOUT",
                   help=f"dataset layout: {', '.join(DATASETS)} (default: {default})")
    p.add_argument("--subset", choices=("dev", "eval"),
                   help="dev_data or eval_data, when the data folder holds both")
    p.add_argument("--mimii-split", choices=SPLIT_RULES,
                   help="MIMII train/test rule: baseline (default; as many test normals as anomalies), "
                        "cande (first half of the normals to test, 10%% of |train| of them held out for "
                        "validation), cande-overlap (validation normals also tested, as the original)")


def _formula_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--formula", help="official-score formula: dcase2020, dcase2021, dcase2022 ... dcase2025 "
                                     "(default: the data's year)")


def _common_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--channel", type=int, help="channel of multi-channel files (default 0)")
    p.add_argument("--skip-bad", action="store_true", default=None,
                   help="leave out unreadable/invalid files (listed in RUN/skipped.csv) instead of failing")
    p.add_argument("--no-resample", dest="resample", action="store_false", default=None,
                   help="refuse files whose sample rate differs instead of resampling them (soxr HQ)")
    p.add_argument("--device", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--no-cache", dest="cache", action="store_false", default=None,
                   help="do not read or write the feature cache")
    p.add_argument("--cache-dir", help="feature cache folder (default $STETHO_CACHE_DIR or ~/.cache/stetho)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bars")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``stetho train: error: ... (see --help)``)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stetho",
        description="Unsupervised anomalous sound detection for machine condition monitoring.",
    )
    parser.add_argument("--version", action="version", version=f"stetho {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("toy", help="write a synthetic machine-sound dataset (DCASE2023 layout)")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--machines", type=_csv_list, help="comma-separated machine types (default: all)")
    p.add_argument("--train-clips", type=int, default=100, help="source-domain training clips per machine")
    p.add_argument("--target-train-clips", type=int, default=10, help="target-domain training clips per machine")
    p.add_argument("--test-clips", type=int, default=20, help="test clips per domain and label")
    p.add_argument("--duration", type=float, default=10.0, help="clip length in seconds")
    p.add_argument("--seed", type=int, default=0)
    from stetho.datasets.toy import DOMAIN_SHIFTS

    p.add_argument("--domain-shift", choices=tuple(DOMAIN_SHIFTS), default="mild",
                   help="how different the target site sounds (strong: louder, browner, humming background; "
                        "factory: strong plus impacts, vehicles and other machines at both sites)")

    p = sub.add_parser("train", help="train one detector per machine type (or one for all: "
                                     "discriminative, cande)")
    p.add_argument("--data", type=Path, required=True, help="dataset root: <machine>/train/*.wav")
    p.add_argument("--model", default="ae",
                   help="model name: ae (default), bigan (BiGAN/EGBAD on log-mel patches; --param "
                        "score_mode=fm|cross-e, --param patch_reduce=mean|max), discriminative, "
                        "cande (CANDE-CP: context-conditioned AEs "
                        "with a context predictor; --param variant=film-onehot|film-embedding|separate|"
                        "unconditioned, --param context=auto|machine_id|machine_section|attributes|machine)")
    p.add_argument("--out", type=Path, required=True, help="run folder to create")
    p.add_argument("--machines", type=_csv_list, help="comma-separated machine types (default: all)")
    p.add_argument("--epochs", type=int, help="training epochs (model default: 100)")
    p.add_argument("--seed", type=int, help="random seed (default 13711)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="model hyper-parameter, repeatable (e.g. --param batch_size=512)")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an existing run in --out")
    _dataset_options(p)
    _common_run_options(p)

    p = sub.add_parser("test", help="score test clips with a trained run, write DCASE files, evaluate")
    p.add_argument("--run", type=Path, required=True, help="run folder from `stetho train`")
    p.add_argument("--score", "--backend", dest="score",
                   help="score mode(s) / backend(s), comma-separated, or all (default): ae: mahalanobis, mse; "
                        "discriminative: kmeans, knn, mahalanobis, density, kmeans_norm, knn_norm; "
                        "cande: predicted_window, predicted, oracle (where the context of a file comes from)")
    p.add_argument("--data", type=Path, help="test data root or manifest .csv (default: the data the run was "
                                             "trained on)")
    _dataset_options(p, test=True)
    _formula_option(p)
    _common_run_options(p)

    p = sub.add_parser("evaluate", help="official metrics of anomaly_score_*.csv files")
    p.add_argument("scores", type=Path, help="folder with anomaly_score_<machine>_section_<XX>_test.csv files")
    p.add_argument("--data", type=Path, required=True,
                   help="dataset root (or manifest .csv) whose test clips give the labels")
    p.add_argument("--out", type=Path, help="also write result_<machine>.csv and summary.csv here")
    _dataset_options(p)
    _formula_option(p)

    p = sub.add_parser("label", help="attach the organisers' ground truth to an unlabeled evaluation set")
    p.add_argument("--data", type=Path, required=True, help="evaluation dataset root (its files are not touched)")
    p.add_argument("--ground-truth", type=Path, required=True,
                   help="folder of the ground-truth tables (eval_data_list.csv, or ground_truth_data/ "
                        "[+ ground_truth_domain/, ground_truth_attributes/])")
    p.add_argument("--out", type=Path, help="manifest to write (default: labeled_<data folder name>.csv)")
    p.add_argument("--machines", type=_csv_list, help="comma-separated machine types (default: all)")
    _dataset_options(p)

    p = sub.add_parser("summarize", help="mean ± std of several runs (e.g. seeds) per machine type")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="run folders tested on labeled data")
    p.add_argument("--out", type=Path, help="also write summary_runs_<mode>.csv here")

    p = sub.add_parser("novelty", help="image novelty detection, ARAE vs plain AE (digits, MNIST, Fashion-MNIST, "
                                       "COIL-100; protocols p1/p2) from a YAML recipe")
    p.add_argument("recipe", type=Path, help="novelty recipe, e.g. recipes/digits_arae.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="recipe overrides, e.g. normal_classes=[[3]] seeds=[0,1] models.arae.epochs=5")

    p = sub.add_parser("run", help="train → test → evaluate from a YAML recipe (with compare: every "
                                   "variant × seed and a comparison table)")
    p.add_argument("recipe", type=Path, help="recipe file, e.g. recipes/dcase2023_ae.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, e.g. params.epochs=5 out=runs/x")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="do not write the HTML report (RUN/report.html) at the end")

    p = sub.add_parser("report", help="self-contained HTML report with plots of one or several runs")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="run folders tested on labeled data")
    p.add_argument("--out", type=Path, help="HTML file (default: RUN/report.html for one run, report.html for several)")
    return parser


def _options(args: argparse.Namespace, keys: Sequence[str]) -> dict:
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def print_result(result, title: str) -> None:
    """Per-machine table and the official score, as text on stdout."""
    from stetho.metrics import SUMMARY_PRINT_COLUMNS

    rows = result.machine_summary()
    if rows:
        cols = [c for c in rows[0] if c in SUMMARY_PRINT_COLUMNS]
        widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols]
        print(f"\n{title}")
        print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
        for r in rows:
            print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(cols, widths)))
    print(f"official score ({result.formula}): {_fmt(result.official_score)}")
    print(f"  ({result.formula_description})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s" if not args.debug else "%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return _dispatch(args)
    except StethoError as exc:
        if args.debug:
            raise
        msg = str(exc)
        print(f"stetho: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stetho: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from stetho import pipeline
    from stetho.config import load_recipe, parse_overrides

    run_keys = ("channel", "skip_bad", "resample", "device", "cache", "cache_dir", "progress")
    if args.command == "toy":
        from stetho.datasets.toy import make_toy_dataset

        clips = make_toy_dataset(
            args.out, machines=args.machines, train_clips=args.train_clips,
            target_train_clips=args.target_train_clips, test_clips=args.test_clips,
            duration=args.duration, seed=args.seed, progress=not args.quiet, domain_shift=args.domain_shift,
        )
        machines = sorted({c.machine for c in clips})
        print(f"wrote {len(clips)} clips of {len(machines)} machine types ({', '.join(machines)}) to {args.out}")
        return 0
    data_keys = ("dataset", "subset", "mimii_split")
    if args.command == "train":
        cfg = {"data": str(args.data), "model": args.model, "out": str(args.out), "machines": args.machines}
        cfg.update(_options(args, ("seed", "overwrite") + run_keys + data_keys))
        if args.cache_dir is not None:
            cfg["cache_dir"] = str(args.cache_dir)
        params = parse_overrides(args.param)
        if args.epochs is not None:
            params["epochs"] = args.epochs
        cfg["params"] = params
        run_dir = pipeline.train(cfg)
        print(f"trained models written to {run_dir}/models/")
        return 0
    if args.command == "test":
        over = _options(args, run_keys + data_keys + ("formula",))
        if args.cache_dir is not None:
            over["cache_dir"] = str(args.cache_dir)
        outcome = pipeline.test(args.run, score=args.score, data=args.data, **over)
        for mode, result in outcome.results.items():
            if result is None:
                print(f"{mode}: scores written to {outcome.folders[mode]} (test data unlabeled: no metrics)")
            else:
                print_result(result, f"{mode} — {outcome.folders[mode]}")
        return 0
    if args.command == "evaluate":
        result = pipeline.evaluate_folder(args.scores, args.data, formula=args.formula,
                                          dataset=args.dataset or "auto", subset=args.subset)
        print_result(result, str(args.scores))
        if args.out:
            from stetho.outputs import write_results

            write_results(args.out, result)
        return 0
    if args.command == "label":
        out = args.out or Path(f"labeled_{args.data.resolve().name}.csv")
        path = pipeline.label(args.data, args.ground_truth, out, dataset=args.dataset or "auto",
                              subset=args.subset, machines=args.machines)
        print(f"wrote {path}: score it with `stetho test --run RUN --data {path}`")
        return 0
    if args.command == "summarize":
        summary = pipeline.summarize(args.runs, args.out)
        print(summary.format_text())
        return 0
    if args.command == "report":
        path = pipeline.report(args.runs, args.out)
        print(f"report written to {path}")
        return 0
    if args.command == "novelty":
        from stetho import novelty

        cfg = novelty.apply_overrides(novelty.load_novelty_recipe(args.recipe), parse_overrides(args.overrides))
        outcome = novelty.run_novelty(cfg)
        print("AUC (anomaly = positive)")
        print(novelty.format_table(outcome["rows"]))
        if cfg["attack"]:
            print(f"\nAUC with the test normals attacked (L∞ latent PGD, eps {cfg['attack']['eps']})")
            print(novelty.format_table(outcome["rows"], "auc_attacked"))
        print("\n" + novelty.format_summary(outcome["summary"]))
        print(f"tables written to {cfg['out']}/ (results.csv, summary.csv, splits.json, config.json)")
        return 0
    if args.command == "run":
        cfg = load_recipe(args.recipe)
        from stetho.config import resolve

        cfg = resolve(cfg, parse_overrides(args.overrides), where=str(args.recipe))
        outcome = pipeline.run(cfg, report=args.report)
        if isinstance(outcome, pipeline.Comparison):
            print(outcome.format_text())
            print(f"\ncomparison tables written to {cfg['out']}/comparison_*.csv")
            return 0
        for mode, result in outcome.results.items():
            if result is not None:
                print_result(result, f"{mode} — {outcome.folders[mode]}")
        return 0
    raise AssertionError(args.command)  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
