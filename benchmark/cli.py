"""The command line of ``run_bench.py``: parse, build the sweep, run it, report.

Choices come from the registries, so a method registered in ``methods/`` (or a ``--plugins``
file) is on the command line without editing this file. A ``--config`` file (mmengine) gives
the defaults of a whole sweep, flags override it, and ``--dry-run`` lists its runs. Exit status:
0 when every run is done (or, with ``--dry-run``, planned), 1 when any run failed or was left
busy in another process (or the sweep
stopped because no later run could succeed: no space left), 2 on bad arguments (an unusable
``--out``, a broken plugin, ``--launcher slurm`` without ``sbatch``), 130 / 143 when stopped by
SIGINT / SIGTERM. The last stdout line is the machine-readable tally ``N runs: X ran, Y reused
complete records, Z failed``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from benchmark.cli_parser import UsageError, build_parser, launcher_cfg, parse_value, report_options
from benchmark.core.paths import EMBEDDED_MODEL, EMBEDDED_TAG

__all__ = ["UsageError", "build_parser", "main", "parse_value", "summarize"]


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
    """Entry point; returns the process exit status.

    The first SIGINT or SIGTERM stops the sweep (``benchmark.run.interrupt``): one line
    ``stopped: N done, M not started; rerun the same command to resume`` on stderr, exit status
    130 (SIGINT) or 143 (SIGTERM), no traceback. A sweep stopped because no later run could succeed
    (no space left) prints why and the same line, exit status 1.
    """
    from benchmark.run.interrupt import SweepStopped, exit_status, stop_on_signals

    progress: dict = {}
    with stop_on_signals():
        try:
            return _main(sys.argv[1:] if argv is None else argv, progress)
        except SweepStopped as stop:
            if stop.reason:
                print(f"run_bench.py: error: {stop.reason}", file=sys.stderr)
            print(stop.line(), file=sys.stderr)
            return stop.status
        except KeyboardInterrupt as err:  # outside the launcher: before the runs, or while reporting
            total, done = progress.get("total"), progress.get("done", 0)
            if total is None:
                print("stopped before any run started; rerun the same command to resume", file=sys.stderr)
            else:
                print(SweepStopped(done, total - done, 0).line(), file=sys.stderr)
            return exit_status(err)


def _main(argv: list[str], progress: dict) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugins", nargs="+", default=None)
    pre.add_argument("--config", default=None)
    pre.add_argument("--report-only", action="store_true")
    known, _ = pre.parse_known_args(argv)
    from benchmark.registry import PluginError, load_plugins

    try:
        config = load_config(known.config) if known.config else {}
    except UsageError as err:
        print(f"run_bench.py: error: {err}", file=sys.stderr)
        return 2
    if not known.report_only:
        try:
            load_plugins(known.plugins if known.plugins is not None else config.get("plugins", []))
        except PluginError as err:
            print(f"run_bench.py: error: {err}", file=sys.stderr)
            return 2
        if known.config and config.get("cfg_options"):
            try:
                _check_config_options(known.config, config["cfg_options"])
            except UsageError as err:
                print(f"run_bench.py: error: {err}", file=sys.stderr)
                return 2
    parser = build_parser(light=known.report_only)
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
        return _run(args, progress)
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


def _check_config_options(path: str, options: dict) -> None:
    """A config's ``cfg_options`` name registered methods and their hyper-parameters (``UsageError`` naming the file)."""
    from benchmark.adapt.hparams import HyperParameterError
    from benchmark.run.sweep import SweepError, parse_cfg_options

    try:
        parse_cfg_options(options)
    except (SweepError, HyperParameterError) as err:
        raise UsageError(f"{path}: cfg_options: {err}") from err


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

    from benchmark.core.hparams import format_departures, format_value
    from benchmark.core.records import is_complete

    print(
        f"{'#':>5}  {'hash':<16}  {'method':<21} {'dataset/domain':<26} {'setting':<7} {'seed':>4}  {'model':<16} state"
    )
    done = 0
    for i, s in enumerate(specs, 1):
        complete = is_complete(out / "runs" / s.hash)
        done += complete
        print(
            f"{i:>5}  {s.hash:<16}  {s.method:<21} {s.dataset + '/' + s.domain:<26} {s.setting:<7} {s.seed:>4}  "
            f"{s.model:<16} {'complete' if complete else 'to run'}"
        )
        if show_hparams:
            print("       hparams: " + " ".join(f"{k}={format_value(v)}" for k, v in sorted(s.hparams.items())))
            print("       departures: " + (format_departures(s.departures).replace(", ", " ") or "none"))
    per = Counter((s.model, s.method) for s in specs)
    print("runs per backbone and method: " + ", ".join(f"{m}/{meth} {n}" for (m, meth), n in sorted(per.items())))
    for line in not_applicable:
        print(f"not applicable (left out): {line}")
    print(f"dry run: {len(specs)} runs, {done} with complete records, {len(specs) - done} to run; nothing was run")


def check_out(out: Path, create: bool = True) -> None:
    """``--out`` must be (or, with ``create``, become) a folder this process can write in: ``UsageError`` naming why not.

    Without ``create`` (``--report-only``) a missing folder is left to the report's own message.
    """
    import tempfile

    try:
        if not create and not out.exists():
            return
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        raise UsageError(f"--out {out} is not a folder (a file of that name exists)") from None
    except OSError as err:
        raise UsageError(
            f"--out {out} cannot be used: {err.strerror or err}"
            f"{f' ({err.filename})' if err.filename and str(err.filename) != str(out) else ''}"
        ) from None


def _run(args: argparse.Namespace, progress: dict) -> int:
    from benchmark.report.build import write_report

    out: Path = args.out
    options = report_options(args)
    if not args.dry_run:
        check_out(out, create=not args.report_only)
    if args.report_only:
        try:
            report = write_report(out, **options)
        except (FileNotFoundError, ValueError) as err:
            raise UsageError(str(err)) from err
        print((out / "leaderboard.md").read_text())
        _print_left_out(report.problems)
        return 0
    return _sweep(args, out, options, progress)


def _print_left_out(problems: list[str]) -> None:
    """Name every run folder the report could not use (stderr)."""
    for line in problems:
        print(f"left out of the tables: {line}", file=sys.stderr)


def _sweep(args: argparse.Namespace, out: Path, report_options: dict, progress: dict) -> int:
    """Build the sweep, check what it needs, run it and report."""
    from benchmark.adapt.adapter import HyperParameterError
    from benchmark.data.fingerprint import forget
    from benchmark.model.clip import ModelError, resolve_pretrained
    from benchmark.registry import LAUNCHERS, method_names
    from benchmark.report.build import write_report
    from benchmark.run.preflight import preflight
    from benchmark.run.sweep import SweepError, SweepRequest, build_sweep, parse_cfg_options

    forget()  # data may have changed since an earlier sweep of this process

    if not args.dry_run:
        _check_device(args.device)
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if not args.dry_run and args.launcher in ("slurm", "submitit"):
        from benchmark.run.launchers import slurm_problem

        problem = slurm_problem(args.slurm_cluster)
        if problem:
            raise UsageError(problem)
    specs, not_applicable = [], []
    try:
        overrides = parse_cfg_options(args.cfg_options)
        for model, pretrained in _backbones(args):
            resolve_pretrained(model, pretrained)
            specs += build_sweep(
                SweepRequest(
                    methods=args.methods or method_names(),
                    datasets=args.datasets,
                    seeds=args.seeds,
                    model=model,
                    pretrained=pretrained,
                    protocol=args.protocol,
                    domains=args.domains,
                    settings=args.settings,
                    overrides=overrides,
                    with_validation=args.selection == "validation_domain",
                    grids=args.grids,
                    device=args.device,
                ),
                not_applicable,
            )
    except (SweepError, HyperParameterError, ModelError, KeyError) as err:
        raise UsageError(err.args[0] if err.args else str(err)) from err
    problems = preflight(specs, args.data_root, load_weights=not args.dry_run)
    if args.dry_run:
        _print_plan(specs, out, not_applicable, args.show_hparams)
        for line in problems:
            print(f"pre-flight: {line}", file=sys.stderr)
        return 0
    if problems:
        raise UsageError(
            "pre-flight found what the sweep needs and cannot have; nothing was run:\n  " + "\n  ".join(problems)
        )
    if not specs:
        raise UsageError("nothing to run: " + "; ".join(not_applicable or ["the sweep is empty"]))
    for line in not_applicable:
        print(f"not applicable (left out): {line}", file=sys.stderr)
    launcher = LAUNCHERS.build(launcher_cfg(args))
    progress["total"] = len(specs)
    records = launcher(specs, out, args.data_root, args.device)
    progress["done"] = len(records)
    redone = [r for r in records if r.get("redone")]
    for r in redone:
        print(f"recomputed: {r['redone']}", file=sys.stderr)
    try:
        report = write_report(out, **report_options)
    except FileNotFoundError as err:  # no run of this sweep has a record yet (all busy elsewhere, or failed)
        print(f"no report: {err}", file=sys.stderr)
    except ValueError as err:  # the records are kept; the tables cannot be built with these options
        print(summarize(records, out))
        raise UsageError(f"no report: {err}; the records are kept (rebuild with --report-only)") from err
    else:
        print((out / "leaderboard.md").read_text())
        _print_left_out(report.problems)
    print(summarize(records, out))
    failed = [r for r in records if r.get("status") not in ("done", "busy")]
    for r in failed:
        s = r["spec"]
        print(
            f"  failed: {s['method']} {s['dataset']}/{s['domain']}/{s['setting']} seed {s['seed']}: {r.get('error')}"
            f" (record: {out}/runs/{r['hash']}/result.json)",
            file=sys.stderr,
        )
    busy = [r for r in records if r.get("status") == "busy"]
    for r in busy:
        s = r["spec"]
        print(
            f"  busy: {s['method']} {s['dataset']}/{s['domain']}/{s['setting']} seed {s['seed']} is being computed by "
            f"another process (lock {out}/runs/{r['hash']}/.lock); rerun once it ends to collect its record",
            file=sys.stderr,
        )
    return 1 if failed or busy else 0


def summarize(records: list[dict], out: Path) -> str:
    """The sweep's one-line, machine-readable tally: ``N runs: X ran, Y reused ..., Z failed``.

    Runs another live sweep was computing (``busy``) are neither ran nor failed; they are
    counted separately so that a rerun collects them.
    """
    failed = sum(1 for r in records if r.get("status") not in ("done", "busy"))
    busy = sum(1 for r in records if r.get("status") == "busy")
    reused = sum(1 for r in records if r.get("skipped") and r.get("status") == "done")
    redone = sum(1 for r in records if r.get("redone"))
    ran = len(records) - failed - busy - reused
    busy_text = f", {busy} busy in another process" if busy else ""
    redone_text = f", {redone} of the ran replaced a stale or broken record" if redone else ""
    return (
        f"{len(records)} runs: {ran} ran, {reused} reused complete records, {failed} failed{busy_text}{redone_text}. "
        f"Records and tables under {out}/"
    )


def main_exit() -> None:
    """The ``clipbench`` console script: :func:`main`, its status as the process's exit status."""
    sys.exit(main())
