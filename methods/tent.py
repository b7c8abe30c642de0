"""TENT (Wang et al., ICLR 2021): online entropy minimisation of the image encoder's norm affines."""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from benchmark.adapter import Adapter
from benchmark.losses import softmax_entropy
from benchmark.registry import register_method
from benchmark.unlabeled import UnlabeledData

RECIPES: dict[str, dict[str, Any]] = {
    "imagenet": {"optimizer": "sgd", "lr": 2.5e-4, "momentum": 0.9, "batch_size": 64},
    "cifar": {"optimizer": "adam", "lr": 1e-3, "batch_size": 200},
}
"""TENT's official optimiser settings per benchmark (ImageNet-C, CIFAR-C); ``recipe`` picks one.

Adam (betas 0.9, 0.999) does not read ``momentum``; the cifar preset leaves that key alone.
"""


@register_method
class Tent(Adapter):
    """Minimise the mean softmax entropy of ``100 * cos`` logits, one step per incoming batch.

    Trainable: weight and bias of every image-encoder normalisation layer, ResNet ``downsample``
    BatchNorms included. BatchNorm layers normalise with the current batch's statistics and keep
    no running averages (in eval mode too, so ``predict`` also uses batch statistics, as in
    TENT); LayerNorm has none. Everything else is frozen and in eval mode.

    ``adapt`` is online: a single shuffled, un-augmented pass, recording the predictions of the
    forward pass each update is computed from in ``online_predictions``.

    Hyper-parameters besides the loop's: ``recipe`` (``imagenet``: SGD lr 2.5e-4 momentum 0.9
    batch 64; ``cifar``: Adam lr 1e-3 batch 200; it fills those keys at resolve time unless they
    are given explicitly, so records show the values used), ``steps`` (updates per batch) and
    ``episodic`` (restore weights and optimiser before every batch).
    """

    name = "tent"
    online = True
    defaults = {
        "recipe": "imagenet",
        **RECIPES["imagenet"],
        "weight_decay": 0.0,
        "epochs": 1,
        "schedule": "constant",
        "augment": "none",
        "steps": 1,
        "episodic": False,
    }
    choices: ClassVar[dict[str, tuple]] = {**Adapter.choices, "recipe": tuple(RECIPES)}

    @classmethod
    def resolve_hparams(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        """Expand ``recipe`` into its optimiser settings; explicitly given keys win over the preset.

        Idempotent: resolving an already resolved dict returns it unchanged, since every key is
        then explicit.
        """
        recipe = overrides.get("recipe", cls.defaults["recipe"])
        preset = RECIPES.get(recipe, {}) if isinstance(recipe, str) else {}
        return super().resolve_hparams({**preset, **overrides})

    def configure(self) -> list[nn.Parameter]:
        """Norm affines train; BatchNorm switches to batch statistics without running averages."""
        self.model.eval()
        params = []
        for _, layer in self.model.norm_layers(include_downsample=True):
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.train()
                layer.track_running_stats = False
                layer.running_mean = None
                layer.running_var = None
            params += [layer.weight, layer.bias]
        for p in params:
            p.requires_grad_(True)
        return params

    def forward_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean softmax entropy of the batch's logits, those logits): TENT's forward pass."""
        logits = self.model(batch["images"])
        return softmax_entropy(logits).mean(), logits

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean softmax entropy of the batch's ``100 * cos`` logits."""
        return self.forward_loss(batch)[0]

    def adapt(self, data: UnlabeledData) -> None:
        """Online adaptation: ``epochs`` (default 1) shuffled passes, ``steps`` updates per batch.

        Each batch's predictions come from the forward pass of its last update, i.e. before that
        update, as TENT's ``forward_and_adapt`` returns them; those of the final pass are kept in
        ``online_predictions`` (``index``, ``pred``, ``score`` = MSP), one entry per image seen.
        """
        hp = self.hp
        self.before_adapt(data)
        indices = self.adapt_indices()
        n = len(data) if indices is None else len(indices)
        per_epoch = data.num_batches(hp["batch_size"], hp["drop_last"], n) * hp["steps"]
        total = hp["epochs"] * per_epoch
        warmup = hp["warmup_epochs"] * per_epoch
        base_lrs = self._base_lrs()
        bar = tqdm(total=total, desc=self.name, leave=False, disable=None)
        it = 0
        for epoch in range(hp["epochs"]):
            self.before_epoch(epoch, data)
            seen: dict[str, list[torch.Tensor]] = {
                "index": [torch.empty(0, dtype=torch.long)],
                "pred": [torch.empty(0, dtype=torch.long)],
                "score": [torch.empty(0)],
            }
            losses = []
            for batch in data.batches(
                hp["batch_size"], shuffle=True, augment=hp["augment"], views=self.views,
                drop_last=hp["drop_last"], indices=self.adapt_indices(),
            ):
                if hp["episodic"]:
                    self.reset()
                for _ in range(hp["steps"]):
                    for group, base in zip(self.optimizer.param_groups, base_lrs):
                        group["lr"] = base * self.lr_factor(it, total, warmup)
                    with self.autocast():
                        loss, logits = self.forward_loss(batch)
                    self.step(loss)
                    losses.append(loss.item())
                    it += 1
                    bar.update(1)
                probs = logits.detach().float().softmax(dim=-1)
                seen["index"].append(batch["index"].cpu())
                seen["pred"].append(probs.argmax(dim=-1).cpu())
                seen["score"].append(probs.max(dim=-1).values.cpu())
            self.online_predictions = {k: torch.cat(v) for k, v in seen.items()}
            self.history.append({"epoch": epoch + 1, "loss": float(sum(losses) / max(len(losses), 1))})
        bar.close()
