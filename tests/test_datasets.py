"""The data set specs encode DESIGN section 3 exactly; checked from the spec files alone (no images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmark.data import DATASETS_DIR, DataError, dataset_names, get_spec
from benchmark.data.errors import UnknownNameError
from benchmark.data.parse import parse_spec

REFERENCE = Path("/work/shared/reference/classes")
REAL = ["office31", "office_home", "visda2017", "domainnet"]


def span(*ranges: tuple[int, int]) -> list[int]:
    """Inclusive ranges as a flat index list."""
    return [i for first, last in ranges for i in range(first, last + 1)]


# DESIGN section 3, typed in by hand: (classes, K, {setting: adapt classes}).
UEO = {
    "office31": (
        31,
        25,
        {"cda": span((0, 24)), "pda": span((0, 19)), "oda": span((0, 27)), "opda": span((0, 14), (25, 27))},
    ),
    "office_home": (
        65,
        50,
        {"cda": span((0, 49)), "pda": span((0, 34)), "oda": span((0, 59)), "opda": span((0, 34), (50, 59))},
    ),
    "visda2017": (12, 8, {"cda": span((0, 7)), "pda": span((0, 5)), "oda": span((0, 9)), "opda": span((0, 5), (8, 9))}),
    "domainnet": (
        345,
        300,
        {"cda": span((0, 299)), "pda": span((0, 249)), "oda": span((0, 329)), "opda": span((0, 249), (300, 329))},
    ),
}
DOMAINS = {
    "office31": ["amazon", "dslr", "webcam"],
    "office_home": ["Art", "Clipart", "Product", "RealWorld"],
    "visda2017": ["synthetic", "real"],
    "domainnet": ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"],
}
IMAGES = {
    ("office31", "amazon"): {"all": 2817},
    ("office31", "dslr"): {"all": 498},
    ("office31", "webcam"): {"all": 795},
    ("office_home", "Art"): {"all": 2427},
    ("office_home", "Clipart"): {"all": 4365},
    ("office_home", "Product"): {"all": 4439},
    ("office_home", "RealWorld"): {"all": 4357},
    ("visda2017", "synthetic"): {"all": 152397},
    ("visda2017", "real"): {"all": 55388},
    ("domainnet", "clipart"): {"adapt": 33525, "test": 14604},
    ("domainnet", "infograph"): {"adapt": 36023, "test": 15582},
    ("domainnet", "painting"): {"adapt": 50416, "test": 21850},
    ("domainnet", "quickdraw"): {"adapt": 120750, "test": 51750},
    ("domainnet", "real"): {"adapt": 120906, "test": 52041},
    ("domainnet", "sketch"): {"adapt": 48212, "test": 20916},
}
CLASSIC_VISDA = ["bicycle", "bus", "car", "motorcycle", "train", "truck"]


def test_catalog_lists_every_data_set_sorted() -> None:
    names = dataset_names()
    assert names == sorted(names)
    assert set(REAL) | {"synthetic"} <= set(names)


def test_datasets_folder_is_data_only() -> None:
    assert not list(DATASETS_DIR.rglob("*.py")), "datasets/ must not hold Python (it would shadow `datasets`)"
    assert not (DATASETS_DIR / "__init__.py").exists()


@pytest.mark.parametrize("name", REAL)
@pytest.mark.parametrize("setting", ["cda", "pda", "oda", "opda"])
def test_ueo_protocol_matches_design_table(name: str, setting: str) -> None:
    total, known, adapt = UEO[name]
    spec = get_spec(name)
    assert len(spec.classes) == total
    assert spec.default_protocol == "ueo"
    assert spec.settings("ueo") == ["cda", "pda", "oda", "opda"]
    assert spec.known_classes("ueo") == list(range(known))
    assert spec.num_known("ueo") == known
    assert spec.adapt_classes("ueo", setting) == adapt[setting]
    assert spec.adapt_classes(None, setting) == adapt[setting]
    assert spec.test_classes("ueo") == list(range(total))
    assert spec.label_map("ueo").tolist() == list(range(total))


@pytest.mark.parametrize("name", REAL)
def test_domains_and_image_counts(name: str) -> None:
    spec = get_spec(name)
    assert spec.domains == DOMAINS[name]
    for domain in spec.domains:
        assert spec.domain(domain).images == IMAGES[(name, domain)]
    assert spec.layout.transductive == (name != "domainnet")


def test_fifteen_domains_in_all() -> None:
    assert sum(len(get_spec(n).domains) for n in REAL) == 15


@pytest.mark.parametrize("name,known", [("office31", 20), ("office_home", 25)])
def test_classic_protocol_first_k_known(name: str, known: int) -> None:
    spec = get_spec(name)
    total = len(spec.classes)
    assert spec.settings("classic") == ["oda"]
    assert spec.known_classes("classic") == list(range(known))
    assert spec.adapt_classes("classic", "oda") == list(range(total))
    assert spec.test_classes("classic") == list(range(total))
    assert spec.label_map("classic").tolist() == list(range(total))


def test_classic_visda_knows_six_classes_by_name() -> None:
    spec = get_spec("visda2017")
    known = spec.known_classes("classic")
    assert [spec.classes[i] for i in known] == CLASSIC_VISDA
    assert spec.adapt_classes("classic", "oda") == list(range(12))
    order = spec.class_order("classic")
    assert [spec.classes[i] for i in order[6:]] == ["aeroplane", "horse", "knife", "person", "plant", "skateboard"]
    mapping = spec.label_map("classic")
    assert mapping[spec.classes.index("bicycle")] == 0
    assert mapping[spec.classes.index("truck")] == 5
    assert mapping[spec.classes.index("aeroplane")] == 6
    assert np.array_equal(np.sort(mapping), np.arange(12))


def test_domainnet_has_no_classic_protocol() -> None:
    with pytest.raises(DataError, match="valid: ueo"):
        get_spec("domainnet").settings("classic")


@pytest.mark.parametrize("name", REAL)
def test_class_lists_equal_pinned_reference(name: str) -> None:
    reference = REFERENCE / f"{name}.txt"
    if not reference.is_file():
        pytest.skip(f"{reference} not available")
    pinned = [line.strip() for line in reference.read_text().splitlines() if line.strip()]
    assert get_spec(name).classes == pinned
    assert (DATASETS_DIR / name / "classes.txt").read_text().split() == pinned


def test_pinned_positions_that_a_plain_sort_would_break() -> None:
    assert get_spec("office_home").classes.index("TV") == 63
    assert get_spec("domainnet").classes.index("The_Eiffel_Tower") == 308


def test_synthetic_spec_follows_its_generator() -> None:
    generator = pytest.importorskip("benchmark.data.synthetic")
    spec = get_spec("synthetic")
    assert spec.classes == list(generator.CLASSES)
    assert spec.domains == list(generator.DOMAINS)
    assert spec.layout.kind == "synthetic" and spec.layout.transductive
    assert (spec.layout.n_per_class, spec.layout.seed, spec.layout.size, spec.layout.resample) == (20, 0, 64, True)
    assert spec.validation_domains == ("fog",) and spec.target_domains == ["photo", "sketch", "painting", "clipart"]
    assert spec.known_classes() == list(range(15))
    assert spec.adapt_classes("ueo", "opda") == span((0, 9), (15, 17))
    assert spec.adapt_classes("ueo", "oda") == span((0, 17))
    assert spec.known_classes("classic") == list(range(10))
    assert spec.adapt_classes("classic", "oda") == list(range(20))
    assert isinstance(spec.overrides, dict)


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(KeyError, match="office_home"):
        get_spec("office-home-typo")
    spec = get_spec("office_home")
    with pytest.raises(UnknownNameError, match="ueo, classic"):
        spec.protocol("paper")
    with pytest.raises(DataError, match="cda, pda, oda, opda"):
        spec.adapt_classes("ueo", "uda")
    with pytest.raises(DataError, match="Art, Clipart, Product, RealWorld"):
        spec.resolve_domain("Sketch")


def test_domain_names_match_loosely() -> None:
    spec = get_spec("office_home")
    assert spec.resolve_domain("real world") == "RealWorld"
    assert spec.resolve_domain("Real_World") == "RealWorld"
    assert spec.resolve_domain("art") == "Art"
    assert get_spec("visda2017").resolve_domain("validation") == "real"


def test_datasets_registered_in_registry() -> None:
    from benchmark.registry import DATASETS

    assert set(REAL) <= set(DATASETS.module_dict)


def _write_spec(tmp_path: Path, body: str) -> Path:
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "classes.txt").write_text("a\nb\nc\nd\n")
    (folder / "dataset.yaml").write_text(body)
    return folder / "dataset.yaml"


TOY = """
name: toy
classes: classes.txt
domains: {one: {folder: One, images: 4}}
layout: {kind: folders, root: toy}
protocols:
  ueo: {known: 2, settings: {oda: [[0, 2]]}, test: all}
overrides: {ueo: {epochs: 3}}
"""


def test_a_new_spec_needs_no_code(tmp_path: Path) -> None:
    spec = parse_spec(_write_spec(tmp_path, TOY))
    assert spec.adapt_classes("ueo", "oda") == [0, 1, 2]
    assert spec.overrides == {"ueo": {"epochs": 3}}
    assert spec.layout.extensions == (".jpg", ".jpeg", ".png")


@pytest.mark.parametrize(
    "old,new,message",
    [
        ("overrides:", "overides:", "unknown key"),
        ("[[0, 2]]", "[[0, 4]]", "out of range"),
        ("[[0, 2]]", "[zebra]", "unknown class name"),
        ("known: 2", "known: 4", "every class is known"),
        ("kind: folders", "kind: cloud", "kind one of"),
        ("name: toy", "name: other", "folder name"),
    ],
)
def test_malformed_specs_are_rejected(tmp_path: Path, old: str, new: str, message: str) -> None:
    path = _write_spec(tmp_path, TOY.replace(old, new))
    with pytest.raises(DataError, match=message) as info:
        parse_spec(path)
    assert str(path) in str(info.value)


def test_generated_images_are_byte_identical_across_calls_and_differ_across_domains() -> None:
    from benchmark.data.synthetic import DOMAINS, render

    first = {d: render(d, 2, 7) for d in DOMAINS}
    for d in DOMAINS:
        again = render(d, 2, 7)
        assert first[d][0].tobytes() == again[0].tobytes() and np.array_equal(first[d][1], again[1])
    digests = {first[d][0].tobytes() for d in DOMAINS}
    assert len(digests) == len(DOMAINS)
    assert render("photo", 2, 8)[0].tobytes() != first["photo"][0].tobytes()  # another seed, other images


def test_validation_domains_must_be_domains_and_leave_a_target(tmp_path) -> None:
    import shutil

    from benchmark.data.parse import parse_spec

    folder = tmp_path / "synthetic"
    shutil.copytree(DATASETS_DIR / "synthetic", folder, ignore=shutil.ignore_patterns("*.pt"))
    text = (folder / "dataset.yaml").read_text()
    (folder / "dataset.yaml").write_text(text.replace("validation_domains: [fog]", "validation_domains: [nope]"))
    with pytest.raises(DataError, match="validation_domains"):
        parse_spec(folder / "dataset.yaml")
