"""The command line of ``run_bench.py``: parse, build the sweep, run it, report.

Choices come from the registries, so a method registered in ``methods/`` (or a ``--plugins``
file) is on the command line without editing this file. Exit status: 0 when every run is done,
1 when any run failed, 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mmengine.config import DictAction

from benchmark.model import EMBEDDED_MODEL, EMBEDDED_TAG

DEFAULT_DATASET = "synthetic"
DEFAULT_SEEDS = [1, 2, 3]


class UsageError(Exception):
    """Bad arguments: reported in one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with method/data set/launcher choices taken from the registries."""
    from benchmark.data import dataset_names
    from benchmark.registry import LAUNCHERS, method_names

    import benchmark.launchers  # noqa: F401  (registers the launchers)

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
    p.add_argument("--model", default=EMBEDDED_MODEL, help=f"open_clip architecture (default: {EMBEDDED_MODEL})")
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
                   help="how runs are executed (default: inline)")
    p.add_argument("--plugins", nargs="+", default=[], metavar="FILE.py",
                   help="extra Python files (or modules) that register methods")
    p.add_argument("--list", action="store_true", help="list registered methods, data sets and launchers, then exit")
    p.add_argument("--report-only", action="store_true", help="rebuild the tables from the records under --out")
    _add_report_options(p)
    return p


def _add_report_options(p: argparse.ArgumentParser) -> None:
    """Options of the report (tables, statistics, plots) that every run and ``--report-only`` end with."""
    from benchmark.report import ALL_METRICS, DEFAULT_ALPHA, DEFAULT_BASELINE, DEFAULT_METRICS

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


def _report_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``write_report`` from the parsed options."""
    if args.bootstrap < 0:
        raise UsageError(f"--bootstrap must be 0 (off) or a positive number of resamples, got {args.bootstrap}")
    if not 0.0 < args.alpha < 1.0:
        raise UsageError(f"--alpha must lie in (0, 1), got {args.alpha}")
    return {"metrics": tuple(args.metrics), "baseline": args.baseline, "bootstrap": args.bootstrap,
            "alpha": args.alpha}


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
    pre.add_argument("--plugins", nargs="+", default=[])
    known, _ = pre.parse_known_args(argv)
    from benchmark.registry import load_plugins

    try:
        load_plugins(known.plugins)
    except (OSError, ImportError, SyntaxError) as err:
        print(f"run_bench.py: error: cannot load plugin: {err}", file=sys.stderr)
        return 2
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if args.list:
        print(_list_registries())
        return 0
    try:
        return _run(args)
    except UsageError as err:
        print(f"run_bench.py: error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from benchmark.adapter import HyperParameterError
    from benchmark.model import ModelError, resolve_pretrained
    from benchmark.registry import LAUNCHERS, method_names
    from benchmark.report import write_report
    from benchmark.sweep import SweepError, SweepRequest, build_sweep, parse_cfg_options

    out: Path = args.out
    report_options = _report_options(args)
    if args.report_only:
        try:
            write_report(out, **report_options)
        except (FileNotFoundError, ValueError) as err:
            raise UsageError(str(err)) from err
        print((out / "leaderboard.md").read_text())
        return 0
    _check_device(args.device)
    pretrained = args.pretrained or (EMBEDDED_TAG if args.model == EMBEDDED_MODEL else "openai")
    try:
        resolve_pretrained(args.model, pretrained)
        overrides = parse_cfg_options(args.cfg_options)
        specs = build_sweep(SweepRequest(
            methods=args.methods or method_names(), datasets=args.datasets, seeds=args.seeds,
            model=args.model, pretrained=pretrained, protocol=args.protocol, domains=args.domains,
            settings=args.settings, overrides=overrides,
        ))
    except (SweepError, HyperParameterError, ModelError, KeyError) as err:
        raise UsageError(err.args[0] if err.args else str(err)) from err
    _check_data(args.datasets, args.data_root)
    launcher = LAUNCHERS.build({"type": args.launcher})
    records = launcher(specs, out, args.data_root, args.device)
    write_report(out, **report_options)
    print((out / "leaderboard.md").read_text())
    failed = [r for r in records if r.get("status") != "done"]
    skipped = sum(1 for r in records if r.get("skipped"))
    print(f"{len(records)} runs: {len(records) - len(failed) - skipped} ran, {skipped} reused complete records, "
          f"{len(failed)} failed. Records and tables under {out}/")
    for r in failed:
        s = r["spec"]
        print(f"  failed: {s['method']} {s['dataset']}/{s['domain']}/{s['setting']} seed {s['seed']}: {r.get('error')}",
              file=sys.stderr)
    return 1 if failed else 0


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
