"""``stetho`` command line: a thin skin over :mod:`stetho.pipeline` and the datasets/metrics API.

Errors a user can cause are printed as one line (``stetho: error: ...``) with exit status 2;
no traceback unless ``--debug``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

from stetho import __version__
from stetho.errors import ConfigError, StethoError

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


def _alert_modes(text: str) -> str | tuple[str, ...]:
    """``--alert-modes``: ``default``, ``all`` or a comma-separated list of score modes."""
    text = text.strip()
    return text if text in ("default", "all") else tuple(m.strip() for m in text.split(",") if m.strip())


def _monitor_options(p: argparse.ArgumentParser) -> None:
    """The options `serve` and `watch` share: the database, resampling and the alert rules."""
    p.add_argument("--db", required=True, metavar="URL", help="the verdict database: sqlite:///PATH or "
                                                              "postgresql://USER@HOST/DB")
    p.add_argument("--no-resample", dest="resample", action="store_false",
                   help="refuse recordings of another sample rate than the model's (default: resample them)")
    p.add_argument("--alert-k", type=int, default=3, help="alert when K of the last N verdicts of an asset are "
                                                          "anomalous (default 3)")
    p.add_argument("--alert-n", type=int, default=5, help="... of the last N (default 5)")
    p.add_argument("--alert-modes", default="default", metavar="MODES",
                   help="the score modes the alert rules watch: 'default' (the model's own score_mode, the "
                        "default), 'all', or a comma-separated list")
    p.add_argument("--webhook", metavar="URL", help="POST each new alert as JSON to this http(s) URL")
    p.add_argument("--archive", metavar="DIR", help="keep each scored recording's audio in DIR (by SHA-256), for the "
                                                    "dashboard's player and spectrograms; 'none': keep none (default: "
                                                    "<db file stem>_audio beside a SQLite database, none for PostgreSQL)")


def _formula_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--formula", help="official-score formula: dcase2020, dcase2021, dcase2022 ... dcase2025 "
                                     "(default: the data's year)")


def _threads(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be auto or a positive integer, got {text!r}")
    return n


def _threads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_threads, metavar="N",
                   help="torch threads for training and scoring: auto (default: 1 on up to 2 cores, else "
                        "min(cores // 2, 4); OMP_NUM_THREADS when set) or a number")


def _common_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--channel", type=int, help="channel of multi-channel files (default 0)")
    p.add_argument("--skip-bad", action="store_true", default=None,
                   help="leave out unreadable/invalid files (listed in RUN/skipped.csv) instead of failing")
    p.add_argument("--no-resample", dest="resample", action="store_false", default=None,
                   help="refuse files whose sample rate differs instead of resampling them (soxr HQ)")
    p.add_argument("--device", help="auto (CUDA when available), cpu or cuda")
    _threads_option(p)
    p.add_argument("--no-cache", dest="cache", action="store_false", default=None,
                   help="do not read or write the feature cache")
    p.add_argument("--cache-dir", help="feature cache folder (default $STETHO_CACHE_DIR or ~/.cache/stetho)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bars")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``stetho train: error: ... (see --help)``)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _LazyHelp(argparse.Action):
    """``-h/--help`` of a subcommand that first calls ``complete(parser)`` to finish its help.

    What needs the detector classes (torch) or the toy synthesiser (scipy) is read only when that
    subcommand's help is shown, so that ``stetho --help`` and every parse stay fast.
    """

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str = "show this help message and exit") -> None:  # noqa: A002
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)
        self.complete: Callable[[argparse.ArgumentParser], None] = lambda parser: None

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[override]
        self.complete(parser)
        parser.print_help()
        parser.exit()


def _add_lazy_help(p: argparse.ArgumentParser) -> _LazyHelp:
    return p.add_argument("-h", "--help", action=_LazyHelp)  # type: ignore[return-value]


def _summary(cls: type) -> str:
    """What a detector is, from its docstring: the first paragraph up to a ``;``, on one line."""
    text = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].replace("``", "").split())
    text = text.split("; ")[0].rstrip(".")
    first = text.split(" ")[0]
    return text[:1].lower() + text[1:] if first[1:].islower() else text  # "The AE" -> "the AE"; "BiGAN" kept


def _epochs_default(cls: type) -> object:
    """The ``epochs`` default of a detector (``None`` if it takes no such parameter)."""
    return cls.param_defaults().get("epochs")


def _models_epilog(title: str, epochs: bool) -> str:
    """The registered models, each with what it is, its score modes (and epochs default)."""
    from stetho.models import MODELS

    width = max(60, min(shutil.get_terminal_size().columns - 2, 110))  # as argparse wraps
    indent = " " * (max(map(len, MODELS)) + 4)
    lines = [textwrap.fill(title, width)]
    for name, cls in MODELS.items():
        facts = ["one model for all machine types"] if cls.joint else []
        facts.append(f"score modes: {', '.join(cls.score_modes)}")
        if epochs and _epochs_default(cls) is not None:
            facts.append(f"epochs: {_epochs_default(cls)}")
        lines.append(textwrap.fill(_summary(cls), width, initial_indent=f"  {name.ljust(len(indent) - 2)}",
                                   subsequent_indent=indent))
        lines.append(textwrap.fill("; ".join(facts), width, initial_indent=indent, subsequent_indent=indent))
    return "\n".join(lines)


def _complete_train_help(parser: argparse.ArgumentParser) -> None:
    parser.epilog = _models_epilog("models (--model; --param KEY=VALUE sets an argument of its detector's "
                                   "constructor):", epochs=True)


def _complete_test_help(parser: argparse.ArgumentParser) -> None:
    parser.epilog = _models_epilog("score modes (--score) of the registered models:", epochs=False)


def _complete_novelty_help(parser: argparse.ArgumentParser) -> None:
    from stetho import novelty

    parser.epilog = (
        "Each entry of the recipe's models: is one detector's constructor arguments, plus model: <registry "
        f"name> (default {novelty.DEFAULT_MODEL}). Registered models that score image arrays: "
        f"{', '.join(novelty.array_models())}. Recipe keys: {', '.join(novelty.NOVELTY_DEFAULTS)}. "
        "A run stopped by max_minutes exits with code 3; the same command resumes it."
    )


def _complete_toy_help(shift: argparse.Action) -> None:
    from stetho.synth import DOMAIN_SHIFTS

    shift.help = f"{shift.help} (one of {', '.join(DOMAIN_SHIFTS)}; default mild)".replace("%", "%%")


def _domain_shift(text: str) -> str:
    """``--domain-shift`` checked against the toy synthesiser's list (imported only when used)."""
    from stetho.synth import DOMAIN_SHIFTS

    if text not in DOMAIN_SHIFTS:
        raise argparse.ArgumentTypeError(f"invalid choice: '{text}' (choose from {', '.join(DOMAIN_SHIFTS)})")
    return text


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

    p = sub.add_parser("toy", help="write a synthetic machine-sound dataset (DCASE2023 layout)", add_help=False)
    help_ = _add_lazy_help(p)
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--machines", type=_csv_list, help="comma-separated machine types (default: all)")
    p.add_argument("--train-clips", type=int, default=100, help="source-domain training clips per machine")
    p.add_argument("--target-train-clips", type=int, default=10, help="target-domain training clips per machine")
    p.add_argument("--test-clips", type=int, default=20, help="test clips per domain and label")
    p.add_argument("--duration", type=float, default=10.0, help="clip length in seconds")
    p.add_argument("--seed", type=int, default=0)
    shift = p.add_argument("--domain-shift", type=_domain_shift, default="mild", metavar="SHIFT",
                           help="how different the target site sounds (strong: louder, browner, humming "
                                "background; factory: strong plus impacts, vehicles and other machines at both "
                                "sites)")
    help_.complete = lambda parser: _complete_toy_help(shift)

    from stetho.models import MODELS  # the names only: the classes (torch) load when used

    p = sub.add_parser("train", help="train one detector per machine type (or one for all, for a joint model)",
                       add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_lazy_help(p).complete = _complete_train_help
    p.add_argument("--data", type=Path, required=True, help="dataset root: <machine>/train/*.wav")
    p.add_argument("--model", default="ae", choices=tuple(MODELS), metavar="MODEL",
                   help=f"registered model: {', '.join(MODELS)} (default: ae; see models below)")
    p.add_argument("--out", type=Path, required=True, help="run folder to create")
    p.add_argument("--machines", type=_csv_list, help="comma-separated machine types (default: all)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the model's, see models below)")
    p.add_argument("--seed", type=int, help="random seed (default 13711)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="model hyper-parameter (an argument of its detector's constructor), repeatable "
                        "(e.g. --param batch_size=512)")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an existing run in --out")
    p.add_argument("--threshold", choices=("calibrated", "official"),
                   help="calibrated (default): thresholds from scores of held-out training clips, flagging "
                        "--decision-fpr of normal clips; official: the DCASE baselines' Gamma fit of in-sample "
                        "training scores (every clip trains)")
    p.add_argument("--decision-fpr", type=float, metavar="F",
                   help="share of normal clips a calibrated threshold flags (default 0.1)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the training checkpoints in RUN/work/ after training succeeds (default: deleted, only "
                        "the models stay; an interrupted training keeps them to resume either way)")
    _dataset_options(p)
    _common_run_options(p)

    p = sub.add_parser("test", help="score test clips with a trained run, write DCASE files, evaluate",
                       add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_lazy_help(p).complete = _complete_test_help
    p.add_argument("--run", type=Path, required=True, help="run folder from `stetho train`")
    p.add_argument("--score", "--backend", dest="score",
                   help="score mode(s) / backend(s) of the run's model, comma-separated, or all (default); "
                        "see below")
    p.add_argument("--data", type=Path, help="test data root or manifest .csv (default: the data the run was "
                                             "trained on)")
    p.add_argument("--decision-fpr", type=float, metavar="F",
                   help="decide with thresholds refitted for this false-alarm rate from the run's stored "
                        "out-of-sample normal scores (default: the thresholds fitted at training)")
    p.add_argument("--strict", action="store_true", default=None,
                   help="refuse test clips whose sample rate no training clip had (default: score them with a "
                        "warning and a note in RUN/test_files.csv)")
    p.add_argument("--machines", type=_csv_list, metavar="TYPE,...",
                   help="test only these machine types of the run (default: those of the run that the data holds)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="write the evaluation (results/, test_files.csv, summary.csv) to DIR, which records the run "
                        "(`stetho report DIR` works), and leave RUN's own results as they are")
    _dataset_options(p, test=True)
    _formula_option(p)
    _common_run_options(p)

    p = sub.add_parser("score", help="score a few recordings with a trained run: score, threshold and decision "
                                     "per score mode (a table, or JSON lines)")
    p.add_argument("run", type=Path, metavar="RUN", help="run folder from `stetho train`")
    p.add_argument("files", type=Path, nargs="+", metavar="FILE", help="audio files (WAV, FLAC, ...)")
    p.add_argument("--machine-type", help="the machine type the files are of (default: the run's only one; "
                                          "required for a run of several)")
    p.add_argument("--section", help="the section (machine ID) the files belong to (default 00)")
    p.add_argument("--json", action="store_true", help="one JSON object per file instead of a table")
    p.add_argument("--engine", choices=("torch", "onnx"), default="torch",
                   help="torch (default): RUN is a run folder; onnx: RUN is a folder from `stetho export --format "
                        "onnx`, scored with onnxruntime through stetho.edge (no PyTorch)")

    p = sub.add_parser("export", help="export a trained run for scoring without PyTorch (ONNX) or without stetho "
                                      "(TorchScript): one file per machine type, thresholds in JSON, the edge scorer")
    p.add_argument("run", type=Path, metavar="RUN", help="run folder from `stetho train`")
    p.add_argument("--format", dest="fmt", choices=("onnx", "torchscript"), default="onnx",
                   help="onnx (default; score it with stetho_edge.py: numpy, soundfile, onnxruntime) or torchscript")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="the export folder (created)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the check that the exported scores equal the run's on a seeded test signal")

    p = sub.add_parser("serve", help="the HTTP scoring service: score uploaded recordings, store every verdict "
                                     "(FastAPI + uvicorn)")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="run folder(s) from `stetho train` (one per "
                                                                     "machine type)")
    _monitor_options(p)
    p.add_argument("--engine", choices=("torch", "onnx"), default="torch",
                   help="torch (default): each RUN is a run folder; onnx: each RUN is a folder from `stetho export "
                        "--format onnx`, scored with onnxruntime")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--token-file", type=Path, metavar="F", help="file holding the API token writes need "
                                                                "(default: the STETHO_API_TOKEN environment variable)")
    p.add_argument("--max-body-mb", type=float, default=20.0, help="largest upload in MB (default 20; larger: 413)")
    p.add_argument("--protect-reads", action="store_true",
                   help="reads need the token too: every GET but /healthz (the dashboard's pages ask for it at /login)")
    p.add_argument("--refresh-seconds", type=float, default=5.0,
                   help="how often the dashboard's pages poll for new verdicts (default 5)")

    p = sub.add_parser("watch", help="score every recording dropped into INBOX/<asset>/ once and store its "
                                     "verdict (bad files stored as rejections)")
    p.add_argument("inbox", type=Path, metavar="INBOX", help="folder of one sub-folder per asset")
    p.add_argument("--run", dest="runs", type=Path, action="append", required=True, metavar="RUN",
                   help="run folder from `stetho train` (repeat for several machine types)")
    _monitor_options(p)
    p.add_argument("--poll", type=float, default=1.0, help="seconds between scans of the inbox (default 1)")
    p.add_argument("--settle", type=float, default=2.0, help="take a file once unchanged this many seconds "
                                                             "(default 2; *.part files never)")
    p.add_argument("--move", action="store_true", help="move handled files to INBOX/done/ or INBOX/rejected/")
    p.add_argument("--machine-type", help="the machine type of every asset (default: INBOX/<asset>/machine_type, "
                                          "else the runs' only one)")

    p = sub.add_parser("demo-monitor", help="monitoring demo: train on toy pumps, run `serve` and `watch`, feed a "
                                            "simulated day of 3 pumps (one develops a fault), print the alerts")
    p.add_argument("dir", type=Path, nargs="?", default=Path("build/demo_monitor"), metavar="DIR",
                   help="demo folder: training data, run, recordings, inbox, monitor.db (default build/demo_monitor)")
    p.add_argument("--recordings", type=int, default=48, help="recordings per asset over the day (default 48)")
    p.add_argument("--interval", type=float, default=30.0, help="simulated minutes between recordings (default 30)")
    p.add_argument("--duration", type=float, default=4.0, help="seconds per recording (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the training data and the day (default 0)")
    p.add_argument("--port", type=int, default=0, help="the service's port on 127.0.0.1 (default: a free one)")

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

    p = sub.add_parser("novelty", help="image novelty detection (digits, MNIST, Fashion-MNIST, COIL-100; "
                                       "protocols p1/p2) of the recipe's models, e.g. ARAE vs plain AE",
                       add_help=False)
    _add_lazy_help(p).complete = _complete_novelty_help
    p.add_argument("recipe", type=Path, help="novelty recipe, e.g. recipes/digits_arae.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="recipe overrides, e.g. normal_classes=[[3]] seeds=[0,1] models.arae.epochs=5")

    p = sub.add_parser("run", help="train → test → evaluate from a YAML recipe (with compare: every "
                                   "variant × seed and a comparison table; with search: a hyper-parameter "
                                   "search through Ray Tune and OUT/best_recipe.yaml)")
    p.add_argument("recipe", type=Path, help="recipe file, e.g. recipes/dcase2023_ae.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, e.g. params.epochs=5 out=runs/x")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="do not write the HTML report (RUN/report.html) at the end")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local (default): every run in this process, one after the other; ray: each run and machine "
                        "type as a Ray task with the recipe's resources (pip install 'stetho[ray]'), same files; "
                        "a recipe with search: always runs its trials through Ray Tune")
    p.add_argument("--address", help="with --engine ray (or a search: recipe): join this Ray cluster (auto, or "
                                     "HOST:PORT of `ray start "
                                     "--head`) instead of starting a local one")
    _threads_option(p)
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the training checkpoints in RUN/work/ after training succeeds (default: deleted)")

    p = sub.add_parser("ensemble", help="fuse tested runs: each one's scores standardised on its own held-out "
                                        "normal scores, averaged, with a calibrated threshold of their own")
    p.add_argument("members", nargs="+", metavar="RUN[:MODE][@WEIGHT]",
                   help="tested run folder, its score mode (needed when it was tested in several) and weight "
                        "(default 1; weights are normalised), e.g. runs/ae:mse runs/disc:density@2")
    p.add_argument("--out", type=Path, required=True, help="ensemble folder to write (replaces an earlier ensemble)")
    p.add_argument("--name", default="ensemble", help="the fused score mode: results/NAME/ (default: ensemble)")
    p.add_argument("--decision-fpr", type=float, default=0.1, metavar="F",
                   help="share of normal clips the fused threshold flags (default 0.1)")
    p.add_argument("--min-group", type=int, default=5, metavar="N",
                   help="calibration scores a (machine type, domain) needs for statistics of its own, else the "
                        "machine type's (default 5)")

    p = sub.add_parser("benchmark", help="a leaderboard: every (dataset, method) cell of a suite × seeds, trained, "
                                         "tested and ranked (finished cells are reused)")
    p.add_argument("suite", type=Path, help="suite file, e.g. recipes/bench_real.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="suite overrides of its top-level keys, e.g. seeds=[1] jobs=1 out=build/b")
    p.add_argument("--only", type=_csv_list, metavar="DATASET[/METHOD],...",
                   help="run only these cells (the leaderboard still shows every finished one)")
    p.add_argument("--tabulate", action="store_true", help="run nothing: tabulate the finished cells")

    p = sub.add_parser("cache", help="the feature cache: its folder, size, entries and cap; clear or trim it")
    p.add_argument("--dir", type=Path, metavar="DIR",
                   help="cache folder (default $STETHO_CACHE_DIR or ~/.cache/stetho)")
    p.add_argument("--clear", action="store_true", help="delete every cached feature file")
    p.add_argument("--max-size", metavar="SIZE",
                   help="set the cache's size cap (e.g. 500M, 2G; 0: none), stored in the cache folder, and evict "
                        "the least recently used entries beyond it now ($STETHO_CACHE_MAX_SIZE overrides it)")

    p = sub.add_parser("report", help="self-contained HTML report with plots of one or several runs")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="run folders tested on labeled data")
    p.add_argument("--out", type=Path, help="HTML file (default: RUN/report.html for one run, report.html for several)")
    return parser


def _options(args: argparse.Namespace, keys: Sequence[str]) -> dict:
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def print_result(result, title: str) -> None:
    """Per-machine table and the score, as text on stdout (:func:`stetho.outputs.summary.result_lines`:
    the official or PARTIAL score for DCASE data, a plain score with its meaning for one's own)."""
    from stetho.outputs.summary import result_lines

    print("\n".join(result_lines(result, title)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s" if not args.debug else "%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.debug:  # Alembic's INFO lines on every database start-up only with --debug
        logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        return _dispatch(args)
    except StethoError as exc:
        if args.debug:
            raise
        msg = str(exc)
        print(f"stetho: error: {msg}", file=sys.stderr)
        return 2
    except OSError as exc:
        # What the operating system refused that no stetho check foresaw (the writers turn the
        # usual ones -- disk full, read-only -- into StethoErrors): still one line, with the file.
        if args.debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"stetho: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stetho: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "report":
        from stetho.outputs.report import report_runs  # neither torch nor the models: starts fast

        path = report_runs(args.runs, args.out)
        print(f"report written to {path}")
        return 0
    if args.command == "cache":
        return _cache(args)
    if args.command == "score":
        return _score_onnx(args) if args.engine == "onnx" else _score(args)
    if args.command == "export":
        return _export(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "watch":
        return _watch(args)
    if args.command == "demo-monitor":
        from stetho.monitor.demo import format_demo, run_demo

        print(format_demo(run_demo(args.dir, recordings_per_asset=args.recordings, interval_minutes=args.interval,
                                   duration=args.duration, seed=args.seed, port=args.port)))
        return 0
    from stetho import pipeline
    from stetho.config import load_recipe, parse_overrides

    run_keys = ("channel", "skip_bad", "resample", "device", "threads", "cache", "cache_dir", "progress")
    if args.command == "toy":
        from stetho.synth import make_toy_dataset

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
        if args.threshold is not None:
            params["threshold"] = args.threshold
        if args.decision_fpr is not None:
            params["decision_fpr"] = args.decision_fpr
        cfg["params"] = params
        with _keeping_checkpoints(args.keep_checkpoints):
            run_dir = pipeline.train(cfg)
        print(f"trained models written to {run_dir}/models/")
        return 0
    if args.command == "test":
        over = _options(args, run_keys + data_keys + ("formula",))
        if args.cache_dir is not None:
            over["cache_dir"] = str(args.cache_dir)
        if args.decision_fpr is not None:
            over["decision_fpr"] = args.decision_fpr
        if args.strict:
            over["strict"] = True
        outcome = pipeline.test(args.run, score=args.score, data=args.data, machines=args.machines, out=args.out,
                                **over)
        for mode, result in outcome.results.items():
            if result is None:
                print(f"{mode}: scores written to {outcome.folders[mode]} (test data unlabeled: no metrics)")
            else:
                print_result(result, f"{mode} — {outcome.folders[mode]}")
        return 0
    if args.command == "benchmark":
        from stetho.config import parse_overrides
        from stetho.pipeline.benchmark import benchmark, load_suite

        outcome = benchmark(load_suite(args.suite, parse_overrides(args.overrides)), only=args.only,
                            tabulate_only=args.tabulate)
        print(outcome.files["text"].read_text(encoding="utf-8"), end="")
        print(f"\n{outcome.ran} cell(s) run, {outcome.reused} reused; leaderboard: {outcome.files['html']} "
              f"(CSV: {outcome.files['table']})")
        return 0
    if args.command == "ensemble":
        from stetho.pipeline.ensemble import ensemble, parse_member

        outcome = ensemble([parse_member(m) for m in args.members], args.out, name=args.name,
                           decision_fpr=args.decision_fpr, min_group=args.min_group)
        if outcome.result is None:
            print(f"{args.name}: scores written to {outcome.folder} (test data unlabeled: no metrics)")
        else:
            print_result(outcome.result, f"{args.name} — {outcome.folder}")
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
    if args.command == "novelty":
        from stetho import novelty

        cfg = novelty.apply_overrides(novelty.load_novelty_recipe(args.recipe), parse_overrides(args.overrides))
        outcome = novelty.run_novelty(cfg)
        print("AUC (anomaly = positive)")
        print(novelty.format_table(outcome["rows"]))
        if cfg["attack"]:
            print(f"\nAUC with the test normals attacked (L∞ latent PGD, eps {cfg['attack']['eps']})")
            print(novelty.format_table(outcome["rows"], "auc_attacked"))
        if any("recon_dependence" in r for r in outcome["rows"]):
            print("\nReconstruction dependence on the input (variance of reconstructions / of inputs; "
                  "near 0 = collapsed)")
            print(novelty.format_table(outcome["rows"], "recon_dependence"))
        if any("latent_shift" in r for r in outcome["rows"]):
            print("\nLatent shift by the attack (mean ‖E(x') − E(x)‖ over the test normals; "
                  "spread of the codes in results.csv)")
            print(novelty.format_table(outcome["rows"], "latent_shift"))
        print("\n" + novelty.format_summary(outcome["summary"]))
        for text in outcome["warnings"]:
            print(f"WARNING: {text}")
        files = "results.csv, summary.csv, curve.csv, splits.json, config.json"
        print(f"tables written to {cfg['out']}/ ({files})")
        if outcome["stopped"]:
            print(f"stopped at max_minutes={cfg['max_minutes']}: run the same command again to resume")
            return 3
        return 0
    if args.command == "run":
        cfg = load_recipe(args.recipe)
        from stetho.config import resolve

        cfg = resolve(cfg, parse_overrides(args.overrides), _options(args, ("threads",)), where=str(args.recipe))
        with _keeping_checkpoints(args.keep_checkpoints):
            outcome = pipeline.run(cfg, report=args.report, engine=args.engine, address=args.address)
        if isinstance(outcome, pipeline.Comparison):
            print(outcome.format_text())
            print(f"\ncomparison tables written to {cfg['out']}/comparison_*.csv")
            return 0
        if cfg["search"] is not None:  # a SearchOutcome (stetho.pipeline.search)
            print(outcome.format_text())
            print(f"\nbest: trial {outcome.best.index} ({outcome.metric} {outcome.best.value:.4f}), run folder "
                  f"{outcome.best.run_dir}\ntrials in {outcome.results_csv}; best configuration in "
                  f"{outcome.best_recipe} (stetho run {outcome.best_recipe})")
            return 0
        for mode, result in outcome.results.items():
            if result is not None:
                print_result(result, f"{mode} — {outcome.folders[mode]}")
        return 0
    raise AssertionError(args.command)  # pragma: no cover


def _keeping_checkpoints(keep: bool):
    """``--keep-checkpoints``: :func:`stetho.models.checkpoints.keeping_checkpoints` (else nothing)."""
    import contextlib

    from stetho.models.checkpoints import keeping_checkpoints

    return keeping_checkpoints() if keep else contextlib.nullcontext()


def _cache(args: argparse.Namespace) -> int:
    """``stetho cache``: where the feature cache is, its size, entries and cap; ``--clear`` empties
    it, ``--max-size`` stores a new cap and trims the cache to it."""
    import os
    from datetime import datetime

    from stetho.features.cache import default_cache_dir
    from stetho.features.cache_limit import (ENV_MAX_SIZE, cache_info, clear, evict, format_size, parse_size,
                                             store_max_bytes)

    root = Path(args.dir) if args.dir is not None else default_cache_dir()
    if args.clear:
        n, freed = clear(root)
        print(f"cleared {root}: {n} entries, {format_size(freed)} freed")
    if args.max_size is not None:
        cap = parse_size(args.max_size, "--max-size")
        store_max_bytes(root, cap)
        n, freed = evict(root, cap)
        print(f"cap set to {format_size(cap) if cap else 'none'}"
              + (f": {n} least recently used entries ({format_size(freed)}) evicted" if n else ""))
        if os.environ.get(ENV_MAX_SIZE):
            print(f"note: ${ENV_MAX_SIZE}={os.environ[ENV_MAX_SIZE]} is set and overrides it")
    info = cache_info(root)
    print(f"feature cache: {info.root}")
    cap = format_size(info.max_bytes) if info.max_bytes else "none"
    print(f"size: {format_size(info.bytes)} ({info.bytes} bytes) in {info.entries} entries; cap {cap}")
    for kind, (n, b) in info.kinds.items():
        print(f"  {kind}: {n} entries, {format_size(b)}")
    if info.oldest_use is not None:
        when = [datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M") for t in (info.oldest_use, info.newest_use)]
        print(f"last used: {when[0]} (least recent) to {when[1]} (most recent)")
    return 0


def _score(args: argparse.Namespace) -> int:
    """``stetho score``: each file's verdict on stdout; a file that cannot be scored is an error
    line on stderr (the others are still scored) and exit status 2."""
    import json

    from stetho.errors import ScoringError
    from stetho.monitor.scoring import Scorer, format_verdicts

    scorer = Scorer.load(args.run)
    machine_type = scorer.resolve_machine_type(args.machine_type)
    verdicts, failed = [], 0
    for path in args.files:
        try:
            verdict = scorer.score(path, machine_type, section=args.section)
        except ScoringError as exc:
            print(f"stetho: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            print(json.dumps(verdict.to_dict()), flush=True)
        verdicts.append(verdict)
    if verdicts and not args.json:
        print(format_verdicts(verdicts))
    return 2 if failed else 0


def _score_onnx(args: argparse.Namespace) -> int:
    """``stetho score --engine onnx``: as ``stetho score``, with an ONNX export folder scored by
    :class:`stetho.edge.EdgeScorer` (onnxruntime)."""
    from stetho.edge import EdgeError, EdgeScorer, score_files

    try:
        scorer = EdgeScorer(args.run)
        machine_type = scorer.resolve_machine_type(args.machine_type)
    except EdgeError as exc:
        raise ConfigError(str(exc)) from None
    return score_files(scorer, args.files, machine_type, args.section, args.json, "stetho")


def _export(args: argparse.Namespace) -> int:
    """``stetho export``: the exported files, their sizes and parity, and how to score them."""
    from stetho.export import export_run

    exported = export_run(args.run, args.fmt, args.out, verify=args.verify)
    for e in exported:
        parity = "" if e.max_rel_diff != e.max_rel_diff else f", scores within {e.max_rel_diff:.1e} of the run's"
        print(f"{e.machine_type} ({e.model}): {e.path} ({e.size_bytes / 1e6:.2f} MB{parity})")
    if args.fmt == "onnx":
        print(f"score without PyTorch: python {args.out / 'stetho_edge.py'} {args.out} FILE.wav ... "
              "(needs numpy, soundfile, onnxruntime)")
    else:
        print("load with torch.jit.load(FILE); forward(waveform float32 (n_samples,), section int64 ()) gives the "
              "scores of the modes in the JSON beside it")
    return 0


def _archive(args: argparse.Namespace) -> Path | None:
    """The audio archive folder of ``--archive``: the one given, ``None`` for ``none``, else the
    database's default (:func:`stetho.monitor.archive.default_archive`)."""
    from stetho.monitor.archive import default_archive

    if args.archive is None:
        return default_archive(args.db)
    return None if args.archive.strip().lower() == "none" else Path(args.archive)


def _serve(args: argparse.Namespace) -> int:
    """``stetho serve``: the token from --token-file or STETHO_API_TOKEN, then
    :func:`stetho.monitor.service.serve` until interrupted."""
    import os

    from stetho.errors import ConfigError

    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{args.token_file}: cannot read the API token ({exc.strerror or exc})") from None
        if not token:
            raise ConfigError(f"{args.token_file}: the API token file is empty")
    else:
        token = os.environ.get("STETHO_API_TOKEN", "").strip()
        if not token:
            raise ConfigError("no API token: give --token-file F or set STETHO_API_TOKEN (writes need it)")
    if not args.max_body_mb > 0:
        raise ConfigError(f"--max-body-mb must be above 0, got {args.max_body_mb}")
    if not args.refresh_seconds > 0:
        raise ConfigError(f"--refresh-seconds must be above 0, got {args.refresh_seconds}")
    from stetho.monitor.service import serve

    serve(args.runs, args.db, token, host=args.host, port=args.port,
          max_body_bytes=int(args.max_body_mb * 1024 * 1024), resample=args.resample, alert_k=args.alert_k,
          alert_n=args.alert_n, alert_modes=_alert_modes(args.alert_modes), webhook_url=args.webhook,
          archive=_archive(args), protect_reads=args.protect_reads,
          refresh_seconds=args.refresh_seconds, engine=args.engine)
    return 0


def _watch(args: argparse.Namespace) -> int:
    """``stetho watch``: :func:`stetho.monitor.watch.watch` until SIGINT or SIGTERM."""
    import signal
    import threading

    from stetho.monitor.watch import watch

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    watch(args.inbox, args.runs, args.db, machine_type=args.machine_type, poll_seconds=args.poll,
          settle_seconds=args.settle, move=args.move, resample=args.resample, alert_k=args.alert_k,
          alert_n=args.alert_n, alert_modes=_alert_modes(args.alert_modes), webhook_url=args.webhook,
          stop_event=stop, archive=_archive(args))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
