"""TENT (Wang et al., ICLR 2021): entropy minimisation of the image encoder's norm affines, one step per batch."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn

from benchmark.adapt.adapter import Adapter
from benchmark.adapt.losses import softmax_entropy
from benchmark.adapt.unlabeled import UnlabeledData
from benchmark.registry import register_method

RECIPES: dict[str, dict[str, Any]] = {
    "imagenet": {"optimizer": "sgd", "lr": 2.5e-4, "momentum": 0.9, "nesterov": True, "batch_size": 64},
    "cifar": {"optimizer": "adam", "lr": 1e-3, "batch_size": 200},
}
"""TENT's optimiser settings per benchmark; ``recipe`` picks one.

``cifar``: the released ``cfgs/tent.yaml`` (Adam, lr 1e-3, betas (0.9, 0.999), batch 200;
DequanWang/tent cfgs/tent.yaml:2-5, 30-35). ``imagenet``: SGD lr 2.5e-4, momentum 0.9, batch 64
are the paper's (no ImageNet script was released, README.md:12); Nesterov follows the released
SGD branch's defaults (conf.py:82-91: momentum 0.9, dampening 0, ``NESTEROV = True``, wd 0), an
inference from code rather than a released configuration. Adam does not read ``momentum``.
"""


@register_method
class Tent(Adapter):
    """Minimise the mean softmax entropy of ``100 * cos`` logits, one step per incoming batch.

    Trainable: weight and bias of every image-encoder normalisation layer. TENT's code collects
    BatchNorm2d only (tent.py:74-79); CLIP's ViTs have none, so LayerNorm affines train too, as
    in the ViT variants of TENT (e.g. UniEnt's imagenet/tent.py:156-157). BatchNorm layers
    normalise with the current batch's statistics and keep no running averages (tent.py:107-109;
    in ``predict`` too, as TENT evaluates in train mode); LayerNorm has no statistics.

    Regimes: ``transductive`` (the UEO protocol: one shuffled, un-augmented pass over the adapt
    set, then the test set is predicted; the predictions made along the pass are recorded as
    the ``online`` result part) and ``online`` (one pass over the test stream; its predictions are the
    result). A batch's prediction comes from the forward pass its update is computed from, i.e.
    before the update (tent.py:55-61).

    Hyper-parameters besides the loop's: ``recipe`` (fills the optimiser keys at resolve time
    unless given explicitly, so records show the values used), ``steps`` (updates per batch) and
    ``episodic`` (restore weights and optimiser before every batch).
    """

    name = "tent"
    regimes = ("transductive", "online")
    official_precision = "fp32"
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
    def derive(cls, hp: dict[str, Any], given: set[str]) -> dict[str, Any]:
        """Expand ``recipe`` into its optimiser settings; explicitly given keys win over the preset."""
        preset = dict(RECIPES.get(hp["recipe"], {}))
        if hp["recipe"] == "cifar":
            preset["nesterov"] = False
        return {**hp, **{k: v for k, v in preset.items() if k not in given}}

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

    def forward_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean softmax entropy of the batch's logits, those logits): TENT's forward pass."""
        logits = self.model(images)
        return softmax_entropy(logits).mean(), logits

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean softmax entropy of the batch's ``100 * cos`` logits."""
        return self.forward_loss(batch["images"])[0]

    def stream_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``steps`` updates on the batch (after a reset when ``episodic``); the logits of the last forward."""
        if self.hp["episodic"]:
            self.reset()
        for _ in range(self.hp["steps"]):
            loss, logits = self.forward_loss(batch["images"])
            self.step(loss)
            self.last_loss = loss.item()
        return logits.detach().float()

    def stream_batch_size(self) -> int:
        return self.hp["batch_size"]

    def adapt(self, data: UnlabeledData) -> None:
        """Transductive regime: ``epochs`` (default 1) shuffled passes over the adapt set.

        The predictions of the final pass are kept in ``online_predictions`` as ``(index,
        logits)`` pairs, one entry per image seen.
        """
        for _ in range(self.hp["epochs"]):
            order = torch.randperm(len(data), generator=self.generator)
            self.online_predictions = [(index.cpu(), out) for index, out in self.stream(data, order)]
