"""No silent misconfiguration: option values reach methods exactly, typos in data set specs and configs
are errors, the device kind is part of a run's identity, pre-flight stops a sweep before any record,
and hyper-parameters are checked against their domains."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmark.adapt.hparams import HyperParameterError
from benchmark.cli import main, parse_value
from benchmark.core.paths import DATASETS_DIR
from benchmark.core.spec import RunSpec
from benchmark.data import catalog
from benchmark.registry import get_method
from benchmark.run.sweep import SweepError, SweepRequest, build_sweep

FAST = ["--datasets", "synthetic", "--domains", "photo", "--seeds", "1"]


def _sweep(**kw) -> list[RunSpec]:
    req = dict(
        methods=["ueo"],
        datasets=["synthetic"],
        seeds=[1],
        model="clipbench-tiny",
        pretrained="embedded",
        domains=["photo"],
    )
    req.update(kw)
    return build_sweep(SweepRequest(**req))


@pytest.mark.parametrize(
    "text, value",
    [
        ("a photo of a", "a photo of a"),
        ("'a, quoted, string'", "a, quoted, string"),
        ("[1e-4,1e-3]", [1e-4, 1e-3]),
        ("[0.5, 1.0]", [0.5, 1.0]),
        ("1e-4", 1e-4),
        ("3", 3),
        ("true", True),
        ("1,2", [1, 2]),
        ("[[0.08,1.0],[0.5,1.0]]", [[0.08, 1.0], [0.5, 1.0]]),
    ],
)
def test_option_values_parse_as_written(text, value):
    assert parse_value(text) == value


def test_a_context_with_spaces_reaches_the_adapter_with_its_four_tokens(tmp_path, capsys):
    assert (
        main(
            [
                *FAST,
                "--methods",
                "ueo",
                "--cfg-options",
                "ueo.ctx_init=a photo of a",
                "--dry-run",
                "--show-hparams",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert "ctx_init='a photo of a'" in capsys.readouterr().out
    (spec,) = _sweep(overrides={"ueo": {"ctx_init": parse_value("a photo of a")}})
    assert spec.hparams["ctx_init"] == "a photo of a" and len(spec.hparams["ctx_init"].split()) == 4


@pytest.fixture
def spec_copy(tmp_path, monkeypatch):
    """A temporary copy of the data set folders whose synthetic dataset.yaml a test may edit."""
    root = tmp_path / "datasets"
    shutil.copytree(DATASETS_DIR, root, ignore=shutil.ignore_patterns("*.pt"))
    monkeypatch.setattr(catalog, "DATASETS_DIR", root)
    catalog.spec_files.__defaults__ = (root,)
    yield root / "synthetic" / "dataset.yaml"
    catalog.spec_files.__defaults__ = (DATASETS_DIR,)


@pytest.mark.parametrize(
    "section, edit, needles",
    [
        ("overrides", ("  ueo: {epochs: 3}", "  ueo: {epoch: 3}"), ["epoch", "overrides.ueo", "valid: ", "epochs"]),
        ("overrides", ("  ueo: {epochs: 3}", "  uoe: {epochs: 3}"), ["unknown method 'uoe'", "zero_shot"]),
        ("grids", ("  ueo: {lr:", "  ueo: {lrr:"), ["grids.ueo", "'lrr'"]),
    ],
)
def test_a_typo_in_dataset_yaml_exits_2_naming_file_method_and_key(spec_copy, tmp_path, capsys, section, edit, needles):
    text = spec_copy.read_text()
    assert edit[0] in text
    spec_copy.write_text(text.replace(edit[0], edit[1], 1))
    assert main([*FAST, "--methods", "ueo", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(spec_copy) in err and section in err
    for needle in needles:
        assert needle in err
    assert not (tmp_path / "out" / "runs").exists()


def test_a_config_with_an_unknown_method_or_key_exits_2_naming_the_file(tmp_path, capsys):
    cfg = tmp_path / "sweep.py"
    for options, needle in (({"ueo.epoch": 3}, "ueo.epoch"), ({"uoe.epochs": 3}, "uoe.epochs")):
        cfg.write_text(f"methods = ['ueo']\ncfg_options = {options!r}\n")
        assert main(["--config", str(cfg), "--dry-run", "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert str(cfg) in err and needle in err


def test_device_kind_is_part_of_the_identity_and_precision_is_concrete(monkeypatch):
    import benchmark.model.precision as prec

    (cpu,) = _sweep()
    monkeypatch.setattr(prec.torch.cuda, "is_available", lambda: True)
    (gpu,) = _sweep(device="cuda:0")
    assert cpu.device == "cpu" and gpu.device == "cuda" and cpu.hash != gpu.hash
    assert cpu.hparams["precision"] == "fp32" and gpu.hparams["precision"] == "fp16_weights"  # UEO's official
    assert "precision" not in cpu.departures and cpu.departures == gpu.departures  # official is the recipe


def test_cpu_and_gpu_records_land_in_separate_table_rows(tmp_path):
    from benchmark.report.frame import TABLE_KEY, records_frame

    recs = []
    for device in ("cpu", "cuda"):
        spec = {
            "method": "ueo",
            "dataset": "synthetic",
            "domain": "photo",
            "setting": "oda",
            "protocol": "ueo",
            "seed": 1,
            "model": "m",
            "pretrained": "p",
            "device": device,
            "hparams": {},
        }
        recs.append(
            (
                tmp_path / device,
                {
                    "spec": spec,
                    "status": "done",
                    "label": "ueo",
                    "precision": "fp32",
                    "metrics": {"test": {"acc": 1.0}},
                    "headline_score": "msp_cos",
                },
            )
        )
    df = records_frame(recs)
    assert "device" in TABLE_KEY and df.groupby(TABLE_KEY).ngroups == 2


def test_preflight_missing_weights_file_exits_2_before_any_record(tmp_path, capsys):
    assert (
        main(
            [
                *FAST,
                "--methods",
                "zero_shot",
                "--model",
                "ViT-B-16",
                "--pretrained",
                str(tmp_path / "weights.pt"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    assert str(tmp_path / "weights.pt") in capsys.readouterr().err
    assert not (tmp_path / "out" / "runs").exists()


def test_preflight_unloadable_tag_exits_2_once_with_the_offline_alternative(tmp_path, capsys, monkeypatch):
    import benchmark.model.clip as clip

    def offline(*args, **kwargs):
        raise OSError("could not reach the hub (offline)")

    monkeypatch.setattr(clip.open_clip, "create_model", offline)
    assert (
        main(
            [
                *FAST,
                "--methods",
                "zero_shot",
                "tent",
                "--model",
                "ViT-B-16",
                "--pretrained",
                "openai",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("cannot load the weights 'openai' of ViT-B-16") == 1 and "--pretrained /path/to/" in err
    assert not (tmp_path / "out" / "runs").exists()


def test_preflight_missing_domain_exits_2_naming_the_path(tmp_path, capsys):
    root = tmp_path / "data" / "office_home" / "Art" / "Alarm_Clock"
    root.mkdir(parents=True)
    assert (
        main(
            [
                "--datasets",
                "office_home",
                "--domains",
                "Art",
                "Clipart",
                "--methods",
                "zero_shot",
                "--seeds",
                "1",
                "--data-root",
                str(tmp_path / "data"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "Clipart" in err and str(tmp_path / "data") in err and "nothing was run" in err
    assert not (tmp_path / "out" / "runs").exists()


@pytest.mark.parametrize(
    "option, needle",
    [
        ("ueo.lr=[]", "ueo.lr"),
        ("ueo.epochs=-1", "ueo.epochs"),
        ("ueo.batch_size=0", "ueo.batch_size"),
        ("tent.batch_size=-3", "tent.batch_size"),
        ("ueo.lr=-1", "ueo.lr"),
        ("ueo.lr=None", "ueo.lr"),
        ("ueo.lr=", "ueo.lr"),
        ("ueo.crop_scale=[]", "ueo.crop_scale"),
        ("ueo.crop_scale=[0.5,2.0]", "ueo.crop_scale"),
        ("tpt.lr=1e-3", "tpt"),  # a method not in the sweep
    ],
)
def test_nonsense_values_exit_2_naming_the_key(tmp_path, capsys, option, needle):
    assert main([*FAST, "--methods", "ueo", "tent", "--cfg-options", option, "--out", str(tmp_path)]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_derived_values_are_resolved_once_and_given_keys_win():
    tent, must = get_method("tent"), get_method("must")
    cifar = tent.resolve_hparams({"recipe": "cifar"})
    assert cifar["optimizer"] == "adam" and cifar["nesterov"] is False
    assert tent.resolve_hparams({"recipe": "cifar", "lr": 0.5})["lr"] == 0.5
    assert must.resolve_hparams({"batch_size": 512})["lr"] == pytest.approx(must.resolve_hparams({})["lr"] * 512 / 1024)
    assert must.resolve_hparams({"batch_size": 512, "lr": 1e-3})["lr"] == 1e-3
    with pytest.raises(HyperParameterError, match="missing: epochs"):
        get_method("ueo").check_resolved(
            {k: v for k, v in get_method("ueo").hparam_defaults().items() if k != "epochs"}
        )


def test_an_empty_grid_is_an_error():
    with pytest.raises(SweepError, match=r"ueo.lr = \[\]"):
        _sweep(overrides={"ueo": {"lr": []}})


def test_report_only_imports_no_torch(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out"
    shutil.copytree(Path(__file__).parent / "golden" / "runs", out / "runs")
    code = (
        "import sys; from benchmark.cli import main; rc = main(['--report-only', '--out', sys.argv[1]]); "
        "print('TORCH', 'torch' in sys.modules, rc)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
        timeout=300,
    )
    assert res.stdout.strip().splitlines()[-1] == "TORCH False 0", res.stderr[-2000:]
