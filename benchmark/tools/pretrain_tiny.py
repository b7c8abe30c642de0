"""Pre-train the embedded tiny CLIP (``clipbench-tiny``) on every style of the synthetic benchmark.

Nothing can be downloaded where clipbench runs, so the benchmark ships a small open_clip ViT whose
weights this script produces: it renders all 20 classes of ``benchmark.data.synthetic`` in the
four styles (``STYLES``, unshifted, with a seed the evaluation data never uses), pairs them with
captions, and trains image and text towers contrastively as CLIP does. As in CLIP's web data,
captions often name the style ("a sketch of a star.") and otherwise come from style-neutral
templates (CLIP's 80 ImageNet templates among them, so every template ensemble's words are
trained). The benchmark's domains are shifted variants of these styles the model never saw.

    python -m benchmark.tools.pretrain_tiny                  # train, save, print the zero-shot table
    python -m benchmark.tools.pretrain_tiny --evaluate-only  # zero-shot table of the committed weights
    python -m benchmark.tools.pretrain_tiny --timing         # CPU cost of the image encoder

The defaults (40 epochs of 10,000 images: 125 per class and style, batch 128: 3120 steps) take
about 6 minutes on two idle CPU cores. Training is seeded and deterministic on CPU for a given
machine and thread count (a rerun gave identical tensors); the weights
are saved as a float16 state dict that ``open_clip.create_model_and_transforms(...,
pretrained=<file>)`` loads into the float32 model.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from tqdm import tqdm

from benchmark.core.paths import DATASETS_DIR
from benchmark.data.synthetic import CLASSES, DOMAINS, NUM_KNOWN, STYLES, render, render_style

MODEL_NAME = "clipbench-tiny"
CONFIG_PATH = DATASETS_DIR / "synthetic" / f"{MODEL_NAME}.json"
WEIGHTS_PATH = DATASETS_DIR / "synthetic" / f"{MODEL_NAME}.pt"

PRETRAIN_SEED = 12345
"""Seed of the pre-training images; the benchmark's evaluation data uses other seeds (0)."""

ZERO_SHOT_TEMPLATE = "a photo of a {}."
STYLE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "photo": ("a photo of a {}.", "a photo of the {}.", "a close-up photo of a {}.", "a good photo of a {}."),
    "sketch": ("a sketch of a {}.", "a drawing of a {}.", "a pencil sketch of a {}.", "a doodle of a {}."),
    "painting": ("a painting of a {}.", "an oil painting of a {}.", "art of the {}.", "a watercolor of a {}."),
    "clipart": ("a clipart of a {}.", "an illustration of a {}.", "a cartoon {}.", "an icon of a {}."),
}
"""Captions that name an image's style."""
STYLE_WORDS: dict[str, tuple[str, ...]] = {
    "photo": ("photo", "itap"),
    "sketch": ("sketch", "drawing", "doodle"),
    "painting": ("painting", "art of", "tattoo"),
    "clipart": (
        "rendering",
        "cartoon",
        "plushie",
        "toy",
        "origami",
        "video game",
        "plastic",
        "graffiti",
        "embroidered",
        "sculpture",
    ),
}
"""Words that tie one of CLIP's ImageNet templates to a style (the others are style-neutral)."""
NEUTRAL_TEMPLATES = ("a {}.", "an image of a {}.", "a picture of a {}.", "a {} shape.")
STYLE_CAPTION_SHARE = 0.6
"""Share of captions that name the image's style; the rest are style-neutral."""
NOISE_PREFIX_SHARE = 0.15
NOISE_PREFIX_MAX = 16
"""Share of captions that start with 1-16 random tokens (web captions are noisy): the text encoder
learns to find the class name behind any prefix, as a learnable prompt context puts one there."""


def noisy_prefix(tokens: torch.Tensor, gen: torch.Generator, sot: int, eot: int) -> torch.Tensor:
    """``tokens`` (N, L) with 1-``NOISE_PREFIX_MAX`` random vocabulary tokens after the start token of a
    ``NOISE_PREFIX_SHARE`` of the rows; the caption is cut, if needed, to keep its end token last."""
    out = tokens.clone()
    length = tokens.shape[1]
    for row in torch.nonzero(torch.rand(len(tokens), generator=gen) < NOISE_PREFIX_SHARE).flatten().tolist():
        ids = tokens[row][tokens[row] > 0]
        body = ids[1:-1]
        k = int(torch.randint(1, NOISE_PREFIX_MAX + 1, (1,), generator=gen))
        noise = torch.randint(256, eot - 1, (k,), generator=gen)
        seq = torch.cat([ids[:1], noise, body])[: length - 1]
        seq = torch.cat([seq, torch.tensor([eot])])
        out[row] = 0
        out[row, : len(seq)] = seq
    return out


def caption_templates() -> tuple[dict[str, list[str]], list[str]]:
    """Per style the templates that name it, and the style-neutral templates.

    CLIP's 80 ImageNet templates (``benchmark.model.IMAGENET_TEMPLATES``) are sorted by
    ``STYLE_WORDS`` into a style (e.g. "a sketch of the {}.") or the neutral set.
    """
    from benchmark.model.clip import IMAGENET_TEMPLATES

    styled = {s: list(t) for s, t in STYLE_TEMPLATES.items()}
    neutral = list(NEUTRAL_TEMPLATES)
    for template in IMAGENET_TEMPLATES:
        style = next((s for s, words in STYLE_WORDS.items() if any(w in template for w in words)), None)
        target = styled[style] if style else neutral
        if template not in target:
            target.append(template)
    return styled, neutral


def register_config() -> None:
    """Make ``clipbench-tiny`` known to open_clip (idempotent)."""
    if MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_PATH)


def build_model(weights: str | Path | None = WEIGHTS_PATH) -> tuple[torch.nn.Module, object, dict]:
    """The tiny CLIP in eval mode, its BPE tokenizer and its preprocess config (size, mean, std).

    ``weights=None`` gives a randomly initialised model (the starting point of pre-training).
    """
    register_config()
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        model, _, _ = open_clip.create_model_and_transforms(
            MODEL_NAME, pretrained=None if weights is None else str(weights)
        )
    finally:
        logging.getLogger().setLevel(level)
    model.eval()
    return model, open_clip.get_tokenizer(MODEL_NAME), dict(model.visual.preprocess_cfg)


def to_model_input(images: np.ndarray, cfg: dict) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> normalised float ``(N, 3, S, S)``: bicubic antialiased resize to
    the model's size, rounded back to uint8 as the harness's data pipeline does, then mean/std."""
    size = cfg["size"][0] if isinstance(cfg["size"], (tuple, list)) else cfg["size"]
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return (x / 255.0 - mean) / std


def _augment(x: torch.Tensor, cfg: dict, gen: torch.Generator) -> torch.Tensor:
    """Light augmentation of normalised images: random shift (+-2 px), rescale, mirror, small
    brightness/contrast jitter, saturation jitter (grey for 20%); kept mild so that the other
    styles stay out of distribution."""
    n = x.shape[0]
    u = torch.rand(n, 8, generator=gen)
    scale = 0.9 + 0.2 * u[:, 0]
    flip = torch.where(u[:, 1] < 0.5, -1.0, 1.0)
    shift = (u[:, 2:4] - 0.5) * (4.0 / x.shape[-1]) * 2.0
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale * flip
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    pix = x * std + mean
    contrast = (0.9 + 0.2 * u[:, 4]).view(n, 1, 1, 1)
    bright = (0.1 * (u[:, 5] - 0.5)).view(n, 1, 1, 1)
    mu = pix.mean(dim=(1, 2, 3), keepdim=True)
    pix = ((pix - mu) * contrast + mu + bright).clamp(0, 1)
    gray = pix.mean(dim=1, keepdim=True)
    saturation = torch.where(u[:, 6] < 0.2, 0.0, 0.7 + 0.6 * u[:, 7]).view(n, 1, 1, 1)
    pix = (gray + (pix - gray) * saturation).clamp(0, 1)
    return (pix - mean) / std


def contrastive_loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: torch.Tensor,
    styles: torch.Tensor | None = None,
    caption_styles: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of (image, caption) pairs whose captions share classes.

    Captions are class-determined, so a batch holds many pairs of one class; they count as
    positives of each other (targets spread evenly over them) instead of as false negatives. A
    caption that names a style (``caption_styles >= 0``) is a positive only for images of that
    style, so style words carry meaning ("a sketch of a star" fits a sketched star, not a photo).
    """
    logits = logit_scale.exp() * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()
    pos = labels[:, None] == labels[None, :]
    if styles is not None and caption_styles is not None:
        pos &= (caption_styles[None, :] < 0) | (caption_styles[None, :] == styles[:, None])
    pos = pos.float()
    loss_i = -((pos / pos.sum(dim=1, keepdim=True)) * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    pos_t = pos.t()
    loss_t = -((pos_t / pos_t.sum(dim=1, keepdim=True)) * F.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
    return 0.5 * (loss_i + loss_t)


def pretrain(epochs: int, seed: int, n_per_class: int, batch_size: int, lr: float) -> torch.nn.Module:
    """Train the tiny CLIP from scratch on source-style images of all classes; returns it in eval mode."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _pretrain(epochs, seed, n_per_class, batch_size, lr)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _pretrain(epochs: int, seed: int, n_per_class: int, batch_size: int, lr: float) -> torch.nn.Module:
    """The training loop of ``pretrain`` (which pins deterministic algorithms around it)."""
    torch.manual_seed(seed)
    model, tokenizer, cfg = build_model(None)
    with torch.no_grad():
        # CLIP's learnable scale only reaches its clamp (100) after far more steps than this
        # schedule has; starting there calibrates cosines for the benchmark's 100 * cos logits.
        model.logit_scale.fill_(math.log(100))
    parts = [render_style(style, n_per_class, PRETRAIN_SEED, 64, stream=i) for i, style in enumerate(STYLES)]
    data = torch.cat([to_model_input(images, cfg) for images, _ in parts])
    targets = torch.cat([torch.from_numpy(labels) for _, labels in parts])
    style_of = torch.cat([torch.full((len(labels),), i) for i, (_, labels) in enumerate(parts)])
    styled, neutral = caption_templates()
    templates = [t for style in STYLES for t in styled[style]] + neutral
    first = torch.tensor([0] + list(np.cumsum([len(styled[s]) for s in STYLES]))[:-1])
    count = torch.tensor([len(styled[s]) for s in STYLES])
    tokens = tokenizer([t.format(c) for t in templates for c in CLASSES])
    sot, eot = int(tokens[0, 0]), int(tokens[0][tokens[0] > 0][-1])
    n_cls = len(CLASSES)
    n_styled = int(count.sum())

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embedding" in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98)
    )
    steps_per_epoch = len(data) // batch_size
    total = epochs * steps_per_epoch
    warmup = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))),
    )
    gen = torch.Generator().manual_seed(seed)
    model.train()
    bar = tqdm(total=total, desc="pretrain", unit="step")
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            y = targets[idx]
            u = torch.rand(len(idx), generator=gen)
            pick = torch.rand(len(idx), generator=gen)
            styled_t = first[style_of[idx]] + (pick * count[style_of[idx]]).long()
            neutral_t = n_styled + (pick * len(neutral)).long().clamp(max=len(neutral) - 1)
            named = u < STYLE_CAPTION_SHARE
            template = torch.where(named, styled_t, neutral_t)
            caption = template * n_cls + y
            txt = model.encode_text(noisy_prefix(tokens[caption], gen, sot, eot))
            img = model.encode_image(_augment(data[idx], cfg, gen))
            loss = contrastive_loss(
                img, txt, y, model.logit_scale, style_of[idx], torch.where(named, style_of[idx], -1)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
    bar.close()
    model.eval()
    return model


def save_fp16(model: torch.nn.Module, path: Path) -> None:
    """Save the state dict with floating tensors in float16 (half the bytes; loads into fp32)."""
    state = {k: (v.half() if v.is_floating_point() else v).clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve from ranks (ties share their mean rank); positives should score higher."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores))
    start = 0
    while start < len(scores):
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = 0.5 * (start + end) + 1
        start = end + 1
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@torch.no_grad()
def zero_shot_table(
    model: torch.nn.Module, tokenizer: object, cfg: dict, n_per_class: int = 20, seeds: tuple[int, ...] = (0, 1, 2)
) -> list[dict[str, float | str]]:
    """Per domain (mean over ``seeds`` of freshly rendered images): known-class per-class-mean
    accuracy and known-vs-unknown AUROC of the ``ueo`` protocol's headline score, MSP of the raw
    cosines (and, for reference, of ``100 * cos``).

    Follows the benchmark protocol: prompts ``"a photo of a {name}."`` for the 15 known classes,
    prediction = argmax cosine.
    """
    text = F.normalize(
        model.encode_text(tokenizer([ZERO_SHOT_TEMPLATE.format(c) for c in CLASSES[:NUM_KNOWN]])), dim=-1
    )
    rows = []
    for domain in DOMAINS:
        acc, au_cos, au_msp = [], [], []
        for seed in seeds:
            images, labels = render(domain, n_per_class, seed, 64)
            feats = F.normalize(model.encode_image(to_model_input(images, cfg)), dim=-1)
            cos = feats @ text.t()
            pred = cos.argmax(dim=1).numpy()
            known = labels < NUM_KNOWN
            acc.append(float(np.mean([np.mean(pred[labels == c] == c) for c in range(NUM_KNOWN)])))
            au_cos.append(auroc(torch.softmax(cos, dim=1).max(dim=1).values.numpy(), known))
            au_msp.append(auroc(torch.softmax(100.0 * cos, dim=1).max(dim=1).values.numpy(), known))
        rows.append(
            {
                "domain": domain,
                "acc_pc": float(np.mean(acc)),
                "auroc": float(np.mean(au_cos)),
                "auroc_msp": float(np.mean(au_msp)),
            }
        )
    return rows


def print_table(rows: list[dict[str, float | str]]) -> None:
    """Print the zero-shot table compactly."""
    print(f"{'domain':<10} {'acc_pc':>7} {'auroc':>7} {'auroc (msp)':>12}")
    for r in rows:
        print(f"{r['domain']:<10} {100 * r['acc_pc']:>6.1f}% {100 * r['auroc']:>6.1f} {100 * r['auroc_msp']:>12.1f}")


def timing(n: int = 600, repeats: int = 3) -> None:
    """Print the CPU time of the image encoder on ``n`` images: forward, and forward + backward."""
    model, _, cfg = build_model(WEIGHTS_PATH if WEIGHTS_PATH.is_file() else None)
    x = to_model_input(render(DOMAINS[0], math.ceil(n / len(CLASSES)), 0, 64)[0][:n], cfg)

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    def forward() -> None:
        with torch.no_grad():
            model.encode_image(x)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        model.encode_image(x).sum().backward()

    print(
        f"threads={torch.get_num_threads()} images={n}: forward {best(forward):.3f}s, "
        f"forward+backward (all parameters) {best(forward_backward):.3f}s"
    )


def main(argv: list[str] | None = None) -> None:
    """Command line: pre-train and save, or only evaluate / time the saved weights."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH, help="weights file to write or read")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, batching and augmentation")
    parser.add_argument("--n-per-class", type=int, default=125, help="images per class and style")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--evaluate-only", action="store_true", help="print the zero-shot table of --out")
    parser.add_argument("--timing", action="store_true", help="time the image encoder on 600 images")
    args = parser.parse_args(argv)
    if args.timing:
        timing()
        return
    if not args.evaluate_only:
        start = time.perf_counter()
        model = pretrain(args.epochs, args.seed, args.n_per_class, args.batch_size, args.lr)
        save_fp16(model, args.out)
        print(
            f"pre-training took {time.perf_counter() - start:.0f}s; saved {args.out} "
            f"({args.out.stat().st_size / 2**20:.2f} MiB)"
        )
    model, tokenizer, cfg = build_model(args.out)
    print_table(zero_shot_table(model, tokenizer, cfg))


if __name__ == "__main__":
    main()
