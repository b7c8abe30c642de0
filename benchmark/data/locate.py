"""Finding a domain's image files on disk and their pinned class labels, without decoding them.

Two layouts are read: ``folders`` (class folders matched to the pinned class list by name,
loosely: case-insensitive, space/underscore/hyphen alike, plus explicit aliases) and ``lists``
(``<path> <label>`` files whose labels are in the pinned order and are trusted). Every failure
is a ``DataError`` that names the path looked for, the expected layout and how to get the data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark.data.errors import DataError, ListError
from benchmark.data.spec import DatasetSpec, normalise_name

DATA_ROOT_ENV = "CLIPBENCH_DATA"


@dataclass
class FileSet:
    """Image files and the pinned class index of each, sorted by class, then path.

    Class order makes the adapt set of a setting whose classes are the first ones (cda, pda, oda
    of the UEO protocol) a contiguous block of rows: a view of the decoded domain, not a copy.
    """

    paths: list[Path]
    labels: np.ndarray


@dataclass
class DomainFiles:
    """The files of one domain: the adapt and test sets (the same object when transductive)."""

    data_root: Path
    dataset_root: Path
    adapt: FileSet
    test: FileSet
    sources: list[Path]

    @property
    def transductive(self) -> bool:
        """True when adapt and test come from the same image set."""
        return self.adapt is self.test


def expected_layout(spec: DatasetSpec) -> str:
    """A one-paragraph description of where the data set's files must be, for error messages."""
    layout = spec.layout
    root = f"<data_root>/{layout.roots[0]}"
    folders = ", ".join(repr(d.folders[0]) for d in spec.domain_facts.values())
    if layout.kind == "folders":
        exts = "|".join(layout.extensions)
        text = f"{root}/<domain folder>/<class folder>/<image>({exts}) with domain folders {folders}"
    elif layout.kind == "lists":
        text = (
            f"{root}/{layout.adapt_list} and {root}/{layout.test_list} (placeholders {{domain}} = domain folder, "
            f"one of {folders}), lines '<path> <label>' with paths relative to {root} and labels in the "
            f"pinned class order; images under {root}/<domain folder>/<class>/"
        )
    else:
        return "generated at run time; no files needed"
    if len(layout.roots) > 1:
        text += f" (<data_root>/{layout.roots[0]} may also be named {', '.join(layout.roots[1:])})"
    return text


def how_to_get(spec: DatasetSpec) -> str:
    """The spec's instructions for obtaining the data plus the helper commands."""
    commands = [f"`python -m benchmark.data info {spec.name}` shows the layout"]
    if spec.download:
        commands.append(f"`python -m benchmark.data download {spec.name} --data-root DIR` fetches it")
    commands.append(
        f"`python -m benchmark.data prepare {spec.name} --archive FILE --data-root DIR` installs an "
        f"archive downloaded by hand"
    )
    commands.append(f"`python -m benchmark.data verify {spec.name} --data-root DIR` checks a data root")
    return f"{spec.get}\n" + "; ".join(commands) + "."


def _error(spec: DatasetSpec, problem: str) -> DataError:
    return DataError(
        f"{problem}\nExpected layout: {expected_layout(spec)}\nHow to get {spec.title}: {how_to_get(spec)}"
    )


def resolve_data_root(spec: DatasetSpec, data_root: str | os.PathLike | None) -> Path:
    """The data root: the argument, else ``$CLIPBENCH_DATA``; it must exist."""
    if data_root is None or str(data_root) == "":
        env = os.environ.get(DATA_ROOT_ENV, "")
        if not env:
            raise _error(
                spec,
                f"no data root given for {spec.name}: pass --data-root DIR (data_root=...) "
                f"or set the environment variable {DATA_ROOT_ENV}",
            )
        data_root = env
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise _error(spec, f"data root {root} does not exist or is not a directory")
    return root.resolve()


def dataset_root(spec: DatasetSpec, data_root: Path) -> Path:
    """The data set's folder below the data root (the first of the spec's candidate names present)."""
    candidates = [data_root / r for r in spec.layout.roots]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    looked = " or ".join(str(c) for c in candidates)
    raise _error(spec, f"{spec.title} not found: looked for {looked}")


def _listing(folder: Path, limit: int = 12) -> str:
    names = sorted(e.name for e in os.scandir(folder) if not e.name.startswith("."))
    shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
    return f"{folder} holds: {shown or '(nothing)'}"


def domain_dir(spec: DatasetSpec, root: Path, domain: str) -> Path:
    """The folder of one domain (the first of its candidate folder names present)."""
    facts = spec.domain(domain)
    candidates = [root / f for f in facts.folders]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    looked = " or ".join(str(c) for c in candidates)
    raise _error(spec, f"domain {facts.name} of {spec.name} not found: looked for {looked}; {_listing(root)}")


def match_class_folders(spec: DatasetSpec, names: list[str], where: Path) -> dict[str, int]:
    """Map class folder names to pinned class indices; a folder matching no class is an error."""
    keys = {normalise_name(c): i for i, c in enumerate(spec.classes)}
    aliases = {normalise_name(f): keys[normalise_name(c)] for f, c in spec.layout.class_folders.items()}
    mapping: dict[str, int] = {}
    unmatched: list[str] = []
    for name in names:
        key = normalise_name(name)
        index = aliases.get(key, keys.get(key))
        if index is None:
            unmatched.append(name)
        else:
            mapping[name] = index
    if unmatched:
        raise DataError(
            f"folder(s) {unmatched} in {where} match no class of {spec.name} (names are compared "
            f"case-insensitively with space/underscore/hyphen alike; classes are listed in "
            f"{spec.path / 'classes.txt'}); rename them or add 'class_folders' aliases to {spec.path / 'dataset.yaml'}"
        )
    seen: dict[int, str] = {}
    for name, index in mapping.items():
        if index in seen:
            raise DataError(f"folders {seen[index]!r} and {name!r} in {where} both match class {spec.classes[index]!r}")
        seen[index] = name
    return mapping


def _by_class(item: tuple[str, int]) -> tuple[int, str]:
    return item[1], item[0]


def _scan_folders(spec: DatasetSpec, folder: Path) -> FileSet:
    subdirs = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    mapping = match_class_folders(spec, subdirs, folder)
    extensions = set(spec.layout.extensions)
    items: list[tuple[str, int]] = []
    for name, index in mapping.items():
        for entry in os.scandir(folder / name):
            if entry.is_file() and os.path.splitext(entry.name)[1].lower() in extensions:
                items.append((entry.path, index))
    items.sort(key=_by_class)
    return FileSet([Path(p) for p, _ in items], np.array([i for _, i in items], dtype=np.int64))


def _outside(root: Path, entry: str) -> bool:
    """True when list entry ``entry`` names a file outside ``root``: absolute, or climbing out with ``..``.

    Lexical, on purpose: a symbolic link inside the root (a domain folder kept on another disk)
    is the user's own choice and stays allowed.
    """
    if os.path.isabs(entry):
        return True
    joined = os.path.normpath(os.path.join(root, entry))
    return os.path.commonpath([joined, os.path.normpath(root)]) != os.path.normpath(root)


def read_list(spec: DatasetSpec, file: Path, root: Path) -> FileSet:
    """Read a ``<path> <label>`` list; paths are relative to ``root``, labels pinned class indices.

    Every path must stay inside ``root``: an absolute path or one that climbs out (``../x.jpg``)
    is a ``DataError`` naming the list, the line and the path (a list must not make a run read,
    or ``verify`` vouch for, files of another data set or anywhere else on the machine).
    """
    if not file.is_file():
        raise _error(spec, f"image list not found: {file}")
    items: list[tuple[str, int]] = []
    outside: list[tuple[int, str]] = []
    n_classes = len(spec.classes)
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ListError(f"{file}:{number}: expected '<path> <label>', got {line.strip()!r}")
        label = int(parts[1])
        if not 0 <= label < n_classes:
            raise ListError(f"{file}:{number}: label {label} out of range 0..{n_classes - 1}")
        entry = parts[0].strip()
        if _outside(root, entry):
            outside.append((number, entry))
        items.append((str(root / entry), label))
    if outside:
        number, entry = outside[0]
        more = (
            f" (and {len(outside) - 1} more such line(s): {', '.join(str(n) for n, _ in outside[1:6])}"
            f"{', ...' if len(outside) > 6 else ''})"
            if len(outside) > 1
            else ""
        )
        raise ListError(
            f"{file}:{number}: path {entry!r} lies outside the data set's root {root}; list paths "
            f"must be relative to it and stay inside it{more}"
        )
    items.sort(key=_by_class)
    return FileSet([Path(p) for p, _ in items], np.array([i for _, i in items], dtype=np.int64))


def list_file(spec: DatasetSpec, root: Path, domain: str, template: str) -> Path:
    """The list file of a domain from a template with ``{domain}`` (folder name) / ``{name}`` placeholders."""
    facts = spec.domain(domain)
    return root / template.format(domain=facts.folders[0], name=facts.name)


def locate(spec: DatasetSpec, domain: str, data_root: str | os.PathLike | None) -> DomainFiles:
    """Find the files of one domain of an on-disk data set."""
    layout = spec.layout
    if layout.kind == "synthetic":
        raise DataError(f"{spec.name} is generated, it has no files to locate")
    base = resolve_data_root(spec, data_root)
    root = dataset_root(spec, base)
    folder = domain_dir(spec, root, domain)
    if layout.kind == "folders":
        files = _scan_folders(spec, folder)
        return DomainFiles(base, root, files, files, [folder])
    adapt_file = list_file(spec, root, domain, layout.adapt_list)
    test_file = list_file(spec, root, domain, layout.test_list)
    test = read_list(spec, test_file, root)
    adapt = test if adapt_file == test_file else read_list(spec, adapt_file, root)
    return DomainFiles(base, root, adapt, test, sorted({adapt_file, test_file}))
