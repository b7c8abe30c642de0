"""The data set spec: one ``datasets/<name>/dataset.yaml`` parsed into a validated ``DatasetSpec``.

A spec holds the facts of a data set (pinned class list, domains, on-disk layout, how to get
the data) and its category-shift protocols. Protocol class sets are resolved here into pinned
class indices, so everything about *which* classes a split holds is answered without images.

Schema (unknown keys are errors, so typos do not pass silently)::

    name: office_home               # must equal the folder name
    title: Office-Home
    classes: classes.txt            # pinned order, index = line - 1; or an inline list; or
                                    # "generator" (the synthetic generator's CLASSES)
    domains:                        # CLI name -> facts; or a list of names; or "generator"
      RealWorld: {folder: [Real World, Real_World], images: 4357}
                                    # folder: one name or candidates (first present wins),
                                    # relative to the data set root; default: the CLI name.
                                    # images: full-domain count, or {adapt: n, test: m} for lists
    layout:
      kind: folders                 # <data_root>/<root>/<domain folder>/<class folder>/<image>
      root: [office_home, OfficeHomeDataset_10072016]   # candidates below the data root
      extensions: [.jpg, .jpeg, .png]
      class_folders: {}             # optional folder -> class name aliases beyond the loose match
    # kind: lists   -> root, adapt_list: "{domain}_train.txt", test_list: "{domain}_test.txt";
    #                  lines "<path> <label>", path relative to <data_root>/<root>, label = pinned
    #                  index ({domain} = domain folder, {name} = CLI name); one list for both
    #                  means transductive
    # kind: synthetic -> generator: module, n_per_class, seed, size (images rendered, no files)
    get: "how to obtain the data (shown in errors)"
    download:                       # optional direct URLs (python -m benchmark.data download): archives
      - {url: "http://.../train.tar", domain: synthetic, size: 123456, sha256: "..."}
                                    # (extracted and arranged) or list files (put into the root);
                                    # size in bytes and sha256/md5 are checked when given
    protocols:                      # default: default_protocol, else ueo, else the first
      ueo:
        description: "free text"    # optional
        known: 50                   # first K classes; or a list of names/indices (label order)
        settings:                   # adapt classes: "all" or a list of indices, inclusive
          cda: [[0, 49]]            # [first, last] ranges, or class names
          opda: [[0, 34], [50, 59]]
        test: all
    default_protocol: ueo           # optional
    recipes: {ueo: {epochs: 5}}     # optional: a paper's own recipe for this data set (not a departure)
    overrides: {ueo: {epochs: 10}}  # optional: per-method changes of the recipe (departures, shown in tables)
    validation_domains: [val]       # optional: labelled domains that are never targets (model selection)
    grids: {ueo: {lr: [1e-4, 1e-3]}}  # optional: the hyper-parameter grid the overrides were selected from
    notes: "free text"              # optional

A protocol may name its headline OOD score (``score: msp_cos``, the default); tables show it.
A synthetic layout may say ``resample: true``: each run seed then draws its own images.

Folders-layout and synthetic data sets are transductive: one image set per domain serves as
adapt set (the images of the adapt classes) and test set (the images of the test classes).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from benchmark.data.errors import DataError, UnknownNameError

SPEC_FILE = "dataset.yaml"
LAYOUT_KINDS = ("folders", "lists", "synthetic")
DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png")
FROM_GENERATOR = "generator"

_TOP_KEYS = {
    "name",
    "title",
    "classes",
    "domains",
    "layout",
    "get",
    "download",
    "protocols",
    "default_protocol",
    "recipes",
    "overrides",
    "validation_domains",
    "grids",
    "notes",
}
_LAYOUT_KEYS = {
    "folders": {"kind", "root", "extensions", "class_folders"},
    "lists": {"kind", "root", "adapt_list", "test_list"},
    "synthetic": {"kind", "generator", "n_per_class", "seed", "size", "resample"},
}
_PROTOCOL_KEYS = {"known", "settings", "test", "description", "score"}
DEFAULT_SCORE = "msp_cos"
"""The headline OOD score of a protocol that names none (UEO's official evaluation)."""


def normalise_name(name: str) -> str:
    """A matching key for names: case-insensitive, with space, underscore and hyphen alike."""
    return re.sub(r"[\s_\-]+", "_", str(name).strip()).lower()


@dataclass(frozen=True)
class Domain:
    """One domain: its CLI name, candidate folders (relative to the data set root) and image counts.

    ``images`` maps ``all`` (transductive data sets) or ``adapt``/``test`` (separate lists) to the
    expected number of images of the full domain; empty when unknown.
    """

    name: str
    folders: tuple[str, ...]
    images: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Layout:
    """Where a data set's images live below the data root, or how they are generated.

    - ``folders``: ``<data_root>/<root>/<domain folder>/<class folder>/<image>``;
    - ``lists``: ``<data_root>/<root>/<adapt_list|test_list>`` with lines ``<path> <label>``, paths
      relative to ``<data_root>/<root>`` and labels in the pinned order;
    - ``synthetic``: rendered by ``generator.render(domain, n_per_class, seed, size)``.
    """

    kind: str
    roots: tuple[str, ...] = ()
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    class_folders: dict[str, str] = field(default_factory=dict)
    adapt_list: str | None = None
    test_list: str | None = None
    generator: str | None = None
    n_per_class: int = 0
    seed: int = 0
    size: int = 0
    resample: bool = False

    @property
    def transductive(self) -> bool:
        """True when one image set per domain serves as both adapt and test set."""
        return self.kind != "lists" or self.adapt_list == self.test_list


@dataclass(frozen=True)
class Protocol:
    """A category-shift protocol resolved to pinned class indices.

    ``known`` is in protocol label order (label ``i`` is class ``known[i]``); ``order`` extends it
    with the other classes in pinned order, so ``order[label]`` is the pinned index of a label.
    ``settings`` and ``test`` are sorted pinned indices.
    """

    name: str
    known: tuple[int, ...]
    settings: dict[str, tuple[int, ...]]
    test: tuple[int, ...]
    order: tuple[int, ...]
    description: str = ""
    score: str = DEFAULT_SCORE

    @property
    def num_known(self) -> int:
        """K: the number of known classes; labels ``>= K`` are unknown."""
        return len(self.known)


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed ``dataset.yaml``: facts, layout and protocols of one data set."""

    name: str
    title: str
    path: Path
    classes: list[str]
    domains: list[str]
    domain_facts: dict[str, Domain]
    layout: Layout
    protocols: dict[str, Protocol]
    default_protocol: str
    get: str
    download: list[dict[str, Any]]
    overrides: dict[str, dict[str, Any]]
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict)
    validation_domains: tuple[str, ...] = ()
    grids: dict[str, dict[str, list]] = field(default_factory=dict)

    @property
    def target_domains(self) -> list[str]:
        """The domains a sweep runs by default: every domain except the validation domains."""
        return [d for d in self.domains if d not in self.validation_domains]

    def protocol(self, name: str | None = None) -> Protocol:
        """The protocol called ``name`` (default protocol if None); unknown names list the valid ones."""
        key = self.default_protocol if name is None else str(name).lower()
        if key not in self.protocols:
            raise UnknownNameError(f"protocol of {self.name}", name, self.protocols)
        return self.protocols[key]

    def settings(self, protocol: str | None = None) -> list[str]:
        """The setting names of a protocol, in spec order."""
        return list(self.protocol(protocol).settings)

    def resolve_setting(self, protocol: str | None, setting: str) -> str:
        """The canonical setting name; unknown names list the protocol's settings."""
        proto = self.protocol(protocol)
        key = str(setting).lower()
        if key not in proto.settings:
            raise UnknownNameError(f"setting of {self.name}/{proto.name}", setting, proto.settings)
        return key

    def resolve_domain(self, domain: str) -> str:
        """The canonical domain name, matching CLI or folder names loosely (case, separators)."""
        if domain in self.domain_facts:
            return domain
        wanted = normalise_name(domain)
        for name, facts in self.domain_facts.items():
            if wanted in {normalise_name(name), *(normalise_name(f) for f in facts.folders)}:
                return name
        raise UnknownNameError(f"domain of {self.name}", domain, self.domains)

    def domain(self, name: str) -> Domain:
        """The facts of one domain (name matched as in ``resolve_domain``)."""
        return self.domain_facts[self.resolve_domain(name)]

    def num_known(self, protocol: str | None = None) -> int:
        """K of a protocol."""
        return self.protocol(protocol).num_known

    def known_classes(self, protocol: str | None = None) -> list[int]:
        """Pinned indices of the known classes, in protocol label order."""
        return list(self.protocol(protocol).known)

    def adapt_classes(self, protocol: str | None, setting: str) -> list[int]:
        """Sorted pinned indices of the classes in the adapt set of a setting."""
        proto = self.protocol(protocol)
        return list(proto.settings[self.resolve_setting(proto.name, setting)])

    def test_classes(self, protocol: str | None = None) -> list[int]:
        """Sorted pinned indices of the classes in the test set."""
        return list(self.protocol(protocol).test)

    def class_order(self, protocol: str | None = None) -> list[int]:
        """Pinned index of each protocol label: the known classes, then the rest in pinned order."""
        return list(self.protocol(protocol).order)

    def label_map(self, protocol: str | None = None) -> np.ndarray:
        """An int64 array mapping a pinned class index to its protocol label."""
        order = self.protocol(protocol).order
        mapping = np.empty(len(order), dtype=np.int64)
        mapping[list(order)] = np.arange(len(order), dtype=np.int64)
        return mapping


def load_generator(module: str) -> ModuleType:
    """Import the module that renders a synthetic data set (lazily: only when that data set is used)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DataError(f"cannot import the image generator {module!r}: {exc}") from exc
