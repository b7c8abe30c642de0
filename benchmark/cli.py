"""The command line of ``run_bench.py``: parse, build the sweep, run it, report.

Choices come from the registries, so a method registered in ``methods/`` (or a ``--plugins``
file) is on the command line without editing this file. A ``--config`` file (mmengine) gives
the defaults of a whole sweep, flags override it, and ``--dry-run`` lists its runs. Exit status:
0 when every run is done (or, with ``--dry-run``, planned), 1 when any run failed, 2 on bad
arguments. The last stdout line is the machine-readable tally ``N runs: X ran, Y reused complete
records, Z failed``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mmengine.config import DictAction

from benchmark.model.clip import EMBEDDED_MODEL, EMBEDDED_TAG

DEFAULT_DATASET = "synthetic"
DEFAULT_SEEDS = [1, 2, 3]


class UsageError(Exception):
    """Bad arguments: reported in one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with method/data set/launcher choices taken from the registries."""
    from benchmark.data import dataset_names
    from benchmark.registry import LAUNCHERS, method_names

    import benchmark.run.launchers  # noqa: F401  (registers the launchers)

    p = argparse.ArgumentParser(
        prog="run_bench.py",
        description="Benchmark unsupervised CLIP adaptation methods in the open-set setting of UEO (ICML 2024).",
    )
    p.add_argument("--methods", nargs="+", choices=method_names(), default=None, metavar="METHOD",
                   help=f"methods to run (default: all). Registered: {', '.join(method_names())}")
    p.add_argument("--datasets", nargs="+", choices=dataset_names(), default=[DEFAULT_DATASET], metavar="DATASET",
                   help=f"data sets (default: {DEFAULT_DATASET}). Registered: {', '.join(dataset_names())}")
    p.add_argument("--domains", nargs="+", default=None, help="target domains (default: all of each data set)")
    p.add_argument("--settings", nargs="+", default=None, choices=["cda", "pda", "oda", "opda"],
                   help="category-shift settings (default: oda)")
    p.add_argument("--protocol", default="ueo", help="category-shift protocol: ueo (default) or classic")
    p.add_argument("--seeds", nargs="+", type=int, default=DEFAULT_SEEDS, help="seeds (default: 1 2 3)")
    p.add_argument("--model", default=None,
                   help=f"open_clip architecture (default: the config's models, else {EMBEDDED_MODEL})")
    p.add_argument("--pretrained", default=None,
                   help=f"weights: an open_clip tag (e.g. openai), a local file, or 'none' "
                        f"(default: '{EMBEDDED_TAG}' for {EMBEDDED_MODEL}, else openai)")
    p.add_argument("--data-root", default=os.environ.get("CLIPBENCH_DATA"),
                   help="folder holding the real data sets (default: $CLIPBENCH_DATA)")
    p.add_argument("--out", default="results", type=Path, help="output folder (default: results/)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default={}, metavar="METHOD.KEY=VALUE",
                   help="override hyper-parameters, e.g. ueo.lr=1e-4 tent.epochs=1")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    p.add_argument("--launcher", default="inline", choices=sorted(LAUNCHERS.module_dict),
                   help="how runs are executed (default: inline): inline = this process, local = a pool of "
                        "--workers processes, slurm = a SLURM array job through submitit")
    p.add_argument("--workers", type=int, default=2, help="worker processes of --launcher local (default: 2)")
    p.add_argument("--config", default=None, metavar="FILE.py",
                   help="mmengine config of a whole sweep (e.g. configs/ueo_paper.py); flags given on the "
                        "command line override its values")
    p.add_argument("--grids", action="store_true",
                   help="also sweep each data set's hyper-parameter grid (`grids:` in its dataset.yaml, the grid its "
                        "budgets were selected from); combine with --selection validation_domain to redo the selection")
    p.add_argument("--dry-run", action="store_true", help="list the runs of the sweep and exit; runs nothing")
    p.add_argument("--show-hparams", action="store_true",
                   help="with --dry-run: print every run's resolved hyper-parameters as key=value")
    p.add_argument("--profile", action="store_true",
                   help="record time per phase (data, forward, backward, evaluate) and images/s in each record")
    p.add_argument("--no-feature-cache", dest="feature_cache", action="store_false",
                   help="do not reuse frozen image features, nor the features of augmented test views, across runs "
                        "(cache: <out>/features or $CLIPBENCH_FEATURES)")
    _add_slurm_options(p)
    p.add_argument("--plugins", nargs="+", default=[], metavar="FILE.py",
                   help="extra Python files (or modules) that register methods")
    p.add_argument("--list", action="store_true", help="list registered methods, data sets and launchers, then exit")
    p.add_argument("--report-only", action="store_true", help="rebuild the tables from the records under --out")
    _add_report_options(p)
    return p


def _add_slurm_options(p: argparse.ArgumentParser) -> None:
    """Options of ``--launcher slurm`` (one array job; each task runs one spec)."""
    g = p.add_argument_group("slurm (--launcher slurm)")
    g.add_argument("--slurm-partition", default=None, help="partition to submit to (default: the cluster's)")
    g.add_argument("--slurm-time", type=int, default=240, metavar="MIN", help="time limit per run (default: 240)")
    g.add_argument("--slurm-gpus", type=int, default=1, metavar="N", help="GPUs per job (default: 1)")
    g.add_argument("--slurm-cpus", type=int, default=8, metavar="N", help="CPUs per job (default: 8)")
    g.add_argument("--slurm-mem", type=int, default=None, metavar="GB", help="memory per job (default: the cluster's)")
    g.add_argument("--slurm-array-parallelism", type=int, default=64, metavar="N",
                   help="array tasks running at once (default: 64)")
    g.add_argument("--slurm-cluster", default=None, choices=["slurm", "local"],
                   help="submitit back end (default: SLURM when available; local = subprocesses, for testing)")


def _launcher_cfg(args: argparse.Namespace) -> dict:
    """The ``LAUNCHERS.build`` config of the chosen launcher."""
    cfg = {"type": args.launcher, "profile": args.profile, "feature_cache": args.feature_cache}
    if args.launcher == "local":
        cfg.update(workers=args.workers, plugins=args.plugins)
    elif args.launcher in ("slurm", "submitit"):
        cfg.update(partition=args.slurm_partition, time=args.slurm_time, gpus_per_job=args.slurm_gpus,
                   cpus_per_task=args.slurm_cpus, mem_gb=args.slurm_mem,
                   array_parallelism=args.slurm_array_parallelism, cluster=args.slurm_cluster, plugins=args.plugins)
    return cfg


def _add_report_options(p: argparse.ArgumentParser) -> None:
    """Options of the report (tables, statistics, plots) that every run and ``--report-only`` end with."""
    from benchmark.core.metrics import METRIC_NAMES
    from benchmark.report.build import ALL_METRICS, DEFAULT_ALPHA, DEFAULT_BASELINE, DEFAULT_METRICS

    g = p.add_argument_group("report")
    g.add_argument("--metrics", nargs="+", choices=ALL_METRICS, default=list(DEFAULT_METRICS), metavar="METRIC",
                   help=f"metrics of the per-domain tables, ranks and plots (default: {' '.join(DEFAULT_METRICS)}); "
                        "adapt_* / online_* name the transductive / online evaluations")
    g.add_argument("--baseline", default=DEFAULT_BASELINE,
                   help=f"method the paired significance tests compare against (default: {DEFAULT_BASELINE})")
    g.add_argument("--bootstrap", type=int, default=0, metavar="N",
                   help="N seeded resamples of the test samples for 95%% intervals (default: 0 = off)")
    g.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                   help=f"significance level of the tests and the critical difference (default: {DEFAULT_ALPHA})")
    from benchmark.adapt.scores import score_names

    from benchmark.report.selection import DEFAULT_METRIC, DEFAULT_RULE, RULES

    g.add_argument("--selection", default=DEFAULT_RULE, metavar="RULE",
                   help=f"how one hyper-parameter point per method is kept: {', '.join(RULES)} (default: "
                        f"{DEFAULT_RULE}: every point is a row); validation_domain also runs the data set's "
                        "validation domains; oracle is an upper bound")
    g.add_argument("--selection-metric", default=DEFAULT_METRIC, choices=METRIC_NAMES, metavar="METRIC",
                   help=f"metric the validation_domain and oracle rules maximise (default: {DEFAULT_METRIC})")
    g.add_argument("--score", default=None, metavar="NAME",
                   help="OOD score of AUROC, FPR95, AUPR, OSCR and the H-scores (default: each protocol's headline, "
                        f"msp_cos for ueo); registered: {', '.join(score_names())}, or a method's own recorded score")


def _report_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``write_report`` from the parsed options."""
    if args.bootstrap < 0:
        raise UsageError(f"--bootstrap must be 0 (off) or a positive number of resamples, got {args.bootstrap}")
    if not 0.0 < args.alpha < 1.0:
        raise UsageError(f"--alpha must lie in (0, 1), got {args.alpha}")
    from benchmark.report.selection import RULES

    if args.selection not in RULES:
        raise UsageError(f"unknown --selection {args.selection!r}; rules: {', '.join(RULES)}")
    return {"metrics": tuple(args.metrics), "baseline": args.baseline, "bootstrap": args.bootstrap,
            "alpha": args.alpha, "score": args.score, "selection": args.selection,
            "selection_metric": args.selection_metric}


def _list_registries() -> str:
    from benchmark.data import dataset_names, get_spec
    from benchmark.registry import LAUNCHERS, get_method, method_names

    lines = ["methods:"]
    for name in method_names():
        cls = get_method(name)
        lines.append(f"  {name:<14} {(cls.__doc__ or '').strip().splitlines()[0]}")
    lines.append("datasets:")
    for name in dataset_names():
        spec = get_spec(name)
        lines.append(f"  {name:<14} domains: {' '.join(spec.domains)}; protocols: {' '.join(spec.protocols)}")
    lines.append(f"launchers: {' '.join(sorted(LAUNCHERS.module_dict))}")
    return "\n".join(lines)


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    if not (device == "cpu" or device.startswith("cuda")):
        raise UsageError(f"--device must be cpu or cuda[:N], got {device!r}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugins", nargs="+", default=None)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    from benchmark.registry import load_plugins

    try:
        config = load_config(known.config) if known.config else {}
    except UsageError as err:
        print(f"run_bench.py: error: {err}", file=sys.stderr)
        return 2
    try:
        load_plugins(known.plugins if known.plugins is not None else config.get("plugins", []))
    except (OSError, ImportError, SyntaxError) as err:
        print(f"run_bench.py: error: cannot load plugin: {err}", file=sys.stderr)
        return 2
    parser = build_parser()
    models = config.pop("models", None)
    try:
        _apply_config(parser, config)
    except UsageError as err:
        print(f"run_bench.py: error: {err}", file=sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    args.models = models
    if args.list:
        print(_list_registries())
        return 0
    try:
        return _run(args)
    except UsageError as err:
        print(f"run_bench.py: error: {err}", file=sys.stderr)
        return 2


def load_config(path: str) -> dict:
    """The variables of an mmengine config file as a plain dict (``UsageError`` when unreadable)."""
    from mmengine.config import Config

    if not Path(path).is_file():
        raise UsageError(f"config file not found: {path}")
    try:
        return Config.fromfile(path).to_dict()
    except Exception as err:  # mmengine raises many types for a broken config; report one line
        raise UsageError(f"cannot read config {path}: {type(err).__name__}: {err}") from err


def _apply_config(parser: argparse.ArgumentParser, config: dict) -> None:
    """Config values become the parser's defaults, so flags on the command line override them.

    Keys are the flags' names with underscores (``cfg_options``, ``data_root``, ``slurm_time``)
    plus ``models``: a list of ``dict(model=..., pretrained=...)``, one sweep per backbone.
    """
    dests = {a.dest for a in parser._actions} - {"help", "config"}
    unknown = sorted(set(config) - dests - {"models"})
    if unknown:
        valid = ", ".join(sorted(dests | {"models"}))
        raise UsageError(f"unknown key(s) {', '.join(unknown)} in --config; valid: {valid}")
    for action in parser._actions:  # defaults bypass argparse's own choice check
        if action.choices is not None and action.dest in config:
            given = config[action.dest]
            bad = [v for v in (given if isinstance(given, (list, tuple)) else [given]) if v not in action.choices]
            if bad:
                raise UsageError(f"config {action.dest} = {bad}: not among {', '.join(map(str, action.choices))}")
    values = dict(config)
    if "out" in values:
        values["out"] = Path(values["out"])
    parser.set_defaults(**values)


def _backbones(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(model, pretrained) pairs of the sweep: ``--model`` wins over the config's ``models``."""
    if args.model is not None or not args.models:
        pairs = [(args.model or EMBEDDED_MODEL, args.pretrained)]
    else:
        pairs = []
        for m in args.models:
            if not isinstance(m, dict) or "model" not in m:
                raise UsageError(f"config `models` entries must be dict(model=..., pretrained=...), got {m!r}")
            pairs.append((m["model"], args.pretrained or m.get("pretrained")))
    return [(m, p or (EMBEDDED_TAG if m == EMBEDDED_MODEL else "openai")) for m, p in pairs]


def _print_plan(specs: list, out: Path, not_applicable: list[str], show_hparams: bool = False) -> None:
    """The dry run's table: one line per run, whether its record is already complete, and counts.

    ``show_hparams`` adds an indented line per run with every resolved hyper-parameter as
    ``key=value`` and the departures from the method's recipe on that data set.
    """
    from collections import Counter

    from benchmark.core.records import is_complete
    from benchmark.report.build import format_value, departures

    print(f"{'#':>5}  {'hash':<16}  {'method':<21} {'dataset/domain':<26} {'setting':<7} {'seed':>4}  "
          f"{'model':<16} state")
    done = 0
    for i, s in enumerate(specs, 1):
        complete = is_complete(out / "runs" / s.hash)
        done += complete
        print(f"{i:>5}  {s.hash:<16}  {s.method:<21} {s.dataset + '/' + s.domain:<26} {s.setting:<7} {s.seed:>4}  "
              f"{s.model:<16} {'complete' if complete else 'to run'}")
        if show_hparams:
            print("       hparams: " + " ".join(f"{k}={format_value(v)}" for k, v in sorted(s.hparams.items())))
            diffs = departures(s.method, s.hparams, s.dataset)
            print("       departures: " + (" ".join(f"{k}={format_value(v)}" for k, v in diffs.items()) or "none"))
    per = Counter((s.model, s.method) for s in specs)
    print("runs per backbone and method: " + ", ".join(f"{m}/{meth} {n}" for (m, meth), n in sorted(per.items())))
    for line in not_applicable:
        print(f"not applicable (left out): {line}")
    print(f"dry run: {len(specs)} runs, {done} with complete records, {len(specs) - done} to run; nothing was run")


def _run(args: argparse.Namespace) -> int:
    from benchmark.adapt.adapter import HyperParameterError
    from benchmark.model.clip import ModelError, resolve_pretrained
    from benchmark.registry import LAUNCHERS, method_names
    from benchmark.report.build import write_report
    from benchmark.run.sweep import SweepError, SweepRequest, build_sweep, parse_cfg_options

    out: Path = args.out
    report_options = _report_options(args)
    if args.report_only:
        try:
            write_report(out, **report_options)
        except (FileNotFoundError, ValueError) as err:
            raise UsageError(str(err)) from err
        print((out / "leaderboard.md").read_text())
        return 0
    if not args.dry_run:
        _check_device(args.device)
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    specs, not_applicable = [], []
    try:
        overrides = parse_cfg_options(args.cfg_options)
        for model, pretrained in _backbones(args):
            resolve_pretrained(model, pretrained)
            specs += build_sweep(SweepRequest(
                methods=args.methods or method_names(), datasets=args.datasets, seeds=args.seeds,
                model=model, pretrained=pretrained, protocol=args.protocol, domains=args.domains,
                settings=args.settings, overrides=overrides, with_validation=args.selection == "validation_domain",
                grids=args.grids,
            ), not_applicable)
    except (SweepError, HyperParameterError, ModelError, KeyError) as err:
        raise UsageError(err.args[0] if err.args else str(err)) from err
    if not args.dry_run:
        _check_precision(specs, args.device)
    if args.dry_run:
        _print_plan(specs, out, not_applicable, args.show_hparams)
        return 0
    if not specs:
        raise UsageError("nothing to run: " + "; ".join(not_applicable or ["the sweep is empty"]))
    for line in not_applicable:
        print(f"not applicable (left out): {line}", file=sys.stderr)
    _check_data(args.datasets, args.data_root)
    launcher = LAUNCHERS.build(_launcher_cfg(args))
    records = launcher(specs, out, args.data_root, args.device)
    write_report(out, **report_options)
    print((out / "leaderboard.md").read_text())
    print(summarize(records, out))
    failed = [r for r in records if r.get("status") not in ("done", "busy")]
    for r in failed:
        s = r["spec"]
        print(f"  failed: {s['method']} {s['dataset']}/{s['domain']}/{s['setting']} seed {s['seed']}: {r.get('error')}"
              f" (record: {out}/runs/{r['hash']}/result.json)", file=sys.stderr)
    return 1 if failed else 0


def _check_precision(specs: list, device: str) -> None:
    """Every run's ``precision`` must run on ``device`` (only fp32 on a CPU): exit 2 before anything runs."""
    from benchmark.model.precision import PrecisionError, effective_precision
    from benchmark.registry import get_method

    for spec in specs:
        cls = get_method(spec.method)
        try:
            effective_precision(spec.hparams["precision"], cls.official_precision, device, spec.method)
        except PrecisionError as err:
            raise UsageError(str(err)) from err


def summarize(records: list[dict], out: Path) -> str:
    """The sweep's one-line, machine-readable tally: ``N runs: X ran, Y reused ..., Z failed``.

    Runs another live sweep was computing (``busy``) are neither ran nor failed; they are
    counted separately so that a rerun collects them.
    """
    failed = sum(1 for r in records if r.get("status") not in ("done", "busy"))
    busy = sum(1 for r in records if r.get("status") == "busy")
    reused = sum(1 for r in records if r.get("skipped") and r.get("status") == "done")
    ran = len(records) - failed - busy - reused
    busy_text = f", {busy} busy in another process" if busy else ""
    return (f"{len(records)} runs: {ran} ran, {reused} reused complete records, {failed} failed{busy_text}. "
            f"Records and tables under {out}/")


def _check_data(datasets: list[str], data_root: str | None) -> None:
    """Fail fast (exit 2) when a real data set's root is missing, naming the path and layout."""
    from benchmark.data import DataError, get_spec
    from benchmark.data.locate import dataset_root, resolve_data_root

    for name in datasets:
        spec = get_spec(name)
        if spec.layout.kind == "synthetic":
            continue
        try:
            dataset_root(spec, resolve_data_root(spec, data_root))
        except DataError as err:
            raise UsageError(str(err)) from err
