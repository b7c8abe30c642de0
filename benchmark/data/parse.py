"""Parsing and validating one ``datasets/<name>/dataset.yaml`` into a ``DatasetSpec`` (schema in
``benchmark.data.spec``): any defect raises ``DataError`` naming the file, so typos do not pass silently."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from benchmark.data.errors import DataError
from benchmark.data.spec import (
    _LAYOUT_KEYS,
    _PROTOCOL_KEYS,
    _TOP_KEYS,
    DEFAULT_EXTENSIONS,
    DEFAULT_SCORE,
    FROM_GENERATOR,
    LAYOUT_KINDS,
    DatasetSpec,
    Domain,
    Layout,
    Protocol,
    load_generator,
    normalise_name,
)


def _fail(path: Path, message: str) -> DataError:
    return DataError(f"{path}: {message}")


def _check_keys(path: Path, where: str, mapping: dict, allowed: set[str]) -> None:
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise _fail(path, f"unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}")


def _as_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    return (str(value),)


def _parse_layout(path: Path, raw: Any) -> Layout:
    if not isinstance(raw, dict) or raw.get("kind") not in LAYOUT_KINDS:
        raise _fail(path, f"layout must be a mapping with kind one of {list(LAYOUT_KINDS)}")
    kind = raw["kind"]
    _check_keys(path, "layout", raw, _LAYOUT_KEYS[kind])
    if kind == "synthetic":
        if not raw.get("generator"):
            raise _fail(path, "a synthetic layout needs 'generator' (an importable module)")
        return Layout(
            kind=kind,
            generator=str(raw["generator"]),
            n_per_class=int(raw.get("n_per_class", 30)),
            seed=int(raw.get("seed", 0)),
            size=int(raw.get("size", 64)),
            resample=bool(raw.get("resample", False)),
        )
    roots = _as_tuple(raw.get("root"))
    if not roots:
        raise _fail(path, "layout needs 'root' (the data set's folder below the data root)")
    extensions = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in _as_tuple(raw.get("extensions")))
    if kind == "lists":
        if not raw.get("adapt_list") or not raw.get("test_list"):
            raise _fail(path, "a lists layout needs 'adapt_list' and 'test_list' (file name templates)")
        return Layout(kind=kind, roots=roots, adapt_list=str(raw["adapt_list"]), test_list=str(raw["test_list"]))
    aliases = raw.get("class_folders") or {}
    if not isinstance(aliases, dict):
        raise _fail(path, "layout.class_folders must map folder names to class names")
    return Layout(
        kind=kind,
        roots=roots,
        extensions=extensions or DEFAULT_EXTENSIONS,
        class_folders={str(k): str(v) for k, v in aliases.items()},
    )


def _parse_classes(path: Path, raw: Any, generator: ModuleType | None) -> list[str]:
    if raw == FROM_GENERATOR:
        if generator is None:
            raise _fail(path, "classes: generator needs a synthetic layout")
        classes = [str(c) for c in generator.CLASSES]
    elif isinstance(raw, list):
        classes = [str(c) for c in raw]
    elif isinstance(raw, str):
        file = path.parent / raw
        if not file.is_file():
            raise _fail(path, f"class list {file} not found")
        classes = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        raise _fail(path, "classes must be a file name, a list of names, or 'generator'")
    if not classes:
        raise _fail(path, "the class list is empty")
    keys = [normalise_name(c) for c in classes]
    clashes = sorted({c for c, k in zip(classes, keys) if keys.count(k) > 1})
    if clashes:
        raise _fail(path, f"class names that only differ in case or separators: {clashes}")
    return classes


def _parse_images(path: Path, name: str, raw: Any) -> dict[str, int]:
    if raw is None:
        return {}
    if isinstance(raw, int):
        return {"all": raw}
    if isinstance(raw, dict) and set(raw) <= {"adapt", "test"}:
        return {str(k): int(v) for k, v in raw.items()}
    raise _fail(path, f"domain {name}: images must be a count or a mapping with adapt/test counts")


def _parse_domains(
    path: Path, raw: Any, layout: Layout, generator: ModuleType | None, n_classes: int
) -> dict[str, Domain]:
    if raw == FROM_GENERATOR:
        if generator is None:
            raise _fail(path, "domains: generator needs a synthetic layout")
        raw = [str(d) for d in generator.DOMAINS]
    if isinstance(raw, list):
        raw = {str(d): {} for d in raw}
    if not isinstance(raw, dict) or not raw:
        raise _fail(path, "domains must be a non-empty mapping (name -> {folder, images}) or list")
    domains: dict[str, Domain] = {}
    for name, facts in raw.items():
        facts = facts or {}
        if not isinstance(facts, dict):
            raise _fail(path, f"domain {name}: expected a mapping with 'folder' and 'images'")
        _check_keys(path, f"domain {name}", facts, {"folder", "images"})
        images = _parse_images(path, str(name), facts.get("images"))
        if layout.kind == "synthetic" and not images:
            images = {"all": layout.n_per_class * n_classes}
        domains[str(name)] = Domain(str(name), _as_tuple(facts.get("folder")) or (str(name),), images)
    return domains


def _class_index(path: Path, item: Any, classes: list[str], where: str) -> list[int]:
    """Expand one item of a class set: an index, an inclusive ``[a, b]`` range, or a class name."""
    if isinstance(item, bool):
        raise _fail(path, f"{where}: invalid class item {item!r}")
    if isinstance(item, int):
        indices = [item]
    elif isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(v, int) for v in item):
        if item[0] > item[1]:
            raise _fail(path, f"{where}: empty range {list(item)}")
        indices = list(range(item[0], item[1] + 1))
    elif isinstance(item, str):
        keys = [normalise_name(c) for c in classes]
        if normalise_name(item) not in keys:
            raise _fail(path, f"{where}: unknown class name {item!r}")
        indices = [keys.index(normalise_name(item))]
    else:
        raise _fail(
            path, f"{where}: a class item is an index, an inclusive [first, last] range or a name, got {item!r}"
        )
    bad = [i for i in indices if not 0 <= i < len(classes)]
    if bad:
        raise _fail(path, f"{where}: class index {bad[0]} out of range 0..{len(classes) - 1}")
    return indices


def _class_set(path: Path, raw: Any, classes: list[str], where: str, ordered: bool = False) -> tuple[int, ...]:
    """Resolve ``all``, a count K (first K classes), or a list of items to pinned indices."""
    if raw == "all":
        return tuple(range(len(classes)))
    if isinstance(raw, int) and not isinstance(raw, bool):
        if not 0 < raw <= len(classes):
            raise _fail(path, f"{where}: count {raw} not in 1..{len(classes)}")
        return tuple(range(raw))
    if not isinstance(raw, list) or not raw:
        raise _fail(path, f"{where}: expected 'all', a count, or a non-empty list of classes/ranges")
    indices = [i for item in raw for i in _class_index(path, item, classes, where)]
    if len(set(indices)) != len(indices):
        raise _fail(path, f"{where}: a class is listed twice")
    return tuple(indices) if ordered else tuple(sorted(indices))


def _parse_protocols(path: Path, raw: Any, classes: list[str]) -> dict[str, Protocol]:
    if not isinstance(raw, dict) or not raw:
        raise _fail(path, "protocols must be a non-empty mapping (name -> {known, settings, test})")
    protocols: dict[str, Protocol] = {}
    for name, body in raw.items():
        where = f"protocol {name}"
        if not isinstance(body, dict) or "known" not in body or "settings" not in body:
            raise _fail(path, f"{where}: needs 'known' and 'settings'")
        _check_keys(path, where, body, _PROTOCOL_KEYS)
        known = _class_set(path, body["known"], classes, f"{where}.known", ordered=True)
        if len(known) == len(classes):
            raise _fail(path, f"{where}.known: every class is known, so there is nothing to flag as unknown")
        settings_raw = body["settings"]
        if not isinstance(settings_raw, dict) or not settings_raw:
            raise _fail(path, f"{where}.settings must map setting names to class sets")
        settings = {
            str(s).lower(): _class_set(path, v, classes, f"{where}.settings.{s}") for s, v in settings_raw.items()
        }
        test = _class_set(path, body.get("test", "all"), classes, f"{where}.test")
        rest = tuple(i for i in range(len(classes)) if i not in set(known))
        protocols[str(name).lower()] = Protocol(
            name=str(name).lower(),
            known=known,
            settings=settings,
            test=test,
            order=known + rest,
            description=str(body.get("description", "")),
            score=str(body.get("score", DEFAULT_SCORE)),
        )
    return protocols


def _parse_overrides(path: Path, raw: Any, key: str = "overrides") -> dict[str, dict[str, Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise _fail(path, f"{key} must map method names to hyper-parameter mappings")
    return {str(k): dict(v) for k, v in raw.items()}


def _parse_grids(path: Path, raw: Any) -> dict[str, dict[str, list]]:
    grids = _parse_overrides(path, raw, "grids")
    for method, grid in grids.items():
        bad = [k for k, v in grid.items() if not isinstance(v, list) or not v]
        if bad:
            raise _fail(path, f"grids.{method}: {bad} must be non-empty lists of values")
    return grids


_DIGEST_LENGTHS = {"md5": 32, "sha256": 64}
_DOWNLOAD_KEYS = {"url", "domain", "size", *_DIGEST_LENGTHS}


def _parse_download(path: Path, raw: Any) -> list[dict[str, Any]]:
    """Validate the download entries: sizes are positive integers, digests lowercase hex of the right length."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(d, dict) and "url" in d for d in raw):
        raise _fail(path, "download must be a list of mappings with at least 'url'")
    for entry in raw:
        _check_keys(path, "download entry", entry, _DOWNLOAD_KEYS)
        size = entry.get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
            raise _fail(path, f"download entry {entry['url']}: size must be a positive byte count, got {size!r}")
        for algo, length in _DIGEST_LENGTHS.items():
            value = entry.get(algo)
            if value is not None and not re.fullmatch(f"[0-9a-f]{{{length}}}", str(value)):
                raise _fail(path, f"download entry {entry['url']}: {algo} must be {length} lowercase hex digits")
    return [dict(d) for d in raw]


def parse_spec(path: Path) -> DatasetSpec:
    """Parse and validate one ``dataset.yaml``; any defect raises ``DataError`` naming the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise _fail(path, f"cannot read spec: {exc}") from exc
    if not isinstance(raw, dict):
        raise _fail(path, "a spec is a YAML mapping")
    _check_keys(path, "the spec", raw, _TOP_KEYS)
    name = str(raw.get("name") or path.parent.name)
    if name != path.parent.name:
        raise _fail(path, f"name {name!r} must equal the folder name {path.parent.name!r}")
    layout = _parse_layout(path, raw.get("layout"))
    generator = load_generator(layout.generator) if layout.kind == "synthetic" else None
    classes = _parse_classes(path, raw.get("classes", "classes.txt"), generator)
    domain_facts = _parse_domains(path, raw.get("domains"), layout, generator, len(classes))
    protocols = _parse_protocols(path, raw.get("protocols"), classes)
    download = _parse_download(path, raw.get("download"))
    stray = sorted({str(d["domain"]) for d in download if d.get("domain") is not None} - set(domain_facts))
    if stray:
        raise _fail(path, f"download entries name unknown domain(s) {stray}")
    validation = _as_tuple(raw.get("validation_domains"))
    unknown = sorted(set(validation) - set(domain_facts))
    if unknown:
        raise _fail(path, f"validation_domains {unknown} are not domains of {name} ({sorted(domain_facts)})")
    if len(validation) >= len(domain_facts):
        raise _fail(path, "validation_domains leave no target domain")
    default = str(raw.get("default_protocol") or ("ueo" if "ueo" in protocols else next(iter(protocols))))
    if default not in protocols:
        raise _fail(path, f"default_protocol {default!r} is not one of {sorted(protocols)}")
    return DatasetSpec(
        name=name,
        title=str(raw.get("title") or name),
        path=path.parent,
        classes=classes,
        domains=list(domain_facts),
        domain_facts=domain_facts,
        layout=layout,
        protocols=protocols,
        default_protocol=default,
        get=str(raw.get("get") or "").strip(),
        download=download,
        overrides=_parse_overrides(path, raw.get("overrides")),
        recipes=_parse_overrides(path, raw.get("recipes"), "recipes"),
        validation_domains=validation,
        grids=_parse_grids(path, raw.get("grids")),
    )
