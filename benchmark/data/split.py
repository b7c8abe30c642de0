"""``load_split``: one (data set, domain, protocol, setting) turned into adapt and test tensors.

Labels are in the protocol's label space: the known classes get ``0..K-1`` in the protocol's
order and every other class ``K..`` in pinned order, so ``label >= K`` means unknown. The
pinned index of every sample is kept too (``SplitPart.classes``) for the run record.
Transductive data sets decode each image once; adapt and test are row selections of it.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.data.catalog import get_spec
from benchmark.data.errors import DataError
from benchmark.data.generated import render_domain
from benchmark.data.cache import cache_dir, read_images_cached, select_rows
from benchmark.data.images import as_paths
from benchmark.data.locate import FileSet, locate
from benchmark.data.spec import DatasetSpec


@dataclass
class SplitPart:
    """Images (N, 3, R, R) uint8, protocol labels (N,) int64, paths or ids, and pinned class indices."""

    images: torch.Tensor
    labels: np.ndarray
    paths: list[str]
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Split:
    """The adapt set a method sees (unlabeled) and the test set it is evaluated on."""

    adapt: SplitPart
    test: SplitPart
    classnames: list[str]
    num_known: int
    all_classnames: list[str]
    info: dict[str, Any] = field(default_factory=dict)


def _part(images: torch.Tensor, pinned: np.ndarray, paths: list[str], label_map: np.ndarray) -> SplitPart:
    return SplitPart(images=images, labels=label_map[pinned], paths=paths, classes=pinned)


def _check_count(spec: DatasetSpec, domain: str, found: dict[str, int]) -> dict[str, int]:
    """Compare image counts with the spec's; a partial download is worth a warning, not a failure."""
    expected = spec.domain(domain).images
    differ = {k: v for k, v in expected.items() if k in found and found[k] != v}
    if differ:
        warnings.warn(
            f"{spec.name}/{domain}: found {found} images, the full domain has {expected}; "
            f"incomplete data? (`python -m benchmark.data check {spec.name}` lists what is missing)",
            stacklevel=3,
        )
    return expected


def _decode(files: FileSet, mask: np.ndarray, root: Path, resolution: int, desc: str, threads: int | None,
            cache: Path | None) -> tuple[torch.Tensor, np.ndarray, list[str], str]:
    """Decode the files selected by ``mask``: images, pinned labels, paths relative to the data root, cache key."""
    paths = [p for p, keep in zip(files.paths, mask) if keep]
    images, key = read_images_cached(paths, resolution, _label(desc), cache, desc=desc, threads=threads)
    return images, files.labels[mask], as_paths(paths, root), key


def _label(desc: str) -> str:
    return desc.replace("/", "-").replace(" ", "-")


def _transductive(images: torch.Tensor, pinned: np.ndarray, ids: list[str], wanted: dict[str, np.ndarray],
                  label_map: np.ndarray, desc: str, cache: Path | None = None, key: str = "") -> list[SplitPart]:
    """Adapt and test sets as row selections of one decoded image set."""
    parts = []
    for part, classes in wanted.items():
        rows = np.isin(pinned, classes)
        selected = select_rows(images, rows, _label(f"{desc} {part}"), cache, key)
        parts.append(_part(selected, pinned[rows], [i for i, k in zip(ids, rows) if k], label_map))
    return parts


def load_split(
    name: str,
    domain: str,
    setting: str,
    protocol: str | None = None,
    data_root: str | os.PathLike | None = None,
    resolution: int = 224,
    threads: int | None = None,
    cache: str | os.PathLike | None = None,
) -> Split:
    """Load the adapt and test sets of one domain under a protocol's setting.

    ``protocol`` None means the data set's default (``ueo``); ``data_root`` None means
    ``$CLIPBENCH_DATA``; ``cache`` None means ``$CLIPBENCH_CACHE`` (unset: no cache), a folder
    where decoded images are kept as memory-mapped files for later runs. Unknown names raise
    ``UnknownNameError`` listing the valid ones; missing or unreadable data raises ``DataError``
    saying what was looked for and how to get it.
    """
    spec = get_spec(name)
    proto = spec.protocol(protocol)
    setting = spec.resolve_setting(proto.name, setting)
    domain = spec.resolve_domain(domain)
    wanted = {"adapt": np.array(proto.settings[setting], dtype=np.int64), "test": np.array(proto.test, dtype=np.int64)}
    label_map = spec.label_map(proto.name)
    desc = f"{spec.name}/{domain}"
    extra: dict[str, Any] = {}

    if spec.layout.kind == "synthetic":
        images, present, ids = render_domain(spec, domain, resolution)
        found = {"all": len(present)}
        adapt, test = _transductive(images, present, ids, wanted, label_map, desc)
        layout = spec.layout
        extra.update(generator=layout.generator, n_per_class=layout.n_per_class,
                     generator_seed=layout.seed, generator_size=layout.size)
    else:
        files = locate(spec, domain, data_root)
        folder = cache_dir(cache)
        root = files.data_root
        present = files.test.labels
        extra.update(data_root=str(root), sources=[str(s) for s in files.sources], cache=folder and str(folder))
        if files.transductive:
            found = {"all": len(files.test.paths)}
            needed = np.isin(present, wanted["adapt"]) | np.isin(present, wanted["test"])
            images, pinned, paths, key = _decode(files.test, needed, root, resolution, desc, threads, folder)
            adapt, test = _transductive(images, pinned, paths, wanted, label_map, desc, folder, key)
        else:
            found = {"adapt": len(files.adapt.paths), "test": len(files.test.paths)}
            parts = []
            for part, fileset in (("adapt", files.adapt), ("test", files.test)):
                mask = np.isin(fileset.labels, wanted[part])
                images, pinned, paths, _ = _decode(fileset, mask, root, resolution, f"{desc} {part}", threads, folder)
                parts.append(_part(images, pinned, paths, label_map))
            adapt, test = parts

    for label, part in (("adapt", adapt), ("test", test)):
        if len(part) == 0:
            raise DataError(
                f"{spec.name}/{domain}: the {label} set of {proto.name}/{setting} is empty: no images of "
                f"classes {wanted[label].tolist()} were found ({extra.get('sources', spec.layout.generator)})"
            )
    missing = sorted(set(range(len(spec.classes))) - set(np.unique(present).tolist()))
    info = {
        "dataset": spec.name,
        "domain": domain,
        "setting": setting,
        "protocol": proto.name,
        "num_known": proto.num_known,
        "known_classes": list(proto.known),
        "class_order": list(proto.order),
        "adapt_classes": sorted(np.unique(adapt.classes).tolist()),
        "test_classes": sorted(np.unique(test.classes).tolist()),
        "n_adapt": len(adapt),
        "n_test": len(test),
        "n_adapt_unknown": int((adapt.labels >= proto.num_known).sum()),
        "n_test_unknown": int((test.labels >= proto.num_known).sum()),
        "transductive": spec.layout.transductive,
        "resolution": resolution,
        "missing_classes": [spec.classes[i] for i in missing],
        "found_images": found,
        "expected_images": _check_count(spec, domain, found),
        **extra,
    }
    order = proto.order
    return Split(
        adapt=adapt,
        test=test,
        classnames=[spec.classes[i] for i in proto.known],
        num_known=proto.num_known,
        all_classnames=[spec.classes[i] for i in order],
        info=info,
    )
