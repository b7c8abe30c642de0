"""The decode cache: exactly the pixels of plain decoding, reused across loads, rebuilt when files change."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.data import images as images_module
from benchmark.data import load_split
from benchmark.data.__main__ import main
from benchmark.data.cache import CACHE_ENV, CACHE_FOLDER, cache_dir, read_images_cached

pytestmark = pytest.mark.filterwarnings("ignore:.*incomplete data")

R = 24
CLASSES = {"Alarm_Clock": 0, "Backpack": 1, "Mug": 37, "Shelf": 52, "TV": 63}
"""Known (0, 1; 37 outside the opda adapt set), unknown inside the oda/opda adapt sets (52), outside (63)."""


def write_image(path: Path, seed: int) -> Path:
    """A random-sized random JPEG (sizes differ so that resizing and cropping are exercised)."""
    rng = np.random.default_rng(seed)
    size = (int(rng.integers(20, 60)), int(rng.integers(20, 60)))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    root = tmp_path / "data"
    for d, domain in enumerate(("Art", "Clipart")):
        for c, cls in enumerate(CLASSES):
            for i in range(3):
                write_image(root / "office_home" / domain / cls / f"{i:05d}.jpg", d * 100 + c * 10 + i)
    return root


def entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.glob("*.u8"))


class DecodeCounter:
    """Counts ``read_image`` calls (the decoding of one file) while delegating to the real one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.lock = threading.Lock()
        real = images_module.read_image

        def counted(path: object, resolution: int, view: str = "center") -> tuple[torch.Tensor, int, int]:
            with self.lock:
                self.calls += 1
            return real(path, resolution, view)

        monkeypatch.setattr(images_module, "read_image", counted)


def test_cached_pixels_equal_uncached(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    plain = load_split("office_home", "Art", "oda", data_root=data_root, resolution=R, cache=False)
    counter = DecodeCounter(monkeypatch)
    first = load_split("office_home", "Art", "oda", data_root=data_root, resolution=R, cache=cache)
    assert counter.calls == 15
    again = load_split("office_home", "Art", "pda", data_root=data_root, resolution=R, cache=cache)
    third = load_split("office_home", "Art", "oda", data_root=data_root, resolution=R, cache=cache)
    assert counter.calls == 15, "later loads (any setting) decode nothing"
    for split in (first, third):
        for part in ("adapt", "test"):
            assert torch.equal(getattr(split, part).images, getattr(plain, part).images)
            assert np.array_equal(getattr(split, part).labels, getattr(plain, part).labels)
            assert getattr(split, part).paths == getattr(plain, part).paths
    assert set(again.adapt.classes.tolist()) == {0, 1}
    storage = third.test.images.untyped_storage().data_ptr()
    assert third.adapt.images.untyped_storage().data_ptr() == storage, "oda adapt rows are a view, not a copy"
    assert plain.info["cache"] is None and first.info["cache"] == str(cache)


def test_rebuilt_when_a_file_changes(data_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    before = load_split("office_home", "Art", "opda", data_root=data_root, resolution=R, cache=cache)
    old = entries(cache)
    assert len(old) == 2, "the domain plus its opda adapt-set rows"
    changed = data_root / "office_home" / "Art" / "TV" / "00001.jpg"
    write_image(changed, seed=999)
    after = load_split("office_home", "Art", "opda", data_root=data_root, resolution=R, cache=cache)
    plain = load_split("office_home", "Art", "opda", data_root=data_root, resolution=R, cache=False)
    assert torch.equal(after.test.images, plain.test.images)
    assert torch.equal(after.adapt.images, plain.adapt.images)
    row = after.test.paths.index("office_home/Art/TV/00001.jpg")
    assert not torch.equal(after.test.images[row], before.test.images[row])
    assert len(entries(cache)) == 2 and not set(old) & set(entries(cache)), "stale entries are deleted"

    os.remove(data_root / "office_home" / "Art" / "TV" / "00002.jpg")
    fewer = load_split("office_home", "Art", "oda", data_root=data_root, resolution=R, cache=cache)
    assert len(fewer.test) == 14


def test_keyed_by_domain_and_resolution(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    for domain in ("Art", "Clipart"):
        for resolution in (R, 2 * R):
            split = load_split("office_home", domain, "cda", data_root=data_root, resolution=resolution, cache=cache)
            assert split.test.images.shape[-1] == resolution
    names = entries(cache)
    sources = [n for n in names if "-rows-" not in n]
    assert len(sources) == 4
    assert sum(n.startswith("office_home-Art-") for n in sources) == 2
    assert sum(f"-{2 * R}px-" in n for n in sources) == 2
    counter = DecodeCounter(monkeypatch)
    load_split("office_home", "Clipart", "cda", data_root=data_root, resolution=2 * R, cache=cache)
    assert counter.calls == 0


def test_parallel_loads_decode_once(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = sorted((data_root / "office_home" / "Art").rglob("*.jpg"))
    counter = DecodeCounter(monkeypatch)
    results: list[torch.Tensor] = []

    def load() -> None:
        results.append(read_images_cached(paths, R, "office_home-Art-x-all", tmp_path / "cache", threads=1)[0])

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.calls == len(paths)
    assert all(torch.equal(r, results[0]) for r in results)


def test_default_location_environment_and_off(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    split = load_split("office_home", "Art", "oda", data_root=data_root, resolution=R)
    assert split.info["cache"] == str(data_root / CACHE_FOLDER)
    assert entries(data_root / CACHE_FOLDER)
    monkeypatch.setenv(CACHE_ENV, "off")
    assert load_split("office_home", "Art", "oda", data_root=data_root, resolution=R).info["cache"] is None
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env-cache"))
    assert cache_dir(None, data_root) == tmp_path / "env-cache"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert cache_dir(None, data_root) == tmp_path / "xdg" / "clipbench"


def test_lists_layout_decodes_each_list_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data" / "domainnet"
    lines = {"train": [], "test": []}
    for label, cls in ((0, "aircraft_carrier"), (2, "alarm_clock"), (310, "toaster"), (340, "yoga")):
        for i in range(4):
            rel = f"clipart/{cls}/clipart_{label:03d}_{i:06d}.jpg"
            write_image(root / rel, label * 10 + i)
            lines["test" if i == 3 else "train"].append(f"{rel} {label}")
    for part, rows in lines.items():
        (root / f"clipart_{part}.txt").write_text("\n".join(rows) + "\n")
    cache = tmp_path / "cache"
    plain = load_split("domainnet", "clipart", "oda", data_root=tmp_path / "data", resolution=R, cache=False)
    counter = DecodeCounter(monkeypatch)
    for setting in ("oda", "pda", "cda"):
        split = load_split("domainnet", "clipart", setting, data_root=tmp_path / "data", resolution=R, cache=cache)
    assert counter.calls == 16
    oda = load_split("domainnet", "clipart", "oda", data_root=tmp_path / "data", resolution=R, cache=cache)
    assert torch.equal(oda.adapt.images, plain.adapt.images) and torch.equal(oda.test.images, plain.test.images)
    assert set(split.adapt.classes.tolist()) == {0, 2}


def test_cache_command_warms_the_cache(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    cache = tmp_path / "cache"
    assert (
        main(
            [
                "cache",
                "office_home",
                "--data-root",
                str(data_root),
                "--domains",
                "Art",
                "--resolution",
                str(R),
                "--cache",
                str(cache),
            ]
        )
        == 0
    )
    assert "office_home/Art: all 15 images at 24 px cached in" in capsys.readouterr().out
    counter = DecodeCounter(monkeypatch)
    load_split("office_home", "Art", "opda", data_root=data_root, resolution=R, cache=cache)
    assert counter.calls == 0
