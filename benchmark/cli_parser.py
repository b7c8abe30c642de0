"""The command line's flags: the parser (choices from the registries), ``--cfg-options`` values as
written, and the options handed to the launcher and the report."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

import yaml

from benchmark.core.paths import EMBEDDED_MODEL, EMBEDDED_TAG

DEFAULT_DATASET = "synthetic"
DEFAULT_SEEDS = [1, 2, 3]


class UsageError(Exception):
    """Bad arguments: reported in one line, exit status 2."""


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _numbers(value: Any) -> Any:
    """Strings that are numbers as Python writes them (``1e-4``, which YAML 1.1 leaves a string) become numbers."""
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        return float(value) if any(c in value for c in ".eE") else int(value)
    return value


def parse_value(text: str) -> Any:
    """One ``--cfg-options`` value, exactly as written: YAML's scalars and flow lists (``[1e-4,1e-3]``,
    ``true``, ``null``, ``'a, quoted'``), numbers as Python reads them, spaces inside a plain string
    kept (``a photo of a``); an unbracketed, unquoted value with commas is a list, as mmengine's."""
    stripped = text.strip()
    quoted = len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\""
    if "," in stripped and not quoted and not stripped.startswith(("[", "(")):
        return [parse_value(part) for part in stripped.split(",")]
    try:
        value = yaml.safe_load(stripped) if stripped else None
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and not quoted:
        return _numbers(stripped)
    return value if quoted else _numbers(value)


class CfgOptions(argparse.Action):
    """``METHOD.KEY=VALUE`` pairs into a dict, each value through :func:`parse_value` (mmengine's
    ``DictAction`` strips every space from values, turning ``a photo of a`` into ``aphotoofa``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        options = dict(getattr(namespace, self.dest, None) or {})
        for item in values:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise argparse.ArgumentError(self, f"expected METHOD.KEY=VALUE, got {item!r}")
            options[key.strip()] = parse_value(value)
        setattr(namespace, self.dest, options)


def build_parser(light: bool = False) -> argparse.ArgumentParser:
    """The argument parser, with method/data set/launcher choices taken from the registries.

    ``light`` (``--report-only``): the same flags without the registries' choices, so that
    rebuilding tables imports no torch, no model and no method.
    """
    if light:

        def method_names() -> list[str]:
            return []

        dataset_names = method_names
        launchers = ["inline"]
    else:
        import benchmark.run.launchers  # noqa: F401  (registers the launchers)
        from benchmark.data import dataset_names
        from benchmark.registry import LAUNCHERS, method_names

        launchers = sorted(LAUNCHERS.module_dict)

    p = argparse.ArgumentParser(
        prog="run_bench.py",
        description="Benchmark unsupervised CLIP adaptation methods in the open-set setting of UEO (ICML 2024).",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        choices=method_names() or None,
        default=None,
        metavar="METHOD",
        help=f"methods to run (default: all). Registered: {', '.join(method_names())}",
    )
    p.add_argument(
        "--datasets",
        nargs="+",
        choices=dataset_names() or None,
        default=[DEFAULT_DATASET],
        metavar="DATASET",
        help=f"data sets (default: {DEFAULT_DATASET}). Registered: {', '.join(dataset_names())}",
    )
    p.add_argument("--domains", nargs="+", default=None, help="target domains (default: all of each data set)")
    p.add_argument(
        "--settings",
        nargs="+",
        default=None,
        choices=["cda", "pda", "oda", "opda"],
        help="category-shift settings (default: oda)",
    )
    p.add_argument("--protocol", default="ueo", help="category-shift protocol: ueo (default) or classic")
    p.add_argument("--seeds", nargs="+", type=int, default=DEFAULT_SEEDS, help="seeds (default: 1 2 3)")
    p.add_argument(
        "--model", default=None, help=f"open_clip architecture (default: the config's models, else {EMBEDDED_MODEL})"
    )
    p.add_argument(
        "--pretrained",
        default=None,
        help=f"weights: an open_clip tag (e.g. openai), a local file, or 'none' "
        f"(default: '{EMBEDDED_TAG}' for {EMBEDDED_MODEL}, else openai)",
    )
    p.add_argument(
        "--data-root",
        default=os.environ.get("CLIPBENCH_DATA"),
        help="folder holding the real data sets (default: $CLIPBENCH_DATA)",
    )
    p.add_argument("--out", default="results", type=Path, help="output folder (default: results/)")
    p.add_argument(
        "--cfg-options",
        nargs="+",
        action=CfgOptions,
        default={},
        metavar="METHOD.KEY=VALUE",
        help="override hyper-parameters, e.g. ueo.lr=1e-4 tent.epochs=1",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    p.add_argument(
        "--launcher",
        default="inline",
        choices=launchers if not light else None,
        help="how runs are executed (default: inline): inline = this process, local = a pool of "
        "--workers processes, slurm = a SLURM array job through submitit",
    )
    p.add_argument("--workers", type=int, default=2, help="worker processes of --launcher local (default: 2)")
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE.py",
        help="mmengine config of a whole sweep (e.g. configs/ueo_paper.py); flags given on the "
        "command line override its values",
    )
    p.add_argument(
        "--grids",
        action="store_true",
        help="also sweep each data set's hyper-parameter grid (`grids:` in its dataset.yaml, the grid its "
        "budgets were selected from); combine with --selection validation_domain to redo the selection",
    )
    p.add_argument("--dry-run", action="store_true", help="list the runs of the sweep and exit; runs nothing")
    p.add_argument(
        "--show-hparams",
        action="store_true",
        help="with --dry-run: print every run's resolved hyper-parameters as key=value",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="record time per phase (data, forward, backward, evaluate) and images/s in each record",
    )
    p.add_argument(
        "--no-feature-cache",
        dest="feature_cache",
        action="store_false",
        help="do not reuse frozen image features, nor the features of augmented test views, across runs "
        "(cache: <out>/features or $CLIPBENCH_FEATURES)",
    )
    _add_slurm_options(p)
    p.add_argument(
        "--plugins",
        nargs="+",
        default=[],
        metavar="FILE.py",
        help="extra Python files (or modules) that register methods",
    )
    p.add_argument("--list", action="store_true", help="list registered methods, data sets and launchers, then exit")
    p.add_argument("--report-only", action="store_true", help="rebuild the tables from the records under --out")
    _add_report_options(p, light)
    return p


def _add_slurm_options(p: argparse.ArgumentParser) -> None:
    """Options of ``--launcher slurm`` (one array job; each task runs one spec)."""
    g = p.add_argument_group("slurm (--launcher slurm)")
    g.add_argument("--slurm-partition", default=None, help="partition to submit to (default: the cluster's)")
    g.add_argument("--slurm-time", type=int, default=240, metavar="MIN", help="time limit per run (default: 240)")
    g.add_argument("--slurm-gpus", type=int, default=1, metavar="N", help="GPUs per job (default: 1)")
    g.add_argument("--slurm-cpus", type=int, default=8, metavar="N", help="CPUs per job (default: 8)")
    g.add_argument("--slurm-mem", type=int, default=None, metavar="GB", help="memory per job (default: the cluster's)")
    g.add_argument(
        "--slurm-array-parallelism", type=int, default=64, metavar="N", help="array tasks running at once (default: 64)"
    )
    g.add_argument(
        "--slurm-cluster",
        default=None,
        choices=["slurm", "local"],
        help="submitit back end (default: slurm, which needs sbatch on PATH; local = submitit's local "
        "executor, one subprocess per run, for testing)",
    )


def launcher_cfg(args: argparse.Namespace) -> dict:
    """The ``LAUNCHERS.build`` config of the chosen launcher."""
    cfg = {"type": args.launcher, "profile": args.profile, "feature_cache": args.feature_cache}
    if args.launcher == "local":
        cfg.update(workers=args.workers, plugins=args.plugins)
    elif args.launcher in ("slurm", "submitit"):
        cfg.update(
            partition=args.slurm_partition,
            time=args.slurm_time,
            gpus_per_job=args.slurm_gpus,
            cpus_per_task=args.slurm_cpus,
            mem_gb=args.slurm_mem,
            array_parallelism=args.slurm_array_parallelism,
            cluster=args.slurm_cluster,
            plugins=args.plugins,
        )
    return cfg


def _add_report_options(p: argparse.ArgumentParser, light: bool = False) -> None:
    """Options of the report (tables, statistics, plots) that every run and ``--report-only`` end with."""
    from benchmark.core.metrics import METRIC_NAMES
    from benchmark.report.aggregate import DEFAULT_ALPHA, DEFAULT_BASELINE
    from benchmark.report.frame import ALL_METRICS, DEFAULT_METRICS

    g = p.add_argument_group("report")
    g.add_argument(
        "--metrics",
        nargs="+",
        choices=ALL_METRICS,
        default=list(DEFAULT_METRICS),
        metavar="METRIC",
        help=f"metrics of the per-domain tables, ranks and plots (default: {' '.join(DEFAULT_METRICS)}); "
        "adapt_* / online_* name the transductive / online evaluations",
    )
    g.add_argument(
        "--baseline",
        default=DEFAULT_BASELINE,
        help=f"method the paired significance tests compare against (default: {DEFAULT_BASELINE})",
    )
    g.add_argument(
        "--bootstrap",
        type=int,
        default=0,
        metavar="N",
        help="N seeded resamples of the test samples for 95%% intervals (default: 0 = off)",
    )
    g.add_argument(
        "--alpha",
        type=float,
        default=DEFAULT_ALPHA,
        help=f"significance level of the tests and the critical difference (default: {DEFAULT_ALPHA})",
    )
    if light:

        def score_names() -> list[str]:
            return ["the headline or any recorded score"]
    else:
        from benchmark.adapt.scores import score_names

    from benchmark.report.selection import DEFAULT_METRIC, DEFAULT_RULE, RULES

    g.add_argument(
        "--selection",
        default=DEFAULT_RULE,
        metavar="RULE",
        help=f"how one hyper-parameter point per method is kept: {', '.join(RULES)} (default: "
        f"{DEFAULT_RULE}: every point is a row); validation_domain also runs the data set's "
        "validation domains; oracle is an upper bound",
    )
    g.add_argument(
        "--selection-metric",
        default=DEFAULT_METRIC,
        choices=METRIC_NAMES,
        metavar="METRIC",
        help=f"metric the validation_domain and oracle rules maximise (default: {DEFAULT_METRIC})",
    )
    g.add_argument(
        "--score",
        default=None,
        metavar="NAME",
        help="OOD score of AUROC, FPR95, AUPR, OSCR and the H-scores (default: each protocol's headline, "
        f"msp_cos for ueo); registered: {', '.join(score_names())}, or a method's own recorded score",
    )


def report_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``write_report`` from the parsed options."""
    if args.bootstrap < 0:
        raise UsageError(f"--bootstrap must be 0 (off) or a positive number of resamples, got {args.bootstrap}")
    if not 0.0 < args.alpha < 1.0:
        raise UsageError(f"--alpha must lie in (0, 1), got {args.alpha}")
    from benchmark.report.selection import RULES

    if args.selection not in RULES:
        raise UsageError(f"unknown --selection {args.selection!r}; rules: {', '.join(RULES)}")
    return {
        "metrics": tuple(args.metrics),
        "baseline": args.baseline,
        "bootstrap": args.bootstrap,
        "alpha": args.alpha,
        "score": args.score,
        "selection": args.selection,
        "selection_metric": args.selection_metric,
    }
