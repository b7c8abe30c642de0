"""``python -m benchmark.data``: list data sets, describe one, fetch it, or check a data root.

    python -m benchmark.data list
    python -m benchmark.data info office_home
    python -m benchmark.data download visda2017 --data-root DIR [--domains real]
    python -m benchmark.data check office_home --data-root DIR [--domains Art] [--decode]

Exit status: 0 when all is well, 1 when data are missing or wrong, 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import sys

from benchmark.data.catalog import dataset_names, get_spec
from benchmark.data.errors import DataError, UnknownNameError
from benchmark.data.fetch import download
from benchmark.data.images import read_images
from benchmark.data.locate import dataset_root, expected_layout, how_to_get, locate, resolve_data_root


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


def _check(args: argparse.Namespace) -> int:
    spec = get_spec(args.name)
    if spec.layout.kind == "synthetic":
        print(f"{spec.name} is generated at run time; nothing to check")
        return 0
    try:
        dataset_root(spec, resolve_data_root(spec, args.data_root))
    except DataError as exc:
        print(f"[missing] {exc}")
        return 1
    status = 0
    for domain in args.domains or spec.domains:
        try:
            files = locate(spec, domain, args.data_root)
        except DataError as exc:
            print(f"[missing] {spec.name}/{domain}: {exc}")
            status = 1
            continue
        sets = {"all": files.test} if files.transductive else {"adapt": files.adapt, "test": files.test}
        expected = spec.domain(domain).images
        for label, fileset in sets.items():
            found, wanted = len(fileset.paths), expected.get(label)
            ok = wanted is None or found == wanted
            status = status if ok else 1
            absent = sorted(set(range(len(spec.classes))) - set(fileset.labels.tolist()))
            note = f"; classes without images: {[spec.classes[i] for i in absent]}" if absent else ""
            print(f"[{'ok' if ok else 'count'}] {spec.name}/{domain} {label}: {found} images (expected {wanted}){note}")
            if args.decode:
                try:
                    read_images(fileset.paths, 32, desc=f"{spec.name}/{domain} {label}")
                except DataError as exc:
                    print(f"[corrupt] {exc}")
                    status = 1
    return status


def _download(args: argparse.Namespace) -> int:
    spec = get_spec(args.name)
    if not spec.download:
        print(f"{spec.title} cannot be downloaded automatically.\n{how_to_get(spec)}")
        return 1
    download(spec, args.data_root, args.domains, keep_archives=args.keep_archives)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m benchmark.data", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the available data sets").set_defaults(run=_list)
    info = commands.add_parser("info", help="facts, layout and protocols of one data set")
    info.add_argument("name")
    info.set_defaults(run=_info)
    for name, run, text in (("check", _check, "verify a data root"), ("download", _download, "fetch into a data root")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("name")
        sub.add_argument("--data-root", default=None, help="default: $CLIPBENCH_DATA")
        sub.add_argument("--domains", nargs="+", default=None)
        sub.set_defaults(run=run)
        if name == "check":
            sub.add_argument("--decode", action="store_true", help="also decode every image (slow)")
        else:
            sub.add_argument("--keep-archives", action="store_true", help="keep downloaded archives after extracting")
    args = parser.parse_args(argv)
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
