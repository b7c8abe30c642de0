"""The ``Adapter`` interface every method implements, and the base class that owns the loop.

In the spirit of the TENT reference code a method says three things: how to ``configure`` the
model (modes, ``requires_grad``; it returns what it will update), which ``loss`` to minimise on
an unlabeled batch, and optionally how to ``predict``. The base class owns everything else: the
epochs x batches loop, the optimiser, the cosine schedule (stepped every iteration), mixed
precision on GPU, the progress bar, the non-finite-loss check and ``reset``.
"""
from __future__ import annotations

import copy
import math
from typing import Any, ClassVar

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from benchmark.model import ClipClassifier
from benchmark.profiling import NULL_PROFILER, NullProfiler
from benchmark.unlabeled import UnlabeledData

COMMON_DEFAULTS: dict[str, Any] = {"prompts": "single"}
"""Hyper-parameters of every method: fixed prompt set (``single`` = "a photo of a {}.", or ``ensemble``)."""

BASE_DEFAULTS: dict[str, Any] = {
    "epochs": 1,
    "batch_size": 64,
    "optimizer": "sgd",
    "lr": 1e-4,
    "momentum": 0.0,
    "weight_decay": 0.0,
    "schedule": "cosine",
    "warmup_epochs": 0,
    "warmup_lr": 1e-5,
    "augment": "weak",
    "drop_last": False,
    "amp": True,
}
"""Loop hyper-parameters every adaptive method has; a method's ``defaults`` override them."""


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the run is recorded as failed with this reason."""


class HyperParameterError(ValueError):
    """An unknown hyper-parameter key or a value of the wrong type."""


def _coerce(key: str, default: Any, value: Any) -> Any:
    """Cast ``value`` to the type of ``default`` where that is lossless, else raise naming ``key``."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise HyperParameterError(f"{key} expects true/false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise HyperParameterError(f"{key} expects an integer, got {value!r}")
        return int(value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HyperParameterError(f"{key} expects a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise HyperParameterError(f"{key} expects a string, got {value!r}")
        return value
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise HyperParameterError(f"{key} expects a list, got {value!r}")
        return list(value)
    return value


class Adapter:
    """Base class of all methods. Subclasses set the class attributes and override the hooks.

    Class attributes:
        name: registry name (also the CLI name).
        defaults: the paper's hyper-parameters; merged over ``BASE_DEFAULTS`` for adaptive methods.
        adapts: False for methods that update nothing (zero-shot).
        requires_vit: the method needs patch tokens.
        online: one pass, one step per batch, predictions recorded while adapting.
        views: extra augmented views the loss needs besides ``images`` (e.g. ``("strong",)``).
        choices: allowed values of string hyper-parameters, for validation.
        score_name: what the OOD score is (default MSP), recorded in every run.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    adapts: ClassVar[bool] = True
    requires_vit: ClassVar[bool] = False
    online: ClassVar[bool] = False
    views: ClassVar[tuple[str, ...]] = ()
    choices: ClassVar[dict[str, tuple]] = {
        "optimizer": ("sgd", "adam", "adamw"),
        "schedule": ("cosine", "constant"),
        "prompts": ("single", "ensemble"),
        "augment": ("none", "weak", "strong"),
    }
    score_name: ClassVar[str] = "msp"
    profiler: NullProfiler = NULL_PROFILER
    """Phase timers of the loop; the runner sets a real ``Profiler`` under ``--profile``."""

    def __init__(self, model: ClipClassifier, hparams: dict[str, Any] | None = None, seed: int = 0):
        self.model = model
        self.hp = self.resolve_hparams(hparams or {})
        self.seed = seed
        self.history: list[dict[str, float]] = []
        self.online_predictions: dict[str, torch.Tensor] | None = None
        if self.requires_vit and not model.is_vit:
            raise ValueError(
                f"method {self.name!r} needs a ViT image encoder (patch tokens); "
                f"the model's image encoder is {type(model.visual).__name__}. Use e.g. --model ViT-B-16."
            )
        for p in model.parameters():
            p.requires_grad_(False)
        self.param_groups = self._as_groups(self.configure())
        self._check_trainable()
        self.optimizer = self.build_optimizer() if self.adapts else None
        self._initial_state = self._snapshot()

    @classmethod
    def hparam_defaults(cls) -> dict[str, Any]:
        """All hyper-parameters of this method with their default values."""
        return {**COMMON_DEFAULTS, **(BASE_DEFAULTS if cls.adapts else {}), **cls.defaults}

    @classmethod
    def resolve_hparams(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        """Defaults updated by ``overrides``; unknown keys and wrongly typed values raise."""
        hp = cls.hparam_defaults()
        for key, value in overrides.items():
            if key not in hp:
                raise HyperParameterError(
                    f"{cls.name}.{key} is not a hyper-parameter of {cls.name}; known: {', '.join(sorted(hp)) or 'none'}"
                )
            hp[key] = _coerce(f"{cls.name}.{key}", hp[key], value)
            allowed = cls.choices.get(key)
            if allowed and hp[key] not in allowed:
                raise HyperParameterError(f"{cls.name}.{key} must be one of {', '.join(map(str, allowed))}, got {hp[key]!r}")
        return hp

    def configure(self) -> list[nn.Parameter] | list[dict[str, Any]]:
        """Set train/eval modes and ``requires_grad``; return the parameters (or groups) to update."""
        self.model.eval()
        return []

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The unsupervised loss of one batch (``index`` and ``images``; never labels)."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss()")

    def before_adapt(self, data: UnlabeledData) -> None:
        """Hook run once before the loop (statistics such as UEO's confidence weights)."""

    def before_epoch(self, epoch: int, data: UnlabeledData) -> None:
        """Hook run at the start of each epoch (e.g. refreshing pseudo-labels)."""

    def after_step(self) -> None:
        """Hook run after every optimiser step (e.g. an EMA teacher update)."""

    def adapt_indices(self) -> torch.Tensor | None:
        """The subset of the adapt set the loop iterates over (None = all; UPL's selection)."""
        return None

    @staticmethod
    def _as_groups(params: list) -> list[dict[str, Any]]:
        if params and isinstance(params[0], dict):
            return [dict(g, params=list(g["params"])) for g in params]
        return [{"params": list(params)}] if params else []

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter the optimiser updates."""
        return [p for g in self.param_groups for p in g["params"]]

    def _check_trainable(self) -> None:
        """An adaptive method must update some but not all of the model's parameters."""
        mine = self.trainable_parameters()
        total = sum(p.numel() for p in self.model.parameters())
        n = sum(p.numel() for p in mine)
        if not self.adapts:
            if mine:
                raise AssertionError(f"{self.name} says it does not adapt but returned {len(mine)} parameters")
            return
        if n == 0:
            raise AssertionError(f"{self.name} adapts but configure() returned no parameters")
        if not all(p.requires_grad for p in mine):
            raise AssertionError(f"{self.name}: configure() returned parameters that do not require grad")
        if n >= total and total > 0:
            raise AssertionError(f"{self.name} updates every parameter of the model; configure() must select a subset")

    def build_optimizer(self) -> torch.optim.Optimizer:
        """SGD (momentum, weight decay), Adam or AdamW over ``param_groups`` with ``lr`` as base."""
        hp = self.hp
        groups = []
        for g in self.param_groups:
            g = dict(g)
            g["lr"] = hp["lr"] * g.pop("lr_mult", 1.0)
            groups.append(g)
        if hp["optimizer"] == "sgd":
            return torch.optim.SGD(groups, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"])
        if hp["optimizer"] == "adam":
            return torch.optim.Adam(groups, lr=hp["lr"], weight_decay=hp["weight_decay"])
        return torch.optim.AdamW(groups, lr=hp["lr"], weight_decay=hp["weight_decay"])

    def lr_factor(self, step: int, total: int, warmup: int) -> float:
        """Learning-rate multiplier at iteration ``step``.

        During ``warmup`` iterations the rate is the constant ``warmup_lr`` (CoOp's constant
        warm-up); afterwards cosine annealing ``0.5 (1 + cos(pi t / T))`` over all ``T`` iterations.
        """
        if step < warmup:
            return self.hp["warmup_lr"] / self.hp["lr"]
        if self.hp["schedule"] == "constant" or total <= 0:
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))

    def autocast(self):
        """bf16 autocast on CUDA when ``amp`` is on; a no-op context on CPU."""
        enabled = self.hp.get("amp", False) and self.model.device.type == "cuda"
        return torch.autocast(device_type=self.model.device.type, dtype=torch.bfloat16, enabled=enabled)

    def step(self, loss: torch.Tensor) -> None:
        """One optimiser step on ``loss`` after checking that it is finite."""
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLoss(f"non-finite loss {loss.item()} in {self.name}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.after_step()

    def adapt(self, data: UnlabeledData) -> None:
        """The default offline loop: ``epochs`` passes over the adapt set, one step per batch."""
        if not self.adapts:
            return
        hp = self.hp
        self.before_adapt(data)
        indices = self.adapt_indices()
        n = len(data) if indices is None else len(indices)
        per_epoch = data.num_batches(hp["batch_size"], hp["drop_last"], n)
        total = hp["epochs"] * per_epoch
        warmup = hp["warmup_epochs"] * per_epoch
        bar = tqdm(total=total, desc=f"{self.name}", leave=False, disable=None)
        it = 0
        for epoch in range(hp["epochs"]):
            self.before_epoch(epoch, data)
            indices = self.adapt_indices()
            losses = []
            prof = self.profiler
            batches = data.batches(
                hp["batch_size"], shuffle=True, augment=hp["augment"], views=self.views,
                drop_last=hp["drop_last"], indices=indices,
            )
            while True:
                with prof.phase("data"):
                    batch = next(batches, None)
                if batch is None:
                    break
                for g, base in zip(self.optimizer.param_groups, self._base_lrs()):
                    g["lr"] = base * self.lr_factor(it, total, warmup)
                with prof.phase("forward"), self.autocast():
                    loss = self.loss(batch)
                with prof.phase("backward"):
                    self.step(loss)
                prof.count("adapt", len(batch["index"]))
                losses.append(loss.item())
                it += 1
                bar.update(1)
            self.history.append({"epoch": epoch + 1, "loss": float(sum(losses) / max(len(losses), 1))})
        bar.close()

    def _base_lrs(self) -> list[float]:
        if not hasattr(self, "_lrs"):
            self._lrs = [g["lr"] for g in self.optimizer.param_groups]
        return self._lrs

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits over the K known classes, OOD score: higher = more likely known; MSP)."""
        logits = self.model(images).float()
        return logits, logits.softmax(dim=-1).max(dim=-1).values

    def _snapshot(self) -> dict[str, Any]:
        return {
            "model": copy.deepcopy(self.model.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()) if self.optimizer else None,
        }

    def reset(self) -> None:
        """Restore the model and optimiser to their state right after ``configure``."""
        self.model.load_state_dict(self._initial_state["model"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(self._initial_state["optimizer"])
