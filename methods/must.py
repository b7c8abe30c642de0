"""MUST: Masked Unsupervised Self-Training (Li, Savarese, Hoi, ICLR 2023), ViT backbones only.

Recipe (salesforce/MUST: ``train.py``, ``engine_self_training.py``, ``clip/model.py``,
``build_dataset.py``, ``train_configs.json`` entry ``imagenet_ViT-B/16``; file and line of every
value in ``docs/recipes.md``):
- student = CLIP's image encoder + a linear classifier ``W`` (K x D) initialised from the
  normalised, template-averaged text embeddings of the class names and then trained freely
  (never re-normalised): ``logits = 100 * normalize(f(x)) @ W^T``; the text encoder is dropped;
- teacher = EMA of the student, decay ramped linearly from 0.999 to 0.9998 over 2000 iterations;
  it pseudo-labels the weak view (resize the short side, random crop, no flip); MUST reports the
  student (``acc1``; the EMA as ``ema_acc1``);
- the student sees a strong view (random resized crop of scale 0.3-1, bicubic, flip, timm's
  RandAugment ``rand-m9-mstd0.5-inc1``) whose patches are masked (ratio 0.3, random
  32-pixel blocks = 2 x 2 ViT-B/16 patches, replaced by a learnable mask token) and minimises
  ``L = CE(confident) + L_fair + L_mim + 0.2 * L_align``:
  CE against the teacher's argmax where its MSP > 0.7 (mean over those samples),
  ``L_fair = -mean_k log(mean_batch p_k)``,
  ``L_mim`` = L1 between a linear decoder's pixels (from LayerNorm-ed patch tokens) and the
  (mean/std-normalised) input pixels of masked patches,
  ``L_align`` = squared distance between the normalised projected masked-patch tokens and the
  normalised image embedding;
- everything of the image encoder trains, plus classifier, mask token, patch LayerNorm and
  decoder; AdamW, weight decay 0.05 on tensors with more than one dimension, layer-wise lr decay
  0.65, lr 2e-5 per 256 images (``lr * batch / 256``), cosine to 1e-6 per 256 images, no warm-up;
  batch 1024 (64 on each of 16 GPUs; the fairness term is a mean over the whole batch), 30 epochs;
  fp32.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmark.adapt.adapter import Adapter
from benchmark.adapt.augment import Augment
from benchmark.adapt.ema import EmaTeacher, ramped_decay
from benchmark.adapt.masking import masked_alignment, masked_l1, normalize_patches, patchify, random_block_mask
from benchmark.adapt.selftrain import fairness_loss
from benchmark.adapt.unlabeled import UnlabeledData
from benchmark.model.clip import LOGIT_SCALE, TEMPLATE_SETS
from benchmark.registry import register_method


class CosineHead(nn.Module):
    """MUST's classifier: ``logits = 100 * normalize(f) @ W^T`` with a free (K, D) weight ``W``."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().float())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return LOGIT_SCALE * F.normalize(features.float(), dim=-1) @ self.weight.t()


class MustModules(nn.Module):
    """What MUST adds to the image encoder: classifier, mask token, patch LayerNorm, pixel decoder.

    The decoder is one linear map per patch token to its ``3 * p * p`` pixels (MUST's 1x1 conv
    followed by ``PixelShuffle(p)``). The mask token starts at N(0, 0.02), as in MUST.
    """

    def __init__(self, class_embeddings: torch.Tensor, width: int, patch: int):
        super().__init__()
        self.head = CosineHead(class_embeddings)
        self.mask_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.ln_patch = nn.LayerNorm(width)
        self.decoder = nn.Linear(width, 3 * patch * patch)


def vit_layer_id(name: str, num_layers: int) -> int:
    """Depth of a ViT parameter for layer-wise lr decay (BEiT/MUST ``get_num_layer_for_vit``).

    Patch/class/position embeddings and ``ln_pre`` -> 0, block ``i`` -> ``i + 1``, everything
    after the blocks (``ln_post``, ``proj``, new heads) -> ``num_layers + 1``.
    """
    if name.startswith(("conv1", "class_embedding", "positional_embedding", "ln_pre")):
        return 0
    if name.startswith("transformer.resblocks."):
        return int(name.split(".")[2]) + 1
    return num_layers + 1


def layer_decay_groups(visual: nn.Module, extras: MustModules, decay: float, weight_decay: float) -> list[dict]:
    """Optimiser groups with ``lr_mult = decay ** (L + 1 - depth)`` and MUST's weight-decay rule.

    ``L`` is the number of transformer blocks. The mask token is an input embedding (depth 0, as
    MUST's name rule puts ``mask_token_embedding``); classifier, patch LayerNorm and decoder sit
    on top (depth ``L + 1``, multiplier 1). Tensors with one dimension (biases, LayerNorm
    affines, the class embedding) get no weight decay, every other tensor ``weight_decay``.
    """
    num_layers = len(visual.transformer.resblocks)
    entries = [(vit_layer_id(n, num_layers), p) for n, p in visual.named_parameters()]
    entries += [(0 if n == "mask_token" else num_layers + 1, p) for n, p in extras.named_parameters()]
    groups: dict[tuple[int, bool], dict] = {}
    for depth, p in entries:
        decays = p.ndim > 1
        group = groups.setdefault(
            (depth, decays),
            {
                "params": [],
                "lr_mult": decay ** (num_layers + 1 - depth),
                "weight_decay": weight_decay if decays else 0.0,
            },
        )
        group["params"].append(p)
    return [groups[key] for key in sorted(groups)]


@register_method
class Must(Adapter):
    """Masked unsupervised self-training of the whole image encoder with an EMA teacher.

    Hyper-parameters besides the loop's (defaults: MUST's ImageNet ViT-B/16 configuration):
        lr_per_256 / min_lr_per_256: peak and final lr per 256 images; ``lr`` (unless given) is
            ``lr_per_256 * batch_size / 256`` as in MUST.
        layer_decay: layer-wise lr decay (0.65).
        tau: teacher confidence threshold for the self-training CE (0.7).
        w_align: weight of the global-local alignment term (0.2).
        mask_ratio / mask_block: fraction of masked blocks (0.3) and block side in patches
            (2 = MUST's 32-pixel masking unit on 16-pixel patches).
        mim_target: ``pixel`` (MUST: mean/std-normalised pixels) or ``patch_norm`` (per-patch
            normalised pixels, MAE's ``norm_pix_loss``).
        ema_decay / ema_decay_init / ema_warmup_iters: the teacher's decay ramp
            (0.999 -> 0.9998 over 2000 iterations).
        predict_with: ``student`` (MUST's reported accuracy) or ``teacher`` (its EMA accuracy).
        strong_scale / randaugment: the strong view's crop scale and timm RandAugment string.
    Budget: MUST trains with 16 GPUs x 64 = 1024 images per step for 30 epochs on ImageNet; one
    device takes the whole batch of ``batch_size`` (the fairness term needs the whole batch's
    mean), so a smaller ``batch_size`` is a recorded departure.
    """

    name = "must"
    requires_vit = True
    official_precision = "fp32"
    defaults = {
        "prompts": "imagenet80",
        "epochs": 30,
        "batch_size": 1024,
        "optimizer": "adamw",
        "lr": 2e-5 * 1024 / 256,
        "lr_per_256": 2e-5,
        "min_lr_per_256": 1e-6,
        "weight_decay": 0.05,
        "layer_decay": 0.65,
        "schedule": "cosine",
        "warmup_epochs": 0,
        "augment": "crop",
        "interpolation": "bicubic",
        "strong_scale": [0.3, 1.0],
        "randaugment": "rand-m9-mstd0.5-inc1",
        "drop_last": True,
        "tau": 0.7,
        "w_align": 0.2,
        "mask_ratio": 0.3,
        "mask_block": 2,
        "mim_target": "pixel",
        "ema_decay": 0.9998,
        "ema_decay_init": 0.999,
        "ema_warmup_iters": 2000,
        "predict_with": "student",
    }
    choices = {**Adapter.choices, "mim_target": ("pixel", "patch_norm"), "predict_with": ("student", "teacher")}

    @classmethod
    def derive(cls, hp: dict, given: set[str]) -> dict:
        """``lr = lr_per_256 * batch_size / 256`` unless ``lr`` is given."""
        return hp if "lr" in given else {**hp, "lr": hp["lr_per_256"] * hp["batch_size"] / 256}

    def configure(self) -> list[dict]:
        """Attach MUST's modules to the model; the image encoder and them train, the text side not.

        The new modules are registered on the model (``model.must``) so that the base snapshot
        and ``reset`` cover them like any other weight; the teacher is a separate copy.
        """
        self.model.eval()
        visual = self.model.visual
        extras = MustModules(
            self.model.class_embeddings(TEMPLATE_SETS[self.hp["prompts"]]),
            visual.conv1.out_channels,
            self.model.patch_size,
        ).to(self.model.device)
        self.model.add_module("must", extras)
        self.extras = extras
        self.student = nn.Sequential(visual, extras.head)
        self.teacher = EmaTeacher(self.student)
        self.iteration = 0
        for module in (visual, extras):
            for p in module.parameters():
                p.requires_grad_(True)
        return layer_decay_groups(visual, extras, self.hp["layer_decay"], self.hp["weight_decay"])

    def lr_factor(self, step: int, total: int, warmup: int) -> float:
        """MUST's cosine ends at ``min_lr`` rather than 0: ``m + (1 - m) * cosine`` with ``m = min_lr / lr``."""
        factor = super().lr_factor(step, total, warmup)
        if step < warmup:
            return factor
        floor = self.hp["min_lr_per_256"] * self.hp["batch_size"] / 256 / self.hp["lr"]
        return floor + (1.0 - floor) * factor

    def views(self) -> dict[str, Augment]:
        """The teacher's weak view (``images``: resize + random crop, no flip; build_dataset.py:153-160)
        and the student's strong view (``images_strong``: timm's ``create_transform`` with RandomResizedCrop
        of scale 0.3-1, bicubic, flip and RandAugment; build_dataset.py:162-171, train.py:83-88)."""
        hp = self.hp
        mean = self.model.mean.flatten().tolist()
        return {
            "images": Augment(hp["augment"], interpolation=hp["interpolation"], mean=mean),
            "images_strong": Augment(
                "randaugment",
                scale=tuple(hp["strong_scale"]),
                interpolation=hp["interpolation"],
                randaugment=hp["randaugment"],
                mean=mean,
            ),
        }

    def before_adapt(self, data: UnlabeledData) -> None:
        """Seed the mask generator; refuse an adapt set that yields no full batch."""
        if self.hp["drop_last"] and len(data) < self.hp["batch_size"]:
            raise ValueError(
                f"must: the adapt set has {len(data)} images, fewer than batch_size={self.hp['batch_size']} "
                "(MUST drops incomplete batches); lower must.batch_size"
            )
        self.mask_generator = torch.Generator().manual_seed(self.seed)
        self._stats: list[list[int]] = []

    def before_epoch(self, epoch: int, data: UnlabeledData) -> None:
        self._stats.append([0, 0])

    def masked_student(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Student on masked images: (logits, normalised image embedding, LayerNorm-ed patch tokens).

        MUST normalises the patch tokens with its own LayerNorm (not ``ln_post``), so the raw
        output of the transformer is caught with a forward hook around ``vit_forward``.
        """
        visual = self.model.visual
        caught: list[torch.Tensor] = []
        hook = visual.transformer.register_forward_hook(lambda _m, _i, out: caught.append(out))
        try:
            pooled, _ = self.model.vit_forward(images, mask, self.extras.mask_token)
        finally:
            hook.remove()
        tokens = self.extras.ln_patch(caught[0][:, -mask.shape[1] :])
        return self.extras.head(pooled), F.normalize(pooled.float(), dim=-1), tokens

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``CE(confident) + L_fair + L_mim + w_align * L_align`` on one batch (see the module doc)."""
        weak, strong = batch["images"], batch["images_strong"]
        probs_t = self.teacher(self.model.normalize(weak)).float().softmax(dim=-1)
        conf, pseudo = probs_t.max(dim=-1)
        keep = conf > self.hp["tau"]

        grid = self.model.visual.grid_size[0]
        mask = random_block_mask(
            strong.shape[0], grid, self.hp["mask_ratio"], self.hp["mask_block"], self.mask_generator
        ).to(strong.device)
        logits, embed, tokens = self.masked_student(strong, mask)

        loss_st = F.cross_entropy(logits[keep], pseudo[keep]) if keep.any() else logits.sum() * 0.0
        loss_fair = fairness_loss(logits.softmax(dim=-1))
        target = patchify(self.model.normalize(strong), self.model.patch_size)
        if self.hp["mim_target"] == "patch_norm":
            target = normalize_patches(target)
        loss_mim = masked_l1(self.extras.decoder(tokens), target, mask)
        proj = self.model.visual.proj
        local = F.normalize((tokens @ proj if proj is not None else tokens).float(), dim=-1)
        loss_align = masked_alignment(embed, local, mask)

        self._stats[-1][0] += int(keep.sum())
        self._stats[-1][1] += keep.numel()
        return loss_st + loss_fair + loss_mim + self.hp["w_align"] * loss_align

    def after_step(self) -> None:
        """EMA step of the teacher with MUST's ramped decay."""
        hp = self.hp
        decay = ramped_decay(self.iteration, hp["ema_decay_init"], hp["ema_decay"], hp["ema_warmup_iters"])
        self.teacher.update(self.student, decay)
        self.iteration += 1

    def adapt(self, data: UnlabeledData) -> None:
        """The default loop; each epoch's history entry gets ``confident``, the share of images
        whose teacher MSP passed ``tau`` (0 means the CE term never acted)."""
        start = len(self.history)
        super().adapt(data)
        for entry, (kept, seen) in zip(self.history[start:], self._stats):
            entry["confident"] = kept / max(seen, 1)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of the student (default) or the EMA teacher on un-masked images."""
        net = self.student if self.hp["predict_with"] == "student" else self.teacher.module
        return net(self.model.normalize(images)).float()

    def reset(self) -> None:
        """Restore student, MUST modules and optimiser (base), then re-copy the teacher from them."""
        super().reset()
        self.teacher.load_from(self.student)
        self.iteration = 0
