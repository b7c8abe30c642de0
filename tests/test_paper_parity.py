"""Paper parity: per-data-set recipes versus departures, precision, the official views and variants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_classifier, make_data

from benchmark.adapt.augment import Augment, ImageBatch, crop_resample, resize_crop_boxes, rrc_boxes
from benchmark.cli import main
from benchmark.core.hparams import method_label
from benchmark.model.precision import PrecisionError, effective_precision, to_fp16_weights
from benchmark.registry import get_method
from benchmark.run.sweep import SweepRequest, build_sweep, recipe_hparams

CONFIG = str(Path(__file__).resolve().parent.parent / "configs" / "ueo_paper.py")


def _spec(method: str, dataset: str, domain: str, **over):
    req = SweepRequest(
        methods=[method],
        datasets=[dataset],
        seeds=[1],
        model="ViT-B-16",
        pretrained="openai",
        domains=[domain],
        overrides={method: over} if over else None,
    )
    return build_sweep(req)[0]


def _hparams(method: str, dataset: str, domain: str, **over) -> dict:
    return _spec(method, dataset, domain, **over).hparams


def _label(method: str, dataset: str, domain: str, **over) -> str:
    return method_label(method, _spec(method, dataset, domain, **over).departures)


def test_domainnet_ueo_recipe_is_five_epochs_and_no_departure():
    for method in ("ueo", "infomax"):
        hp = _hparams(method, "domainnet", "clipart")
        assert hp["epochs"] == 5 and recipe_hparams(method, "domainnet")["epochs"] == 5
        assert (
            _spec(method, "domainnet", "clipart").departures == {} and _label(method, "domainnet", "clipart") == method
        )
        assert _hparams(method, "office_home", "Art")["epochs"] == 50
    assert _label("ueo", "domainnet", "clipart", epochs=7) == "ueo (epochs=7)"
    assert _label("ueo", "office_home", "Art", epochs=5) == "ueo (epochs=5)"


def test_paper_config_dry_run_lists_resolved_hparams(capsys):
    assert (
        main(
            [
                "--config",
                CONFIG,
                "--dry-run",
                "--show-hparams",
                "--datasets",
                "domainnet",
                "--domains",
                "sketch",
                "--settings",
                "oda",
                "--seeds",
                "1",
                "--model",
                "ViT-B-16",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    runs = [line for line in out.splitlines() if "domainnet/sketch" in line]
    assert [r.split()[2] for r in runs] == [
        "zero_shot",
        "tent",
        "pseudo_label",
        "pseudo_label_ensemble",
        "must",
        "ueo",
        "infomax",
    ]
    blocks = out.split("domainnet/sketch")[1:]
    params = {r.split()[2]: b.split("hparams: ")[1].split("\n")[0].split() for r, b in zip(runs, blocks)}
    assert "epochs=5" in params["ueo"] and "epochs=5" in params["infomax"]
    for method, p in params.items():  # official, made concrete for the config's device (cuda)
        assert f"precision={get_method(method).official_precision}" in p, method
    assert "ensemble=1" in params["pseudo_label"] and "ensemble=16" in params["pseudo_label_ensemble"]
    assert "nesterov=True" in params["tent"] and "batch_size=1024" in params["must"]
    assert "randaugment=rand-m9-mstd0.5-inc1" in params["must"] and "crop_scale=[0.08,1.0]" in params["pseudo_label"]
    assert out.count("departures: none") == 7


def test_precision_choices_resolve_per_device():
    assert effective_precision("official", "fp16_weights", "cpu") == "fp32"
    assert effective_precision("official", "fp16_weights", "cuda") == "fp16_weights"
    assert effective_precision("official", "fp32", "cuda") == "fp32"
    assert effective_precision("bf16", "fp32", "cuda") == "bf16"
    for choice in ("fp16", "bf16"):
        with pytest.raises(PrecisionError, match=f"<method>.precision={choice} needs a CUDA device"):
            effective_precision(choice, "fp32", "cpu")
    with pytest.raises(PrecisionError, match="precision must be one of"):
        effective_precision("fp8", "fp32", "cpu")


def test_fp16_on_a_cpu_is_a_clear_error_naming_the_option(tmp_path: Path, capsys):
    argv = [
        "--methods",
        "ueo",
        "--domains",
        "sketch",
        "--seeds",
        "1",
        "--out",
        str(tmp_path),
        "--cfg-options",
        "ueo.precision=fp16",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "ueo.precision=fp16 needs a CUDA device" in err and "--cfg-options ueo.precision=fp32" in err
    assert not (tmp_path / "runs").exists()
    with pytest.raises(PrecisionError, match="ueo.precision=bf16"):
        get_method("ueo")(make_classifier("vit"), {"precision": "bf16"})


def test_official_fp16_weights_convert_as_clip_load_does():
    """Linear/conv/attention/projection weights fp16, norms fp32, the learnable context fp16."""
    model = make_classifier("vit")
    to_fp16_weights(model.clip)
    ctx = model.enable_prompt_learning(4, "a photo of a")
    v = model.visual
    assert v.conv1.weight.dtype == v.proj.dtype == model.clip.text_projection.dtype == torch.float16
    assert v.transformer.resblocks[0].attn.in_proj_weight.dtype == torch.float16
    assert v.ln_pre.weight.dtype == v.transformer.resblocks[0].ln_1.weight.dtype == torch.float32
    assert ctx.dtype == torch.float16 and model.input_dtype == torch.float16
    logits = model(make_data(model, 4).images.float() / 255)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    logits.softmax(-1).max(-1).values.sum().backward()
    assert ctx.grad.dtype == torch.float16 and v.ln_pre.weight.grad.dtype == torch.float32


def test_rrc_boxes_follow_torchvision_get_params():
    g = torch.Generator().manual_seed(0)
    sizes = torch.tensor([[32, 32]] * 4000 + [[16, 32]] * 4000)
    boxes = rrc_boxes(sizes, (0.08, 1.0), (3 / 4, 4 / 3), g)
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= sizes[:, 0]).all() and (left + w <= sizes[:, 1]).all()  # inside the valid image
    assert (h == torch.round(h)).all() and (w == torch.round(w)).all() and (h >= 1).all()
    area = (h * w / (sizes[:, 0] * sizes[:, 1])).numpy()
    assert 0.07 < area.min() and area.max() <= 1.0 and 0.4 < np.median(area[:4000]) < 0.6
    g = torch.Generator().manual_seed(0)
    narrow = rrc_boxes(torch.tensor([[32, 4]]), (0.99, 1.0), (3 / 4, 4 / 3), g)  # no try fits: centre crop
    assert narrow.tolist() == [[13.0, 0.0, 5.0, 4.0]]


def test_resize_then_random_crop_takes_a_square_of_the_short_side():
    g = torch.Generator().manual_seed(1)
    boxes = resize_crop_boxes(torch.tensor([[16, 32]] * 50 + [[32, 32]] * 5), 32, g)
    assert (boxes[:, 2] == 16).all() == False  # noqa: E712 (the square image keeps its size)
    assert (boxes[:50, 2:] == 16).all() and (boxes[50:] == torch.tensor([0.0, 0.0, 32.0, 32.0])).all()
    assert boxes[:50, 1].max() <= 16 and len(set(boxes[:50, 1].tolist())) > 3 and (boxes[:50, 0] == 0).all()


def test_crops_sample_the_whole_image_not_the_centre_crop():
    """A 2:1 image whose left and right thirds differ: whole-image crops see both, the centre view neither."""
    full = torch.zeros(1, 3, 32, 32)
    full[..., :16, :11] = 1.0  # valid region: 16 x 32 (h x w); red left third
    full[0, 2, :16, 21:] = 1.0  # blue right third
    full[..., 16:, :] = full[..., 15:16, :]  # edge padding below the valid rows
    box = torch.tensor([[0.0, 0.0, 16.0, 32.0]])
    whole = crop_resample(full, box, 32, None, "bilinear")
    assert whole[0, 0, :, :8].mean() > 0.9 and whole[0, 2, :, -8:].mean() > 0.9
    batch = ImageBatch(
        center=torch.zeros(8, 3, 32, 32, dtype=torch.uint8),
        full=(full * 255).to(torch.uint8).expand(8, -1, -1, -1),
        sizes=torch.tensor([[16, 32]] * 8),
    )
    crops = Augment("rrc", scale=(0.9, 1.0), flip=False)(batch, torch.Generator().manual_seed(0))
    assert crops[:, 0].amax(dim=(1, 2)).min() > 0.9 or crops[:, 2].amax(dim=(1, 2)).min() > 0.9
    assert Augment("none")(batch, torch.Generator()).abs().sum() == 0


def test_full_view_of_a_file_keeps_the_whole_image(tmp_path: Path):
    from PIL import Image

    from benchmark.data.images import read_image

    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (30, 0, 40, 20))
    path = tmp_path / "wide.png"
    img.save(path)
    full, h, w = read_image(path, 16, "full")
    center, _, _ = read_image(path, 16)
    assert (h, w) == (8, 16) and full.shape == (3, 16, 16)
    assert full[2, :8, 13:].float().mean() > 200  # the blue right quarter is in the full view
    assert center[2].float().mean() < 50  # but cut off by the centre crop
    assert torch.equal(full[:, 8:], full[:, 7:8].expand(-1, 8, -1))  # edge padding


def test_runner_loads_the_full_view_for_augmenting_methods(tmp_path: Path):
    from benchmark.core.records import load_records

    assert (
        main(
            [
                "--methods",
                "ueo",
                "zero_shot",
                "--domains",
                "sketch",
                "--seeds",
                "1",
                "--out",
                str(tmp_path),
                "--cfg-options",
                "ueo.epochs=1",
            ]
        )
        == 0
    )
    recs = {r["spec"]["method"]: r for r in load_records(tmp_path)}
    views = recs["ueo"]["execution"]["views"]["images"]
    assert views["kind"] == "rrc" and views["scale"] == [0.5, 1.0] and views["interpolation"] == "bicubic"
    assert recs["zero_shot"]["execution"]["views"] == {}
