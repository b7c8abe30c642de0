"""``load_split``: one (data set, domain, protocol, setting) turned into adapt and test tensors.

Labels are in the protocol's label space: the known classes get ``0..K-1`` in the protocol's
order and every other class ``K..`` in pinned order, so ``label >= K`` means unknown. The
pinned index of every sample is kept too (``SplitPart.classes``) for the run record.
Each image set (a domain, or one of its split lists) is decoded once, through the decode cache;
adapt and test sets are row selections of it, so every setting and protocol reuses one decode.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.data.cache import cache_dir, digest, read_images_cached, select_rows
from benchmark.data.catalog import get_spec
from benchmark.data.errors import DataError
from benchmark.data.generated import render_domain
from benchmark.data.images import as_paths
from benchmark.data.locate import DomainFiles, locate
from benchmark.data.spec import DatasetSpec


@dataclass
class SplitPart:
    """Images (N, 3, R, R) uint8, protocol labels (N,) int64, paths or ids, and pinned class indices.

    ``full`` (when loaded) holds the ``full`` view of the same images (the whole image, long side
    R, see ``benchmark.data.images``) and ``sizes`` its valid (h, w) per image: what train
    augmentations crop from.
    """

    images: torch.Tensor
    labels: np.ndarray
    paths: list[str]
    classes: np.ndarray
    full: torch.Tensor | None = None
    sizes: np.ndarray | None = None

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


@dataclass
class ImageSet:
    """One decoded image set: its views (``center``, optionally ``full`` with ``sizes``), labels, ids."""

    images: torch.Tensor
    pinned: np.ndarray
    ids: list[str]
    stem: str = ""
    full: torch.Tensor | None = None
    sizes: np.ndarray | None = None
    full_stem: str = ""


def _check_count(spec: DatasetSpec, domain: str, found: dict[str, int]) -> dict[str, int]:
    """Compare image counts with the spec's; a partial download is worth a warning, not a failure."""
    expected = spec.domain(domain).images
    differ = {k: v for k, v in expected.items() if k in found and found[k] != v}
    if differ:
        warnings.warn(
            f"{spec.name}/{domain}: found {found} images, the full domain has {expected}; "
            f"incomplete data? (`python -m benchmark.data verify {spec.name}` lists what is missing)",
            stacklevel=3,
        )
    return expected


def _select(source: ImageSet, classes: np.ndarray, label_map: np.ndarray, folder: Path | None = None) -> SplitPart:
    """The rows of a decoded image set whose class is in ``classes`` (cached beside it when it has a stem)."""
    rows = np.isin(source.pinned, classes)
    part = SplitPart(
        images=select_rows(source.images, rows, folder, source.stem),
        labels=label_map[source.pinned[rows]],
        paths=[i for i, keep in zip(source.ids, rows) if keep],
        classes=source.pinned[rows],
    )
    if source.full is not None:
        part.full = select_rows(source.full, rows, folder, source.full_stem)
        part.sizes = source.sizes[rows]
    return part


def decode_domain(
    spec: DatasetSpec,
    domain: str,
    data_root: str | os.PathLike | None,
    resolution: int,
    threads: int | None = None,
    cache: str | os.PathLike | bool | None = None,
    full: bool = False,
) -> tuple[DomainFiles, Path | None, dict[str, ImageSet]]:
    """Decode every image set of an on-disk domain (through the cache).

    Returns the located files, the cache folder (None: off) and per image set (``all``, or
    ``adapt`` and ``test`` for split lists) an :class:`ImageSet` (with the ``full`` view too
    when ``full``) whose ids are paths relative to the data root.
    """
    files = locate(spec, domain, data_root)
    folder = cache_dir(cache, files.data_root)
    sets = {"all": files.test} if files.transductive else {"adapt": files.adapt, "test": files.test}
    label = f"{spec.name}-{spec.resolve_domain(domain)}-{digest(str(files.dataset_root))}"
    decoded = {}
    for set_name, fileset in sets.items():
        images, stem, _ = read_images_cached(
            fileset.paths,
            resolution,
            f"{label}-{set_name}",
            folder,
            desc=f"{spec.name}/{domain} {set_name}",
            threads=threads,
        )
        entry = ImageSet(images, fileset.labels, as_paths(fileset.paths, files.data_root), stem)
        if full:
            entry.full, entry.full_stem, entry.sizes = read_images_cached(
                fileset.paths,
                resolution,
                f"{label}-{set_name}",
                folder,
                desc=f"{spec.name}/{domain} {set_name} (full)",
                threads=threads,
                view="full",
            )
        decoded[set_name] = entry
    return files, folder, decoded


def load_split(
    name: str,
    domain: str,
    setting: str,
    protocol: str | None = None,
    data_root: str | os.PathLike | None = None,
    resolution: int = 224,
    threads: int | None = None,
    cache: str | os.PathLike | bool | None = None,
    full: bool = False,
    render_seed: int | None = None,
) -> Split:
    """Load the adapt and test sets of one domain under a protocol's setting.

    ``protocol`` None means the data set's default (``ueo``); ``data_root`` None means
    ``$CLIPBENCH_DATA``; ``cache`` is the folder where decoded images are kept as memory-mapped
    files for later runs: None means ``$CLIPBENCH_CACHE``, else ``<data_root>/.clipbench_cache``
    (see ``benchmark.data.cache``), False or ``"off"`` decodes without caching. Each domain's full
    image set is decoded once; adapt and test sets are row selections of it. Unknown names raise
    ``UnknownNameError`` listing the valid ones; missing or unreadable data raises ``DataError``
    saying what was looked for and how to get it. ``full`` also loads the ``full`` view (what
    train augmentations crop from). ``render_seed`` draws a generated data set's
    images (default: its spec's seed; see ``benchmark.data.generated``).
    """
    spec = get_spec(name)
    proto = spec.protocol(protocol)
    setting = spec.resolve_setting(proto.name, setting)
    domain = spec.resolve_domain(domain)
    wanted = {"adapt": np.array(proto.settings[setting], dtype=np.int64), "test": np.array(proto.test, dtype=np.int64)}
    label_map = spec.label_map(proto.name)
    extra: dict[str, Any] = {}

    if spec.layout.kind == "synthetic":
        images, present, ids, seed = render_domain(spec, domain, resolution, render_seed)
        source = ImageSet(images, present, ids)
        if full:  # generated images are square: the whole image is the centre crop
            source.full, source.sizes = images, np.full((len(present), 2), resolution, dtype=np.int32)
        found = {"all": len(present)}
        adapt, test = (_select(source, wanted[p], label_map) for p in ("adapt", "test"))
        layout = spec.layout
        extra.update(
            generator=layout.generator, n_per_class=layout.n_per_class, generator_seed=seed, generator_size=layout.size
        )
    else:
        files, folder, decoded = decode_domain(spec, domain, data_root, resolution, threads, cache, full)
        present = files.test.labels
        extra.update(
            data_root=str(files.data_root), sources=[str(s) for s in files.sources], cache=folder and str(folder)
        )
        found = {set_name: len(entry.images) for set_name, entry in decoded.items()}
        adapt, test = (
            _select(decoded["all" if files.transductive else part], wanted[part], label_map, folder)
            for part in ("adapt", "test")
        )

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
