"""Does UEO's official fp16 prompt context move at lr 1e-4? Measured on the embedded benchmark, on a CPU.

The official UEO code trains an fp16 context with plain SGD (no fp32 master copy, no loss
scaling; tim-learn/UEO demo.py:22, 32-33, 450). An update smaller than half the spacing of fp16
numbers at the parameter's value rounds away. This script emulates that on a CPU (the harness
itself only runs fp32 there): the tiny model is converted as ``clip.load`` converts on a GPU
(``benchmark.model.precision.to_fp16_weights``), so the context is an fp16 tensor updated in fp16.

    python benchmarks/fp16_context.py [--domain sketch] [--epochs 5] [--lr 1e-4]

Reports, for fp32 and the emulated official fp16: the share of context entries whose first update
is below half an fp16 step (it rounds away), the share changed after the first step and after
training, the relative change of the context, and acc_pc / AUROC (msp_cos) on the test set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.adapt.unlabeled import UnlabeledData  # noqa: E402
from benchmark.data import load_split  # noqa: E402
from benchmark.model.clip import ClipClassifier, load_clip  # noqa: E402
from benchmark.model.precision import to_fp16_weights  # noqa: E402
from benchmark.registry import get_method  # noqa: E402
from benchmark.run.evaluate import fit_thresholds, predict_set, score_predictions  # noqa: E402


def half_ulp(x: torch.Tensor) -> torch.Tensor:
    """Half the distance from each fp16 value to the next larger-magnitude fp16 value."""
    h = x.half()
    nxt = torch.nextafter(h.float().abs().half(), torch.tensor(float("inf"), dtype=torch.float16))
    return (nxt.float() - h.float().abs()) / 2


def run(split, fp16: bool, epochs: int, lr: float, seed: int) -> dict:
    torch.manual_seed(seed)
    model = ClipClassifier(load_clip("clipbench-tiny", "embedded"), split.classnames)
    if fp16:
        to_fp16_weights(model.clip)
    ueo = get_method("ueo")(model, {"epochs": epochs, "lr": lr, "precision": "fp32"}, seed=seed)
    ctx = model.prompt.ctx
    start = ctx.detach().float().clone()
    data = UnlabeledData(
        split.adapt.images,
        seed=seed,
        full=split.adapt.images,
        sizes=torch.full((len(split.adapt.images), 2), split.adapt.images.shape[-1]),
    )
    ueo.before_adapt(data)
    batch = next(data.batches(64, shuffle=True, views=ueo.views(), generator=torch.Generator().manual_seed(seed)))
    loss = ueo.loss(batch)
    ueo.optimizer.zero_grad()
    loss.backward()
    update = (lr * ctx.grad.float()).abs()
    below = float((update < half_ulp(start)).float().mean())
    ueo.optimizer.step()
    first = float((ctx.detach().float() != start).float().mean())
    ueo.adapt(data)
    moved = ctx.detach().float()
    preds = predict_set(ueo, split.test.images, seed=seed).result()
    adapt = predict_set(ueo, split.adapt.images, seed=seed).result()
    metrics = score_predictions(preds, split.test.labels, split.num_known, fit_thresholds(adapt))
    return {
        "below_half_ulp": below,
        "changed_first_step": first,
        "changed_after": float((moved != start).float().mean()),
        "relative_change": float((moved - start).norm() / start.norm()),
        "acc_pc": metrics["acc_pc"],
        "auroc": metrics["scores"]["msp_cos"]["auroc"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--domain", default="sketch")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    split = load_split("synthetic", args.domain, "oda", resolution=32)
    rows = {name: run(split, fp16, args.epochs, args.lr, args.seed) for name, fp16 in (("fp32", False), ("fp16", True))}
    print(f"UEO on synthetic/{args.domain}/oda, lr {args.lr:g}, {args.epochs} epochs, seed {args.seed}")
    print(
        "| context | first update < half an fp16 step | changed after step 1 | changed after training "
        "| relative change | acc_pc | auroc |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {100 * r['below_half_ulp']:.1f}% | {100 * r['changed_first_step']:.1f}% | "
            f"{100 * r['changed_after']:.1f}% | {r['relative_change']:.2e} | {r['acc_pc']:.2f} | {r['auroc']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
