"""The run spec: everything that determines a run's result. Its hash names the run's folder.

A spec is built once, by the sweep, with every hyper-parameter resolved (defaults, the data
set's recipe and overrides, the user's options, the method's derived values, and the precision
made concrete for the device kind), so every later step reads it and none resolves again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

PROTOCOL_VERSION = 3
"""Bumped whenever a change alters what a run computes or what its record holds; part of every
spec hash, and a record of another version is excluded from tables (and named)."""


def spec_hash(spec: dict[str, Any]) -> str:
    """A short, stable hash of a resolved run spec (sorted-key JSON, SHA-1, 16 hex digits)."""
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def seed_hash(*parts: Any) -> int:
    """A 31-bit seed from JSON-able parts (md5 of their JSON list), as DomainBed's ``seed_hash``."""
    key = json.dumps(list(parts))
    return int(hashlib.md5(key.encode()).hexdigest(), 16) % (2**31)


def device_kind(device: str) -> str:
    """``cpu`` or ``cuda`` (``cuda:1`` -> ``cuda``): what a run's numbers depend on, not which card."""
    return device.split(":", 1)[0]


@dataclass
class RunSpec:
    """The identity of one run (``as_dict``, hashed) plus what the sweep derived for its record.

    ``departures`` (the resolved values that differ from the method's recipe on the data set) and
    ``validation_domains`` (of the data set) are not identity: they follow from it, and are kept
    here so that the record states them without any reader recomputing them.
    """

    method: str
    dataset: str
    domain: str
    setting: str
    protocol: str
    seed: int
    model: str
    pretrained: str
    hparams: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    protocol_version: int = PROTOCOL_VERSION
    departures: dict[str, Any] = field(default_factory=dict, compare=False)
    validation_domains: tuple[str, ...] = field(default=(), compare=False)

    _DERIVED = ("departures", "validation_domains")

    def as_dict(self) -> dict[str, Any]:
        """The identity: what the hash covers and ``result.json`` stores under ``spec``."""
        d = asdict(self)
        for name in self._DERIVED:
            d.pop(name)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        """The spec of a record's ``spec`` block (unknown keys rejected by the constructor)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def hash(self) -> str:
        return spec_hash(self.as_dict())

    @property
    def derived_seed(self) -> int:
        """Seed of all randomness in the run: the user seed and what is being run.

        Different (method, data set, domain, setting) cells get independent streams from the same
        user seed, as in DomainBed's ``seed_hash``.
        """
        return seed_hash(self.seed, self.method, self.dataset, self.domain, self.setting, self.protocol)

    @property
    def data_seed(self) -> int:
        """Seed of what every method of a cell shares: generated images, stream and evaluation order.

        The user seed and the cell without the method, so that paired comparisons between methods
        see the same images in the same order.
        """
        return seed_hash(self.seed, "data", self.dataset, self.domain, self.setting, self.protocol)

    @property
    def view_seed(self) -> int:
        """Seed of the test images' augmented views (``benchmark.adapt.views.view_features``): every
        method of a (user seed, data set, domain) draws the same views of an image, whatever the
        setting, so methods are compared on the same views and share their features."""
        return seed_hash(self.seed, "views", self.dataset, self.domain)

    @property
    def render_seed(self) -> int:
        """Seed of a generated data set's images when its spec resamples them per run seed.

        The user seed and the domain only, so every setting and protocol of a seed draws from the
        same images, as they do for a data set on disk.
        """
        return seed_hash(self.seed, "render", self.dataset, self.domain)

    def label(self) -> str:
        return f"{self.method} {self.dataset}/{self.domain}/{self.setting} seed={self.seed}"
