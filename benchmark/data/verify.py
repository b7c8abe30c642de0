"""``verify``: is a data root complete and readable?

Per domain (and per list for ``lists`` layouts): the number of images against the spec's known
count; the files that are missing (named in a split list, or recorded in the install manifest
that ``prepare``/``download`` wrote, but absent), changed (size differs from install time) or
unreadable (empty, not an image, or, with ``decode``, damaged pixel data). Nothing is modified.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from benchmark.data.errors import DataError, ListError
from benchmark.data.images import PROGRESS_MIN, default_threads, probe_image
from benchmark.data.locate import dataset_root, domain_dir, locate, resolve_data_root
from benchmark.data.manifest import recorded_files
from benchmark.data.spec import DatasetSpec

SHOWN = 20
"""At most this many paths are printed per kind of problem (the count is always given)."""


@dataclass
class PartReport:
    """The findings for one image set: a whole domain (``all``) or one of its lists (``adapt``/``test``)."""

    domain: str
    part: str
    found: int
    expected: int | None
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)

    @property
    def count_ok(self) -> bool:
        """True when the spec knows no count or the count matches."""
        return self.expected is None or self.found == self.expected

    @property
    def ok(self) -> bool:
        """True when nothing is off."""
        return self.count_ok and not (self.missing or self.changed or self.unreadable)


@dataclass
class VerifyReport:
    """Everything ``verify`` found for one data set; ``ok`` decides the exit status."""

    dataset: str
    decode: bool
    parts: list[PartReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every domain was found, every image list is valid and every part is ok."""
        return not self.errors and not self.invalid and all(p.ok for p in self.parts)

    def lines(self) -> list[str]:
        """A human-readable report, one finding per line, paths indented below their finding."""
        out = [f"[missing] {e}" for e in self.errors] + [f"[invalid list] {e}" for e in self.invalid]
        for p in self.parts:
            where = f"{self.dataset}/{p.domain} {p.part}"
            status = "ok" if p.ok else ("count" if not p.count_ok else "problems")
            out.append(
                f"[{status}] {where}: {p.found} images (expected {p.expected if p.expected is not None else '?'})"
            )
            for kind, paths in (("missing", p.missing), ("changed since install", p.changed)):
                if paths:
                    out.append(f"  {len(paths)} file(s) {kind}:")
                    out += [f"    {x}" for x in paths[:SHOWN]] + (
                        [f"    ... and {len(paths) - SHOWN} more"] if len(paths) > SHOWN else []
                    )
            if p.unreadable:
                out.append(f"  {len(p.unreadable)} unreadable file(s):")
                out += [f"    {x}: {why}" for x, why in p.unreadable[:SHOWN]]
                out += [f"    ... and {len(p.unreadable) - SHOWN} more"] if len(p.unreadable) > SHOWN else []
            if p.empty_classes:
                shown = ", ".join(p.empty_classes[:SHOWN]) + (", ..." if len(p.empty_classes) > SHOWN else "")
                out.append(f"  note: {len(p.empty_classes)} class(es) without images: {shown}")
        checked = "decoded every image" if self.decode else "checked headers (--decode also decodes every image)"
        verdict = "all good" if self.ok else "problems found"
        out.append(f"{self.dataset}: {verdict}; {checked}")
        return out


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def _probe_all(paths: list[Path], decode: bool, threads: int | None, desc: str) -> list[str | None]:
    """``probe_image`` of every path, in threads, with a progress bar."""
    workers = threads or default_threads()
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(paths), desc=desc, unit="img", disable=len(paths) < PROGRESS_MIN, leave=False) as bar,
    ):
        results = []
        for result in pool.map(lambda p: probe_image(p, decode), paths, chunksize=64):
            results.append(result)
            bar.update()
    return results


def verify(
    spec: DatasetSpec,
    data_root: str | os.PathLike | None,
    domains: list[str] | None = None,
    decode: bool = False,
    threads: int | None = None,
) -> VerifyReport:
    """Check the given domains (all if None) of an on-disk data set; see the module docstring."""
    report = VerifyReport(spec.name, decode)
    try:
        base = resolve_data_root(spec, data_root)
        root = dataset_root(spec, base)
    except DataError as exc:
        report.errors.append(str(exc))
        return report
    recorded = recorded_files(root)
    for domain in domains or spec.domains:
        domain = spec.resolve_domain(domain)
        try:
            files = locate(spec, domain, base)
        except ListError as exc:  # e.g. a path outside the data set's root: nothing of the domain is checked
            report.invalid.append(f"{spec.name}/{domain}: {exc}")
            continue
        except DataError as exc:
            report.errors.append(f"{spec.name}/{domain}: {exc}")
            continue
        sets = {"all": files.test} if files.transductive else {"adapt": files.adapt, "test": files.test}
        expected = spec.domain(domain).images
        for part, fileset in sets.items():
            present = [p for p in fileset.paths if p.exists()]
            result = PartReport(domain, part, len(fileset.paths), expected.get(part))
            result.missing = [_relative(p, base) for p in fileset.paths if not p.exists()]
            probes = _probe_all(present, decode, threads, f"verify {spec.name}/{domain} {part}")
            result.unreadable = [(_relative(p, base), why) for p, why in zip(present, probes) if why]
            labels = set(fileset.labels.tolist())
            result.empty_classes = [c for i, c in enumerate(spec.classes) if i not in labels]
            report.parts.append(result)
        if spec.layout.kind == "folders":
            _compare_manifest(report.parts[-1], recorded, domain_dir(spec, root, domain), root, base, spec)
    return report


def _compare_manifest(
    result: PartReport, recorded: dict[str, int], folder: Path, root: Path, base: Path, spec: DatasetSpec
) -> None:
    """Add the image files the install manifest records below ``folder`` that are absent or resized."""
    prefix = _relative(folder, root) + "/"
    extensions = tuple(spec.layout.extensions)
    for name, size in recorded.items():
        if not (name.startswith(prefix) and name.lower().endswith(extensions)):
            continue
        path = root / name
        if not path.exists():
            result.missing.append(_relative(path, base))
        elif path.stat().st_size != size:
            result.changed.append(_relative(path, base))
