"""The GPU check: throughput, memory and precision effects, in one run on a CUDA machine.

    python benchmarks/gpu_check.py --out gpu_check/            # on a GPU machine (about 5 minutes)
    python benchmarks/gpu_check.py --device cpu --smoke        # checks the script itself on a CPU

Measures, with nothing downloaded (ViT-B-16 from random initialisation):

1. UEO adaptation (prompt context + norm affines, batch 64, 224 px) and zero-shot evaluation
   throughput in images/s and peak GPU memory for each precision: ``fp32``, ``bf16``, ``fp16``
   (autocast + GradScaler) and ``official`` (UEO's: fp16 weights, fp16 context, no autocast);
2. MUST at its recipe batch of 1024 (fp32, its official precision): images/s, peak memory, or
   the out-of-memory error;
3. on the embedded benchmark, the metrics of zero-shot, UEO and MUST under ``fp32``, ``bf16`` and
   ``official``, and their differences from ``fp32`` (the same seeds, so the same images and order).

Writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmark.core.records import load_records  # noqa: E402
from benchmark.model.clip import ClipClassifier, load_clip  # noqa: E402
from benchmark.registry import get_method  # noqa: E402

CLASSES = [f"class {i}" for i in range(65)]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_mib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def throughput(method: str, precision: str, device: str, batch: int, steps: int, size: int) -> dict:
    """Training images/s of ``steps`` steps of ``method`` and evaluation images/s, with peak memory."""
    _reset_peak(device)
    model = ClipClassifier(load_clip("ViT-B-16", "none", device), CLASSES).to(device)
    hp = {"precision": precision, "batch_size": batch, "epochs": 1}
    adapter = get_method(method)(model, hp, seed=0)
    x = torch.rand(batch, 3, size, size, device=device)
    batch_dict = {"index": torch.arange(batch, device=device), "images": x, "images_strong": x}
    if method == "ueo":
        adapter.weights = torch.full((batch,), 1.0 / len(CLASSES), device=device)
    if method == "must":
        adapter.before_adapt(type("D", (), {"__len__": lambda s: batch})())
        adapter.before_epoch(0, None)
    out: dict = {"method": method, "precision": precision, "effective": adapter.precision, "batch": batch}
    try:
        for i in range(steps + 2):
            if i == 2:
                _sync(device)
                t = time.perf_counter()
            with adapter.autocast():
                loss = adapter.loss(batch_dict)
            adapter.step(loss)
        _sync(device)
        out["train_img_s"] = batch * steps / (time.perf_counter() - t)
        with torch.no_grad():
            for i in range(steps + 2):
                if i == 2:
                    _sync(device)
                    t = time.perf_counter()
                with adapter.autocast():
                    adapter.predict(x)
            _sync(device)
        out["eval_img_s"] = batch * steps / (time.perf_counter() - t)
    except torch.OutOfMemoryError as err:
        out["error"] = f"out of memory: {str(err).splitlines()[0]}"
    out["peak_mib"] = _peak_mib(device)
    del adapter, model
    return out


def embedded_metrics(device: str, seeds: list[int], out: Path, precisions: list[str]) -> dict:
    """Metrics of zero_shot, ueo and must on the embedded benchmark under each precision."""
    results: dict = {}
    for precision in precisions:
        run_out = out / f"embedded_{precision}"
        methods = ["zero_shot", "ueo", "must"]
        options = [f"{m}.precision={precision}" for m in methods]
        cmd = [
            sys.executable,
            str(REPO / "run_bench.py"),
            "--methods",
            *methods,
            "--device",
            device,
            "--seeds",
            *map(str, seeds),
            "--out",
            str(run_out),
            "--cfg-options",
            *options,
        ]
        status = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if status.returncode != 0:
            results[precision] = {"error": status.stderr[-2000:]}
            continue
        table: dict = {}
        for rec in load_records(run_out):
            key = f"{rec['spec']['method']}/{rec['spec']['domain']}/{rec['spec']['seed']}"
            m = rec["metrics"]["test"]
            table[key] = {
                "acc_pc": m["acc_pc"],
                **{k: m["scores"]["msp_cos"][k] for k in ("auroc", "hm_accpc_auroc")},
                "effective": rec["precision"],
            }
        results[precision] = table
    base = results.get("fp32", {})
    diffs: dict = {}
    for precision, table in results.items():
        if precision == "fp32" or "error" in table:
            continue
        for metric in ("acc_pc", "auroc", "hm_accpc_auroc"):
            per_method: dict = {}
            for key, row in table.items():
                if key in base:
                    per_method.setdefault(key.split("/")[0], []).append(row[metric] - base[key][metric])
            diffs[f"{precision}-fp32/{metric}"] = {
                m: {"mean": sum(v) / len(v), "max_abs": max(abs(x) for x in v), "n": len(v)}
                for m, v in per_method.items()
            }
    return {"runs": results, "differences": diffs}


def markdown(report: dict) -> str:
    lines = [
        "# GPU check",
        "",
        f"Device: {report['device_name']}; torch {report['torch']}.",
        "",
        "| method | precision | effective | batch | train img/s | eval img/s | peak MiB | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["throughput"]:
        fmt = lambda v: f"{v:.0f}" if isinstance(v, (int, float)) else "n/a"  # noqa: E731
        lines.append(
            f"| {r['method']} | {r['precision']} | {r['effective']} | {r['batch']} | {fmt(r.get('train_img_s'))} "
            f"| {fmt(r.get('eval_img_s'))} | {fmt(r.get('peak_mib'))} | {r.get('error', '')} |"
        )
    lines += [
        "",
        "Embedded benchmark, differences from fp32 (points; mean and max |diff| over domains x seeds):",
        "",
        "| comparison | method | mean | max abs | n |",
        "|---|---|---|---|---|",
    ]
    for key, per_method in report["embedded"]["differences"].items():
        for method, d in per_method.items():
            lines.append(f"| {key} | {method} | {d['mean']:+.2f} | {d['max_abs']:.2f} | {d['n']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, default=Path("gpu_check"))
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--smoke", action="store_true", help="tiny sizes and fp32 only: checks the script on a CPU")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or --device cpu --smoke to check the script", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    precisions = ["fp32"] if args.smoke else ["fp32", "bf16", "fp16", "official"]
    steps, batch, must_batch = (1, 2, 4) if args.smoke else (args.steps, 64, 1024)
    report: dict = {
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "throughput": [],
    }
    for precision in precisions:
        report["throughput"].append(throughput("ueo", precision, args.device, batch, steps, 224))
        print(json.dumps(report["throughput"][-1]), flush=True)
    report["throughput"].append(throughput("must", "official", args.device, must_batch, max(1, steps // 4), 224))
    print(json.dumps(report["throughput"][-1]), flush=True)
    embedded_precisions = ["fp32"] if args.smoke else ["fp32", "bf16", "official"]
    report["embedded"] = embedded_metrics(
        args.device, args.seeds[:1] if args.smoke else args.seeds, args.out, embedded_precisions
    )
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
