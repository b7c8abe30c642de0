"""Images per second of every method, on the embedded model and on ViT-B-16 (random init), on this CPU.

    python benchmarks/method_speed.py [--models embedded vit] [--images 64] [--vit-images 16]

Each method adapts on (transductive) or streams through (online, episodic) the images of the
synthetic ``photo`` domain at the model's resolution, with its default hyper-parameters (the
embedded benchmark's budget on the tiny model; one epoch and batches of at most 32 on ViT-B-16,
MUST at batch 8), and the time per image is reported: for transductive methods one epoch of
adaptation plus the prediction of the same images, for online and episodic ones one pass over
the stream. Nothing is downloaded (ViT-B-16 is randomly initialised).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.adapt.unlabeled import UnlabeledData  # noqa: E402
from benchmark.data import get_spec, load_split  # noqa: E402
from benchmark.model.clip import TEMPLATE_SETS, ClipClassifier, load_clip  # noqa: E402
from benchmark.registry import get_method, method_names  # noqa: E402
from benchmark.run.evaluate import predict_set  # noqa: E402

MODELS = {"embedded": ("clipbench-tiny", "embedded"), "vit": ("ViT-B-16", "none")}


def hparams(method: str, model: str) -> dict:
    """The embedded budget on the tiny model; on ViT-B-16 one epoch, batches of at most 32 (MUST: 8)."""
    cls = get_method(method)
    if model == "clipbench-tiny":
        over = get_spec("synthetic").overrides.get(method, {})
        return cls.resolve_hparams({k: v for k, v in over.items() if k in cls.hparam_defaults()})
    hp = cls.resolve_hparams({})
    small = {"epochs": 1}
    if "batch_size" in hp:
        small["batch_size"] = min(hp["batch_size"], 8 if method == "must" else 32)
    if method == "rosita":
        small.pop("batch_size")
    return cls.resolve_hparams({k: v for k, v in small.items() if k in hp})


def images_per_second(method: str, model_name: str, pretrained: str, n: int) -> float:
    """Images per second of one epoch (or one pass) of ``method`` on ``n`` images."""
    loaded = load_clip(model_name, pretrained)
    split = load_split("synthetic", "photo", "cda", resolution=loaded.image_size, full=True)
    rows = torch.arange(n) % len(split.adapt.images)
    images, full = split.adapt.images[rows], split.adapt.full[rows]
    sizes = np.asarray(split.adapt.sizes)[rows.numpy()]
    hp = hparams(method, model_name)
    cls = get_method(method)
    model = ClipClassifier(loaded, split.classnames, TEMPLATE_SETS[hp["prompts"]])
    adapter = cls(model, hp, seed=0)
    data = UnlabeledData(images, full=full, sizes=sizes, seed=0)
    start = time.perf_counter()
    if adapter.regime in ("online", "episodic"):
        for _ in adapter.stream(data):
            pass
    else:
        adapter.adapt(data)
        predict_set(adapter, images)
    epochs = hp.get("epochs", 1) if adapter.regime == "transductive" and adapter.trains else 1
    return n * epochs / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["embedded", "vit"])
    p.add_argument("--images", type=int, default=400, help="images per method on the tiny model")
    p.add_argument("--vit-images", type=int, default=16, help="images per method on ViT-B-16")
    p.add_argument("--methods", nargs="+", default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    methods = args.methods or method_names()
    print(f"CPU threads: {torch.get_num_threads()}")
    print("| method | regime | " + " | ".join(f"{m} img/s" for m in args.models) + " |")
    print("|---|---|" + "---|" * len(args.models))
    for method in methods:
        cells = []
        for key in args.models:
            name, pretrained = MODELS[key]
            n = args.images if key == "embedded" else args.vit_images
            if get_method(method).requires_vit and name != "ViT-B-16" and "tiny" not in name:
                cells.append("n/a")
                continue
            cells.append(f"{images_per_second(method, name, pretrained, n):.1f}")
        print(f"| {method} | {get_method(method).regimes[0]} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
