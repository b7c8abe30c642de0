"""Every registered method, on the embedded benchmark, in every regime it declares: it adapts,
predicts validly, changes something, and never sees a label. Plus a method kept in a user's own
file (``--plugins``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import benchmark.run.runner as runner
from benchmark.adapt.scores import score_names
from benchmark.cli import main
from benchmark.core.records import load_records
from benchmark.core.spec import RunSpec
from benchmark.registry import get_method, method_names
from benchmark.run.runner import execute
from benchmark.run.sweep import SweepRequest, build_sweep

SHORT = {"epochs": 1}


def _spec(method: str, **hp) -> RunSpec:
    """The embedded benchmark's run of ``method`` on sketch, seed 1 (its budget, one epoch)."""
    cls = get_method(method)
    short = {k: v for k, v in SHORT.items() if k in cls.hparam_defaults()}
    req = SweepRequest(
        methods=[method],
        datasets=["synthetic"],
        seeds=[1],
        model="clipbench-tiny",
        pretrained="embedded",
        domains=["sketch"],
        overrides={method: {**short, **hp}},
    )
    return build_sweep(req)[0]


METHOD_REGIMES = [(m, r) for m in method_names() for r in get_method(m).regimes]


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("methods")


@pytest.fixture(scope="module")
def zero_shot_preds(out: Path) -> np.ndarray:
    rec = execute(_spec("zero_shot"), out)
    assert rec["status"] == "done"
    with np.load(Path(out) / "runs" / rec["hash"] / "preds.npz") as z:
        return z["test_topk_logit"].astype(np.float32)


@pytest.mark.parametrize("method,regime", METHOD_REGIMES)
def test_every_method_adapts_and_predicts(method: str, regime: str, out: Path, zero_shot_preds: np.ndarray):
    rec = execute(_spec(method, regime=regime), out)
    assert rec["status"] == "done", rec.get("traceback")
    assert rec["regime"] == regime and rec["spec"]["hparams"]["regime"] == regime
    assert rec["precision"] == "fp32" and rec["headline_score"] == "msp_cos"
    with np.load(Path(out) / "runs" / rec["hash"] / "preds.npz") as z:
        n, k = rec["data"]["n_test"], rec["data"]["num_known"]
        assert z["test_pred"].shape == (n,) and z["test_pred"].min() >= 0 and z["test_pred"].max() < k
        for name in score_names():
            assert np.isfinite(z[f"test_score_{name}"]).all(), name
        score = z["test_score_msp_cos"]
        assert (score >= 1.0 / k - 1e-6).all() and (score <= 1 + 1e-6).all()
        logits = z["test_topk_logit"].astype(np.float32)
    assert set(score_names()) <= set(rec["metrics"]["test"]["scores"]) == set(rec["scores"])
    assert 0 <= rec["metrics"]["test"]["scores"]["msp_cos"]["auroc"] <= 100
    cls = get_method(method)
    if cls.adapts:
        assert rec["history"]
        assert (rec["num_trainable"] > 0) == cls.trains
        if cls.trains:  # the loss curve over the whole budget, which benchmarks/loss_curves.py judges
            assert rec["curve"] and rec["curve"][-1]["progress"] == 1.0
        assert not np.array_equal(logits, zero_shot_preds), f"{method} changed nothing"
    else:
        assert np.array_equal(logits, zero_shot_preds)


@pytest.mark.parametrize("method", [m for m in method_names() if get_method(m).adapts])
def test_labels_never_reach_a_method(method: str, tmp_path: Path, monkeypatch):
    """Permuting the labels of the data changes the scores, never what the method predicts."""
    real = runner._load_split.__wrapped__

    def load(permute: bool):
        def fake(*args):
            split = real(*args)
            if permute:
                rng = np.random.default_rng(0)
                split.adapt.labels[:] = rng.permutation(split.adapt.labels)
                split.test.labels[:] = rng.permutation(split.test.labels)
            return split

        return fake

    preds = []
    for permute in (False, True):
        monkeypatch.setattr(runner, "_load_split", load(permute))
        rec = execute(_spec(method), tmp_path / str(permute))
        assert rec["status"] == "done", rec.get("traceback")
        with np.load(tmp_path / str(permute) / "runs" / rec["hash"] / "preds.npz") as z:
            preds.append((z["test_pred"], z["test_score_msp_cos"]))
    assert np.array_equal(preds[0][0], preds[1][0]) and np.array_equal(preds[0][1], preds[1][1])


def test_unlabeled_batches_carry_no_labels():
    import torch

    from benchmark.adapt.augment import Augment
    from benchmark.adapt.unlabeled import UnlabeledData

    data = UnlabeledData(torch.zeros(5, 3, 8, 8, dtype=torch.uint8))
    batch = next(data.batches(4, views={"images": Augment("none"), "images_strong": Augment("rrc")}))
    assert set(batch) == {"index", "images", "images_strong", "raw"}
    assert set(vars(batch["raw"])) == {"center", "full", "sizes"}
    assert not any("label" in name for name in vars(data))


PLUGIN = '''
"""A user's own method, kept outside the repository."""
{imports}


@register_method
class NormEntropy(Adapter):
    """Entropy minimisation of the image encoder's LayerNorm weights (a toy baseline)."""

    name = "my_norm_entropy"
    defaults = {"epochs": 1, "lr": 1e-3, "augment": "none"}
    regimes = ("transductive",)

    def configure(self):
        self.model.eval()
        params = [m.weight for _, m in self.model.norm_layers()]
        for p in params:
            p.requires_grad_(True)
        return params

    def loss(self, batch):
        return softmax_entropy(self.model(batch["images"])).mean()
'''


IMPORTS = {
    "public": "from benchmark import Adapter, register_method\nfrom benchmark.adapt.losses import softmax_entropy",
    "old_readme": "from benchmark.adapter import Adapter\nfrom benchmark.losses import softmax_entropy\n"
    "from benchmark.registry import register_method",
}


@pytest.mark.parametrize("style", sorted(IMPORTS))
def test_plugin_method_from_outside_the_repo(tmp_path: Path, capsys, style):
    """A method file outside the repo, written with the public imports or with the README's old ones."""
    plugin = tmp_path / "elsewhere" / f"my_method_{style}.py"
    plugin.parent.mkdir()
    name = f"my_norm_entropy_{style}"
    plugin.write_text(PLUGIN.replace("{imports}", IMPORTS[style]).replace("my_norm_entropy", name))
    out = tmp_path / "out"
    argv = [
        "--plugins",
        str(plugin),
        "--methods",
        name,
        "zero_shot",
        "--domains",
        "sketch",
        "--seeds",
        "1",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    records = load_records(out)
    assert {r["spec"]["method"] for r in records} == {name, "zero_shot"}
    assert all(r["status"] == "done" for r in records)
    assert name in (out / "leaderboard.md").read_text()
    assert main(["--plugins", str(tmp_path / "missing.py"), "--out", str(out)]) == 2
    assert "missing.py" in capsys.readouterr().err
