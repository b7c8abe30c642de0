"""``python -m benchmark.data``: list data sets, describe one, get one into a data root, check it, cache it.

    python -m benchmark.data list
    python -m benchmark.data info office_home
    python -m benchmark.data download visda2017 --data-root DIR [--domains real] [--keep-archives] [--overwrite]
    python -m benchmark.data prepare office_home --archive OfficeHomeDataset_10072016.zip --data-root DIR
    python -m benchmark.data verify office_home --data-root DIR [--domains Art] [--decode]   (alias: check)
    python -m benchmark.data cache office_home --data-root DIR [--resolution 224] [--cache DIR]

Exit status: 0 when all is well, 1 when data are missing or wrong, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from benchmark.data.cache import CACHE_ENV, CACHE_FOLDER
from benchmark.data.catalog import dataset_names, get_spec
from benchmark.data.errors import DataError, UnknownNameError
from benchmark.data.fetch import download
from benchmark.data.install import prepare
from benchmark.data.locate import DATA_ROOT_ENV, expected_layout, how_to_get
from benchmark.data.spec import DatasetSpec
from benchmark.data.split import decode_domain
from benchmark.data.verify import verify


def format_indices(indices: list[int]) -> str:
    """Compress sorted indices into ranges, e.g. ``0-14, 25-27``."""
    parts: list[str] = []
    start = prev = None
    for i in [*indices, None]:
        if start is not None and (i is None or i != prev + 1):
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if i is not None and start is None:
            start = i
        prev = i
    return ", ".join(parts)


def _list(_: argparse.Namespace) -> int:
    for name in dataset_names():
        spec = get_spec(name)
        print(f"{name:14s} {spec.title:32s} {len(spec.classes):4d} classes  domains: {', '.join(spec.domains)}")
    return 0


def _info(args: argparse.Namespace) -> int:
    spec = get_spec(args.name)
    print(f"{spec.title} ({spec.name}): {len(spec.classes)} classes, spec {spec.path / 'dataset.yaml'}")
    for facts in spec.domain_facts.values():
        images = ", ".join(f"{k} {v}" for k, v in facts.images.items())
        print(f"  domain {facts.name:10s} folder {facts.folders[0]!r:16s} images: {images or '?'}")
    print(f"Layout: {expected_layout(spec)}")
    for proto in spec.protocols.values():
        default = " (default)" if proto.name == spec.default_protocol else ""
        known = list(proto.known)
        names = ", ".join(spec.classes[i] for i in known) if len(known) <= 12 else format_indices(known)
        test = format_indices(list(proto.test))
        print(f"Protocol {proto.name}{default}: K={proto.num_known} known: {names}; test: {test}")
        for setting, classes in proto.settings.items():
            print(f"  {setting:5s} adapt classes {format_indices(list(classes))}")
    if spec.overrides:
        print(f"Method overrides: {spec.overrides}")
    print(f"How to get it: {how_to_get(spec)}")
    return 0


def _files_spec(name: str, verb: str) -> DatasetSpec | None:
    """The spec of a data set read from files, or None (with a message) for a generated one."""
    spec = get_spec(name)
    if spec.layout.kind == "synthetic":
        print(f"{spec.name} is generated at run time; nothing to {verb}")
        return None
    return spec


def _verify(args: argparse.Namespace) -> int:
    spec = _files_spec(args.name, "verify")
    if spec is None:
        return 0
    report = verify(spec, args.data_root, args.domains, decode=args.decode, threads=args.threads)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def _download(args: argparse.Namespace) -> int:
    spec = get_spec(args.name)
    if not spec.download:
        print(
            f"{spec.title} cannot be downloaded automatically.\n{how_to_get(spec)}\n"
            f"Then: python -m benchmark.data prepare {spec.name} --archive FILE --data-root DIR"
        )
        return 1
    root = download(spec, args.data_root, args.domains, keep_archives=args.keep_archives, overwrite=args.overwrite)
    print(
        f"{spec.title} is in {root}; check it with: python -m benchmark.data verify {spec.name} "
        f"--data-root {root.parent}"
    )
    return 0


def _prepare(args: argparse.Namespace) -> int:
    spec = _files_spec(args.name, "prepare")
    if spec is None:
        return 0
    data_root = args.data_root or os.environ.get(DATA_ROOT_ENV)
    if not data_root:
        raise DataError(f"no data root: pass --data-root DIR or set {DATA_ROOT_ENV}")
    prepare(spec, args.archive, Path(data_root).expanduser(), overwrite=args.overwrite)
    print(f"done; check it with: python -m benchmark.data verify {spec.name} --data-root {data_root}")
    return 0


def _cache(args: argparse.Namespace) -> int:
    spec = _files_spec(args.name, "cache")
    if spec is None:
        return 0
    for domain in args.domains or spec.domains:
        files, folder, decoded = decode_domain(spec, domain, args.data_root, args.resolution, args.threads, args.cache)
        sizes = ", ".join(f"{k} {len(v.images)}" for k, v in decoded.items())
        print(f"{spec.name}/{domain}: {sizes} images at {args.resolution} px cached in {folder}")
    return 0


def _data_args(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("name", help="data set (see `list`)")
    sub.add_argument("--data-root", default=None, help=f"folder holding the data sets (default: ${DATA_ROOT_ENV})")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m benchmark.data``."""
    parser = argparse.ArgumentParser(prog="python -m benchmark.data", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the available data sets").set_defaults(run=_list)
    info = commands.add_parser("info", help="facts, layout and protocols of one data set")
    info.add_argument("name")
    info.set_defaults(run=_info)

    sub = commands.add_parser("download", help="fetch, check and install the files with direct links")
    _data_args(sub)
    sub.add_argument("--domains", nargs="+", default=None, help="only these domains (default: all)")
    sub.add_argument("--keep-archives", action="store_true", help="keep the archives after extracting them")
    sub.add_argument("--overwrite", action="store_true", help="replace parts that are already installed")
    sub.set_defaults(run=_download)

    sub = commands.add_parser("prepare", help="check and install archives or list files fetched by hand")
    _data_args(sub)
    sub.add_argument(
        "--archive",
        nargs="+",
        required=True,
        type=Path,
        metavar="FILE",
        help="archive(s) (.zip, .tar[.gz]) or split list file(s)",
    )
    sub.add_argument("--overwrite", action="store_true", help="replace parts that are already installed")
    sub.set_defaults(run=_prepare)

    sub = commands.add_parser("verify", aliases=["check"], help="count, find missing and unreadable images")
    _data_args(sub)
    sub.add_argument("--domains", nargs="+", default=None, help="only these domains (default: all)")
    sub.add_argument("--decode", action="store_true", help="decode every image (slower; finds damaged pixels)")
    sub.add_argument("--threads", type=int, default=None, help="reading threads (default: CPUs, at most 8)")
    sub.set_defaults(run=_verify)

    sub = commands.add_parser("cache", help="decode a data set into the image cache ahead of a sweep")
    _data_args(sub)
    sub.add_argument("--domains", nargs="+", default=None, help="only these domains (default: all)")
    sub.add_argument("--resolution", type=int, default=224, help="the model's input size (default: 224)")
    sub.add_argument(
        "--cache", default=None, help=f"cache folder (default: ${CACHE_ENV}, else <data_root>/{CACHE_FOLDER})"
    )
    sub.add_argument("--threads", type=int, default=None, help="decoding threads (default: CPUs, at most 8)")
    sub.set_defaults(run=_cache)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "domains", None):
            spec = get_spec(args.name)
            args.domains = [spec.resolve_domain(d) for d in args.domains]
        return args.run(args)
    except UnknownNameError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
