"""Loading splits from tiny fake trees in the real on-disk layouts, and the errors users see."""

from __future__ import annotations

import dataclasses
import io
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.data import DATA_ROOT_ENV, DataError, catalog, get_spec, load_split
from benchmark.data.__main__ import format_indices, main
from benchmark.data.fetch import download
from benchmark.data.images import read_image

pytestmark = pytest.mark.filterwarnings("ignore:.*incomplete data")

R = 16


def write_jpeg(path: Path, seed: int, suffix: str = ".jpg") -> Path:
    """A small random-sized, random-coloured image file."""
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(8, 41, size=2))
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path.with_suffix(suffix))
    return path.with_suffix(suffix)


def make_folders(root: Path, folders: dict[str, int], seed: int = 0) -> None:
    """``folders`` maps a class folder (relative to ``root``) to its number of images."""
    for k, (folder, count) in enumerate(folders.items()):
        for i in range(count):
            write_jpeg(root / folder / f"img_{i:03d}", seed * 1000 + k * 10 + i)


# Office-Home class folders with odd spellings -> pinned class name.
OFFICE_HOME = {
    "alarm_clock": "Alarm_Clock",
    "Desk Lamp": "Desk_Lamp",
    "push-pin": "Push_Pin",
    "RULER": "Ruler",
    "Soda": "Soda",
    "TV": "TV",
    "Webcam": "Webcam",
}


@pytest.fixture
def office_home_root(tmp_path: Path) -> Path:
    for domain in ("Art", "Real World"):
        make_folders(tmp_path / "office_home" / domain, {f: 3 for f in OFFICE_HOME}, seed=len(domain))
    (tmp_path / "office_home" / "Art" / "Alarm_Clock_notes.txt").write_text("not an image folder")
    (tmp_path / "office_home" / "Art" / "TV" / "Thumbs.db").write_text("ignored")
    return tmp_path


def test_office_home_oda_labels_paths_and_images(office_home_root: Path) -> None:
    spec = get_spec("office_home")
    split = load_split("office_home", domain="Art", setting="oda", data_root=office_home_root, resolution=R)
    index = {f: spec.classes.index(c) for f, c in OFFICE_HOME.items()}
    assert split.num_known == 50
    assert split.classnames == spec.classes[:50]
    assert split.test.images.shape == (3 * len(OFFICE_HOME), 3, R, R)
    assert split.test.images.dtype == torch.uint8
    assert split.test.labels.dtype == np.int64
    assert sorted(set(split.test.labels.tolist())) == sorted(index.values())
    assert set(split.adapt.labels.tolist()) == {i for i in index.values() if i <= 59}
    assert (split.test.labels >= 50).any() and (split.adapt.labels >= 50).any()
    assert split.info["n_adapt"] == len(split.adapt) == 3 * 5
    assert split.info["adapt_classes"] == sorted(i for i in index.values() if i <= 59)
    assert split.info["test_classes"] == sorted(index.values())
    assert "Bed" in split.info["missing_classes"]
    assert list(zip(split.test.classes, split.test.paths)) == sorted(zip(split.test.classes, split.test.paths))
    assert all(p.startswith("office_home/Art/") for p in split.test.paths)
    for row, path in enumerate(split.test.paths):
        folder = path.split("/")[2]
        assert split.test.labels[row] == index[folder]
        assert split.test.classes[row] == index[folder]
    first = office_home_root / split.adapt.paths[0]
    assert torch.equal(split.adapt.images[0], read_image(first, R)[0])


@pytest.mark.parametrize("setting,ranges", [("cda", [(0, 49)]), ("pda", [(0, 34)]), ("opda", [(0, 34), (50, 59)])])
def test_office_home_adapt_holds_only_adapt_classes(office_home_root: Path, setting: str, ranges: list) -> None:
    spec = get_spec("office_home")
    present = {spec.classes.index(c) for c in OFFICE_HOME.values()}
    adapt = {i for i in present if any(a <= i <= b for a, b in ranges)}
    split = load_split("office_home", domain="Art", setting=setting, data_root=office_home_root, resolution=R)
    assert set(split.adapt.labels.tolist()) == adapt
    assert len(split.adapt) == 3 * len(adapt)
    assert len(split.test) == 3 * len(OFFICE_HOME)


def test_office_home_real_world_folder_and_loose_names(office_home_root: Path) -> None:
    for name in ("RealWorld", "real world"):
        split = load_split("office_home", domain=name, setting="cda", data_root=office_home_root, resolution=R)
        assert split.info["domain"] == "RealWorld"
        assert all(p.startswith("office_home/Real World/") for p in split.test.paths)


def test_office_home_alternative_root_name(tmp_path: Path) -> None:
    make_folders(tmp_path / "OfficeHomeDataset_10072016" / "Clipart", {"Backpack": 2, "Webcam": 2})
    split = load_split("office_home", domain="Clipart", setting="oda", data_root=tmp_path, resolution=R)
    assert split.info["n_test"] == 4 and split.info["n_adapt"] == 2


def test_unmatched_class_folder_is_named(office_home_root: Path) -> None:
    make_folders(office_home_root / "office_home" / "Art", {"Toaster": 1})
    with pytest.raises(DataError, match="Toaster"):
        load_split("office_home", domain="Art", setting="oda", data_root=office_home_root, resolution=R)


def test_missing_data_root_says_how_to_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    with pytest.raises(DataError) as info:
        load_split("office_home", domain="Art", setting="oda")
    message = str(info.value)
    assert DATA_ROOT_ENV in message and "--data-root" in message
    assert "<data_root>/office_home/<domain folder>/<class folder>" in message
    assert "hemanthdv.org" in message and "python -m benchmark.data" in message
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=str(missing)):
        load_split("office_home", domain="Art", setting="oda", data_root=missing)
    with pytest.raises(DataError, match=str(tmp_path / "office_home")):
        load_split("office_home", domain="Art", setting="oda", data_root=tmp_path)


def test_missing_domain_folder_names_the_path(office_home_root: Path) -> None:
    with pytest.raises(DataError) as info:
        load_split("office_home", domain="Clipart", setting="oda", data_root=office_home_root)
    message = str(info.value)
    assert str(office_home_root / "office_home" / "Clipart") in message
    assert "Real World" in message and "Expected layout" in message


def test_corrupt_image_names_the_file(office_home_root: Path) -> None:
    bad = office_home_root / "office_home" / "Art" / "Soda" / "broken.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    truncated = office_home_root / "office_home" / "Art" / "TV" / "cut.jpg"
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), "red").save(buffer, format="JPEG")
    truncated.write_bytes(buffer.getvalue()[:100])
    with pytest.raises(DataError, match="cannot read image .*(broken|cut).jpg"):
        load_split("office_home", domain="Art", setting="oda", data_root=office_home_root, resolution=R)


def test_data_root_from_environment(office_home_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ROOT_ENV, str(office_home_root))
    split = load_split("office_home", domain="Art", setting="pda", resolution=R)
    assert split.info["data_root"] == str(office_home_root.resolve())


def test_count_mismatch_warns(office_home_root: Path) -> None:
    with pytest.warns(UserWarning, match="2427"):
        load_split("office_home", domain="Art", setting="oda", data_root=office_home_root, resolution=R)


def test_empty_adapt_set_is_an_error(tmp_path: Path) -> None:
    make_folders(tmp_path / "office_home" / "Art", {"Webcam": 2})
    with pytest.raises(DataError, match="adapt set .* is empty"):
        load_split("office_home", domain="Art", setting="cda", data_root=tmp_path, resolution=R)


def test_office31_images_subfolder(tmp_path: Path) -> None:
    make_folders(tmp_path / "office31" / "dslr" / "images", {"back_pack": 2, "trash_can": 2})
    split = load_split("office31", domain="dslr", setting="oda", data_root=tmp_path, resolution=R)
    assert split.test.labels.tolist() == [0, 0, 30, 30]
    assert split.adapt.labels.tolist() == [0, 0]


# DomainNet classes -> pinned index: their folder sort order differs from the label order.
DOMAINNET = ["aircraft_carrier", "The_Eiffel_Tower", "zebra", "yoga", "bush"]


@pytest.fixture
def domainnet_root(tmp_path: Path) -> Path:
    spec = get_spec("domainnet")
    root = tmp_path / "domainnet"
    for split, count in (("train", 3), ("test", 2)):
        lines = []
        for k, name in enumerate(DOMAINNET):
            for i in range(count):
                rel = f"clipart/{name}/clipart_{split}_{k}_{i}.jpg"
                write_jpeg(root / rel, hash((split, k, i)) % 1000)
                lines.append(f"{rel} {spec.classes.index(name)}")
        (root / f"clipart_{split}.txt").write_text("\n".join(reversed(lines)) + "\n")
    return tmp_path


def test_domainnet_lists_give_labels_and_splits(domainnet_root: Path) -> None:
    spec = get_spec("domainnet")
    index = {n: spec.classes.index(n) for n in DOMAINNET}
    assert sorted(DOMAINNET) != sorted(DOMAINNET, key=index.get)
    split = load_split("domainnet", domain="clipart", setting="opda", data_root=domainnet_root, resolution=R)
    assert all("_train_" in p for p in split.adapt.paths)
    assert all("_test_" in p for p in split.test.paths)
    assert len(split.test) == 2 * len(DOMAINNET)
    adapt_ok = {i for i in index.values() if i <= 249 or 300 <= i <= 329}
    assert set(split.adapt.labels.tolist()) == adapt_ok
    assert len(split.adapt) == 3 * len(adapt_ok)
    for part in (split.adapt, split.test):
        for path, label in zip(part.paths, part.labels):
            assert label == index[path.split("/")[2]]
    assert split.info["transductive"] is False
    assert split.info["found_images"] == {"adapt": 15, "test": 10}


def test_domainnet_missing_list_is_named(domainnet_root: Path) -> None:
    (domainnet_root / "domainnet" / "clipart_train.txt").unlink()
    with pytest.raises(DataError, match="clipart_train.txt"):
        load_split("domainnet", domain="clipart", setting="oda", data_root=domainnet_root, resolution=R)


def test_domainnet_malformed_list_line(domainnet_root: Path) -> None:
    listing = domainnet_root / "domainnet" / "clipart_test.txt"
    listing.write_text(listing.read_text() + "clipart/zebra/x.jpg zebra\n")
    with pytest.raises(DataError, match=r"clipart_test.txt:\d+"):
        load_split("domainnet", domain="clipart", setting="oda", data_root=domainnet_root, resolution=R)


@pytest.fixture
def visda_root(tmp_path: Path) -> Path:
    folders = {"aeroplane": 2, "bicycle": 2, "car": 1, "knife": 2, "truck": 1}
    make_folders(tmp_path / "visda2017" / "validation", folders)
    (tmp_path / "visda2017" / "validation" / "image_list.txt").write_text("aeroplane/img_000.jpg 0\n")
    return tmp_path


def test_visda_classic_protocol_relabels_known_by_name(visda_root: Path) -> None:
    split = load_split(
        "visda2017", domain="real", setting="oda", protocol="classic", data_root=visda_root, resolution=R
    )
    assert split.num_known == 6
    assert split.classnames == ["bicycle", "bus", "car", "motorcycle", "train", "truck"]
    assert split.all_classnames[6:8] == ["aeroplane", "horse"]
    expected = {"aeroplane": 6, "bicycle": 0, "car": 2, "knife": 8, "truck": 5}
    for part in (split.adapt, split.test):
        assert len(part) == 8
        for path, label, pinned in zip(part.paths, part.labels, part.classes):
            name = path.split("/")[2]
            assert label == expected[name]
            assert get_spec("visda2017").classes[pinned] == name
    assert split.info["protocol"] == "classic"
    assert split.info["known_classes"] == [1, 2, 3, 6, 10, 11]


def test_visda_ueo_protocol_is_identity(visda_root: Path) -> None:
    split = load_split("visda2017", domain="real", setting="pda", data_root=visda_root, resolution=R)
    assert split.adapt.labels.tolist() == [0, 0, 1, 1, 3, 5, 5]
    assert split.test.labels.tolist() == [0, 0, 1, 1, 3, 5, 5, 11]


def fake_generator() -> types.ModuleType:
    """A stand-in for ``benchmark.data.synthetic`` with the agreed interface."""
    module = types.ModuleType("benchmark.data.synthetic")
    module.CLASSES = [f"shape_{i}" for i in range(20)]
    module.DOMAINS = ["photo", "sketch", "painting", "clipart", "fog"]

    def render(domain: str, n_per_class: int, seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(20, dtype=np.int64), n_per_class)
        images = np.zeros((len(labels), size, size, 3), dtype=np.uint8)
        images[..., 0] = (labels * 10)[:, None, None]
        images[..., 1] = module.DOMAINS.index(domain)
        return images, labels

    module.render = render
    return module


def test_synthetic_split_with_stand_in_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "benchmark.data.synthetic", fake_generator())
    monkeypatch.setattr(catalog, "_cache", {})
    split = load_split("synthetic", domain="sketch", setting="opda", resolution=R)
    assert split.classnames == [f"shape_{i}" for i in range(15)]
    assert split.test.images.shape == (400, 3, R, R)
    assert set(split.adapt.labels.tolist()) == set(range(10)) | {15, 16, 17}
    assert len(split.adapt) == 13 * 20
    assert split.adapt.paths[0] == "synthetic/sketch/0000"
    assert torch.all(split.test.images[:, 0] == torch.from_numpy(split.test.labels * 10)[:, None, None])
    assert torch.all(split.test.images[:, 1] == 1)
    classic = load_split("synthetic", domain="photo", setting="oda", protocol="classic", resolution=R)
    assert classic.num_known == 10 and len(classic.adapt) == 400


def test_synthetic_split_with_real_generator() -> None:
    pytest.importorskip("benchmark.data.synthetic")
    spec = get_spec("synthetic")
    split = load_split("synthetic", domain=spec.domains[1], setting="oda", resolution=R)
    assert split.test.images.shape == (20 * len(spec.classes), 3, R, R)
    assert split.info["expected_images"] == {"all": len(split.test)}
    assert split.adapt.labels.max() == 17


def test_registry_builds_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmark.registry import DATASETS

    monkeypatch.setitem(sys.modules, "benchmark.data.synthetic", fake_generator())
    monkeypatch.setattr(catalog, "_cache", {})
    split = DATASETS.build(dict(type="synthetic", domain="photo", setting="pda", resolution=R))
    assert split.info["n_adapt"] == 200


def test_download_from_file_url_extracts_archive(tmp_path: Path) -> None:
    source = tmp_path / "src"
    make_folders(source / "validation", {"bus": 1, "plant": 2})
    archive = tmp_path / "validation.tar"
    with tarfile.open(archive, "w") as handle:
        handle.add(source / "validation", arcname="validation")
    spec = dataclasses.replace(get_spec("visda2017"), download=[{"url": archive.as_uri(), "domain": "real"}])
    data_root = tmp_path / "data"
    root = download(spec, data_root, domains=["real"])
    assert root == data_root / "visda2017"
    assert len(list((root / "validation" / "plant").iterdir())) == 2
    assert not (root / "validation.tar").exists()
    download(spec, data_root)


def test_command_line(office_home_root: Path, capsys: pytest.CaptureFixture) -> None:
    assert format_indices([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
    assert main(["list"]) == 0
    assert main(["info", "office_home"]) == 0
    assert "opda  adapt classes 0-34, 50-59" in capsys.readouterr().out
    assert main(["info", "nope"]) == 2
    assert main(["check", "office_home", "--data-root", str(office_home_root), "--domains", "Art"]) == 1
    assert "[count] office_home/Art all: 21 images (expected 2427)" in capsys.readouterr().out
    assert main(["download", "office_home", "--data-root", str(office_home_root)]) == 1


def test_decode_cache_is_reused_and_invalidated(
    office_home_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmark.data import images as images_module

    cache = tmp_path / "cache"
    first = load_split(
        "office_home", domain="Art", setting="oda", data_root=office_home_root, resolution=R, cache=cache
    )
    assert len(list(cache.glob("*.u8"))) == 1, "the oda adapt set is a view of the domain, not another entry"
    monkeypatch.setenv("CLIPBENCH_CACHE", str(cache))

    def refuse(path: object, resolution: int, view: str = "center") -> torch.Tensor:
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(images_module, "read_image", refuse)
    again = load_split("office_home", domain="Art", setting="oda", data_root=office_home_root, resolution=R)
    assert torch.equal(first.test.images, again.test.images)
    assert torch.equal(first.adapt.images, again.adapt.images)
    assert again.info["cache"] == str(cache)
    write_jpeg(office_home_root / "office_home" / "Art" / "TV" / "img_000", 99)
    with pytest.raises(AssertionError, match="decoded although cached"):
        load_split("office_home", domain="Art", setting="oda", data_root=office_home_root, resolution=R)
