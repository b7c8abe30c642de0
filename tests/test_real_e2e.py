"""End to end on a real data set layout: an open_clip ViT-B-16 (random init, nothing downloaded) runs
``zero_shot`` and one short epoch of ``ueo`` on a fake Office-Home tree through ``run_bench.py``'s ``main``.

The tree keeps Office-Home's real folder names and holds two known classes (Alarm_Clock, Backpack),
one unknown class inside the ODA adapt set (Shelf, index 52) and one outside it (TV, index 63).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.cli import main
from benchmark.core.records import load_records
from benchmark.data.cache import CACHE_ENV, CACHE_FOLDER

pytestmark = pytest.mark.filterwarnings("ignore:.*incomplete data")

CLASSES = {"Alarm_Clock": 0, "Backpack": 1, "Shelf": 52, "TV": 63}
PER_CLASS = 1


@pytest.fixture
def office_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    rng = np.random.default_rng(0)
    for cls in CLASSES:
        for i in range(PER_CLASS):
            path = tmp_path / "data" / "office_home" / "Art" / cls / f"{i + 1:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, size=(40, 56, 3), dtype=np.uint8)).save(path)
    return tmp_path / "data"


def test_vit_b16_zero_shot_and_ueo_on_office_home_tree(office_home: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    status = main(
        [
            "--methods",
            "zero_shot",
            "ueo",
            "--datasets",
            "office_home",
            "--domains",
            "Art",
            "--model",
            "ViT-B-16",
            "--pretrained",
            "none",
            "--data-root",
            str(office_home),
            "--seeds",
            "1",
            "--out",
            str(out),
            "--cfg-options",
            "ueo.epochs=1",
            "ueo.batch_size=8",
        ]
    )
    assert status == 0
    records = {r["spec"]["method"]: r for r in load_records(out)}
    assert set(records) == {"zero_shot", "ueo"}
    for record in records.values():
        assert record["status"] == "done", record.get("error")
        assert record["spec"]["protocol"] == record["data"]["protocol"] == "ueo"
        data = record["data"]
        assert data["num_known"] == 50 and data["resolution"] == 224
        assert data["n_test"] == 4 * PER_CLASS and data["n_test_unknown"] == 2 * PER_CLASS
        assert data["n_adapt"] == 3 * PER_CLASS and data["n_adapt_unknown"] == PER_CLASS
        assert data["cache"] == str(office_home / CACHE_FOLDER)
        assert 0.0 <= record["metrics"]["test"]["scores"]["msp_cos"]["auroc"] <= 100.0
    assert records["ueo"]["spec"]["hparams"]["epochs"] == 1 and records["ueo"]["num_trainable"] > 0
    assert records["zero_shot"]["num_trainable"] == 0
    assert "office_home" in (out / "leaderboard.md").read_text()
