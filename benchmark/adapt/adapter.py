"""The ``Adapter`` interface every method implements, and the base class that owns the loop.

In the spirit of the TENT reference code a method says three things: how to ``configure`` the
model (modes, ``requires_grad``; it returns what it will update), which ``loss`` to minimise on
an unlabeled batch, and optionally how to ``predict``. The base class owns everything else: the
epochs x batches loop, the optimiser, the cosine schedule (stepped every iteration or every
epoch), the precision (``benchmark.model.precision``), the train views, the progress bar, the
non-finite-loss check and ``reset``.

Regimes (``regime``, a hyper-parameter of every method, recorded in every run):

- ``transductive``: ``adapt`` on the unlabeled adapt set, then ``predict`` the test set (the UEO
  protocol);
- ``online``: one pass over the test stream (every class, a seeded order that is the same for
  every method), predictions made along it by ``stream_step``, which may update the method;
- ``episodic``: like ``online``, but each test image is adapted on alone and the method is reset
  before the next one, so the order cannot matter;
- ``none``: nothing adapts (zero-shot): the same predictions under every regime.

A method lists the regimes it supports in ``regimes``; the first is its default.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from benchmark.adapt.augment import Augment
from benchmark.adapt.hparams import BASE_RANGES, HyperParameterError, Rule, check_range, coerce
from benchmark.adapt.profiling import NULL_PROFILER, NullProfiler
from benchmark.adapt.unlabeled import UnlabeledData
from benchmark.model import precision as prec
from benchmark.model.clip import ClipClassifier

REGIMES = ("transductive", "online", "episodic", "none")

COMMON_DEFAULTS: dict[str, Any] = {"prompts": "single", "precision": "official", "regime": ""}
"""Hyper-parameters of every method: the fixed prompt set (``benchmark.model.TEMPLATE_SETS``:
``single`` = "a photo of a {}.", ``ensemble``, ``imagenet80``), the numerical precision
(``benchmark.model.precision``) and the regime (default: the method's first)."""

BASE_DEFAULTS: dict[str, Any] = {
    "epochs": 1,
    "batch_size": 64,
    "optimizer": "sgd",
    "lr": 1e-4,
    "momentum": 0.0,
    "nesterov": False,
    "weight_decay": 0.0,
    "schedule": "cosine",
    "schedule_step": "iteration",
    "warmup_epochs": 0,
    "warmup_lr": 1e-5,
    "augment": "rrc",
    "crop_scale": [0.5, 1.0],
    "interpolation": "bicubic",
    "drop_last": False,
}
"""Loop hyper-parameters every method that trains has; a method's ``defaults`` override them."""

HISTORY_POINTS = 10
"""Points of the loss curve recorded along a whole budget (and along one pass of a stream)."""


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the run is recorded as failed with this reason."""


class Adapter:
    """Base class of all methods. Subclasses set the class attributes and override the hooks.

    Class attributes:
        name: registry name (also the CLI name).
        defaults: the paper's hyper-parameters; merged over ``BASE_DEFAULTS`` for methods that train.
        adapts: False for methods whose predictions never depend on the data (zero-shot).
        trains: False for methods that adapt without trainable parameters (e.g. TDA's caches).
        requires_vit: the method needs patch tokens.
        regimes: the regimes the method supports, its default first.
        official_precision: what its official code runs in (``fp32``, ``fp16``, ``fp16_weights``).
        logit_scale_rule: the scale of its training logits in its official code, ``fixed100`` (UEO,
            MUST) or ``checkpoint`` (TPT, UPL: ``logit_scale.exp()``); predictions stay ``100 cos``.
        choices: allowed values of string hyper-parameters, for validation.
        ranges: numeric domains ``(low, high)`` of its own hyper-parameters (``BASE_RANGES`` covers the loop's).
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    adapts: ClassVar[bool] = True
    trains: ClassVar[bool] = True
    requires_vit: ClassVar[bool] = False
    regimes: ClassVar[tuple[str, ...]] = ("transductive",)
    official_precision: ClassVar[str] = "fp32"
    logit_scale_rule: ClassVar[str] = "fixed100"
    choices: ClassVar[dict[str, tuple]] = {
        "optimizer": ("sgd", "adam", "adamw"),
        "schedule": ("cosine", "constant"),
        "schedule_step": ("iteration", "epoch"),
        "prompts": ("single", "ensemble", "imagenet80"),
        "augment": ("none", "rrc", "crop"),
        "interpolation": ("bicubic", "bilinear"),
        "precision": prec.PRECISIONS,
    }
    ranges: ClassVar[dict[str, Rule]] = {}
    profiler: NullProfiler = NULL_PROFILER
    """Phase timers of the loop; the runner sets a real ``Profiler`` under ``--profile``."""

    def __init__(
        self,
        model: ClipClassifier,
        hparams: dict[str, Any] | None = None,
        seed: int = 0,
        *,
        view_seed: int | None = None,
        resolved: bool = False,
    ):
        """``hparams``: overrides of the defaults (resolved here), or with ``resolved`` the complete
        dict the sweep resolved (the runner's path: nothing is resolved twice). ``view_seed``: the
        seed of the test images' augmented views, shared by every method of a cell (default ``seed``)."""
        self.model = model
        self.hp = self.check_resolved(hparams or {}) if resolved else self.resolve_hparams(hparams or {})
        self.seed = seed
        self.view_seed = seed if view_seed is None else view_seed
        """Seed of the test images' augmented views (``benchmark.adapt.views.view_features``): the
        runner gives every method of a cell the same one, so they see the same views."""
        self.history: list[dict[str, float]] = []
        self.curve: list[dict[str, float]] = []
        """The loss over the whole budget in :data:`HISTORY_POINTS` windows of steps (``progress``
        = fraction of the budget's steps done): what ``benchmarks/loss_curves.py`` judges."""
        self._window: list[float] = []
        self.online_predictions: dict[str, torch.Tensor] | None = None
        if self.requires_vit and not model.is_vit:
            raise ValueError(
                f"method {self.name!r} needs a ViT image encoder (patch tokens); "
                f"the model's image encoder is {type(model.visual).__name__}. Use e.g. --model ViT-B-16."
            )
        self.precision = prec.effective_precision(
            self.hp["precision"], self.official_precision, model.device, self.name
        )
        """The precision this run computes in: the sweep already made ``official`` concrete for the
        device kind; this checks that the device can run it."""
        if self.precision == "fp16_weights":
            prec.to_fp16_weights(model.clip)
        for p in model.parameters():
            p.requires_grad_(False)
        self.param_groups = self._as_groups(self.configure())
        self._check_trainable()
        self.optimizer = self.build_optimizer() if self.param_groups else None
        self.scaler = prec.grad_scaler(self.precision, model.device)
        self.generator = torch.Generator().manual_seed(seed)
        self._initial_state = self._snapshot()

    @classmethod
    def hparam_defaults(cls) -> dict[str, Any]:
        """All hyper-parameters of this method with their default values."""
        hp = {**COMMON_DEFAULTS, **(BASE_DEFAULTS if cls.trains else {}), **cls.defaults}
        if not hp["regime"]:
            hp["regime"] = cls.regimes[0]
        return hp

    @classmethod
    def resolve_hparams(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        """The complete hyper-parameters: defaults, then ``overrides`` (checked against their types,
        choices and ranges), then the method's derived values (:meth:`derive`), in one step."""
        hp = cls.hparam_defaults()
        for key, value in overrides.items():
            if key not in hp:
                raise HyperParameterError(
                    f"{cls.name}.{key} is not a hyper-parameter of {cls.name}; known: {', '.join(sorted(hp)) or 'none'}"
                )
            hp[key] = coerce(f"{cls.name}.{key}", hp[key], value)
            allowed = cls.regimes if key == "regime" else cls.choices.get(key)
            if allowed and hp[key] not in allowed:
                raise HyperParameterError(
                    f"{cls.name}.{key} must be one of {', '.join(map(str, allowed))}, got {hp[key]!r}"
                )
        hp = cls.derive(hp, set(overrides))
        cls.check_values(hp)
        return hp

    @classmethod
    def derive(cls, hp: dict[str, Any], given: set[str]) -> dict[str, Any]:
        """Values that follow from others unless given explicitly (e.g. MUST's lr from its lr per 256
        images, TENT's optimiser presets); ``given`` holds the keys the user or data set set."""
        return hp

    @classmethod
    def check_values(cls, hp: dict[str, Any]) -> None:
        """Every value inside its domain (``BASE_RANGES`` and ``ranges``), else ``HyperParameterError``."""
        for key, rule in {**BASE_RANGES, **cls.ranges}.items():
            if key in hp:
                check_range(f"{cls.name}.{key}", hp[key], rule)
        if "lr" in hp and hp["lr"] <= 0:
            raise HyperParameterError(f"{cls.name}.lr = {hp['lr']!r} is out of range: needs lr > 0")
        scale = hp.get("crop_scale")
        if scale is not None and (len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1):
            raise HyperParameterError(f"{cls.name}.crop_scale = {scale!r}: needs [low, high] with 0 < low <= high <= 1")

    @classmethod
    def check_resolved(cls, hp: dict[str, Any]) -> dict[str, Any]:
        """A resolved dict as given, after checking it has exactly this method's keys."""
        expected = set(cls.hparam_defaults())
        if set(hp) != expected:
            missing, extra = sorted(expected - set(hp)), sorted(set(hp) - expected)
            raise HyperParameterError(
                f"{cls.name}: resolved hyper-parameters do not match this version's "
                f"(missing: {', '.join(missing) or 'none'}; unknown: {', '.join(extra) or 'none'})"
            )
        return dict(hp)

    # ---- what a method says -------------------------------------------------------------------

    def configure(self) -> list[nn.Parameter] | list[dict[str, Any]]:
        """Set train/eval modes and ``requires_grad``; return the parameters (or groups) to update."""
        self.model.eval()
        return []

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The unsupervised loss of one batch (``index`` and the views; never labels)."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss()")

    def views(self) -> dict[str, Augment]:
        """The train views a batch holds, by key: ``images`` from ``augment``, ``crop_scale`` and
        ``interpolation`` (a random resized crop of the whole image plus a flip, by default)."""
        hp = self.hp
        return {
            "images": Augment(
                hp["augment"],
                scale=tuple(hp["crop_scale"]),
                interpolation=hp["interpolation"],
                mean=self.model.mean.flatten().tolist(),
            )
        }

    def before_adapt(self, data: UnlabeledData) -> None:
        """Hook run once before the loop (statistics such as UEO's confidence weights)."""

    def before_epoch(self, epoch: int, data: UnlabeledData) -> None:
        """Hook run at the start of each epoch (e.g. refreshing pseudo-labels)."""

    def after_step(self) -> None:
        """Hook run after every optimiser step (e.g. an EMA teacher update)."""

    def adapt_indices(self) -> torch.Tensor | None:
        """The subset of the adapt set the loop iterates over (None = all; UPL's selection)."""
        return None

    def drop_last(self, n: int) -> bool:
        """Whether an epoch over ``n`` images drops its last incomplete batch (``drop_last``)."""
        return self.hp["drop_last"]

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(N, K) logits on CLIP's scale (``100 cos``) of [0, 1] images; every OOD score is computed
        from them (``benchmark.adapt.scores``). A method may return ``(logits, {name: score})`` to add
        scores of its own."""
        return self.model(images).float()

    def stream_step(
        self, batch: dict[str, torch.Tensor]
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Online and episodic regimes: predict one batch of the stream (and adapt on it)."""
        raise NotImplementedError(f"{self.name} has no online or episodic regime")

    def stream_batch_size(self) -> int:
        """Images per ``stream_step`` (``batch_size``; episodic methods process images independently)."""
        return int(self.hp.get("batch_size", 64))

    # ---- the base machinery --------------------------------------------------------------------

    @property
    def regime(self) -> str:
        return self.hp["regime"]

    @property
    def needs_full(self) -> bool:
        """Whether a view of this regime crops from the whole image (the runner then loads the ``full`` view)."""
        if not self.adapts:
            return False
        views = self.views() if self.regime == "transductive" else self.stream_views()
        return any(v.needs_full for v in views.values())

    @staticmethod
    def _as_groups(params: list) -> list[dict[str, Any]]:
        if params and isinstance(params[0], dict):
            return [dict(g, params=list(g["params"])) for g in params]
        return [{"params": list(params)}] if params else []

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter the optimiser updates."""
        return [p for g in self.param_groups for p in g["params"]]

    def _check_trainable(self) -> None:
        """A method that trains must update some but not all of the model's parameters; others none."""
        mine = self.trainable_parameters()
        total = sum(p.numel() for p in self.model.parameters())
        n = sum(p.numel() for p in mine)
        if not self.trains:
            if mine:
                raise AssertionError(f"{self.name} says it trains nothing but returned {len(mine)} parameters")
            return
        if n == 0:
            raise AssertionError(f"{self.name} trains but configure() returned no parameters")
        if not all(p.requires_grad for p in mine):
            raise AssertionError(f"{self.name}: configure() returned parameters that do not require grad")
        if n >= total and total > 0:
            raise AssertionError(f"{self.name} updates every parameter of the model; configure() must select a subset")

    def build_optimizer(self) -> torch.optim.Optimizer:
        """SGD (momentum, Nesterov, weight decay), Adam or AdamW over ``param_groups`` with ``lr`` as base."""
        hp = self.hp
        groups = []
        for g in self.param_groups:
            g = dict(g)
            g["lr"] = hp["lr"] * g.pop("lr_mult", 1.0)
            groups.append(g)
        if hp["optimizer"] == "sgd":
            return torch.optim.SGD(
                groups, lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"], nesterov=hp["nesterov"]
            )
        if hp["optimizer"] == "adam":
            return torch.optim.Adam(groups, lr=hp["lr"], weight_decay=hp["weight_decay"])
        return torch.optim.AdamW(groups, lr=hp["lr"], weight_decay=hp["weight_decay"])

    def lr_factor(self, step: int, total: int, warmup: int) -> float:
        """Learning-rate multiplier at iteration ``step`` of ``total`` (``warmup`` of them warm-up).

        ``schedule_step: iteration`` (UEO, MUST): during ``warmup`` iterations the constant
        ``warmup_lr``, then ``0.5 (1 + cos(pi t / T))`` at iteration ``t`` of all ``T``.
        ``schedule_step: epoch`` (Dassl, UPL): constant within an epoch; epoch ``e`` below
        ``warmup_epochs`` runs at ``warmup_lr``, later ones at ``0.5 (1 + cos(pi (e - w) / E))``
        with ``E = epochs`` (Dassl's ``ConstantWarmupScheduler`` around ``CosineAnnealingLR(T_max=E)``).
        """
        hp = self.hp
        if step < warmup:
            return hp["warmup_lr"] / hp["lr"]
        if hp["schedule"] == "constant" or total <= 0:
            return 1.0
        if hp.get("schedule_step") == "epoch":
            per_epoch = max(total // max(hp["epochs"], 1), 1)
            epoch = step // per_epoch
            return 0.5 * (1.0 + math.cos(math.pi * (epoch - hp["warmup_epochs"]) / hp["epochs"]))
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))

    @property
    def train_logit_scale(self) -> float:
        """The scale of the training logits under ``logit_scale_rule`` (``ClipClassifier.logit_scale``)."""
        return self.model.logit_scale(self.logit_scale_rule)

    def autocast(self):
        """Autocast for ``bf16``/``fp16`` precision; a no-op context otherwise."""
        return prec.autocast(self.precision, self.model.device)

    def step(self, loss: torch.Tensor) -> None:
        """One optimiser step on ``loss`` after checking that it is finite (loss-scaled under fp16)."""
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLoss(f"non-finite loss {loss.item()} in {self.name}")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.after_step()

    def record_loss(self, loss: float, step: int, total: int) -> None:
        """Add the loss of step ``step`` (1-based) of ``total`` to the budget-wide ``curve``."""
        self._window.append(float(loss))
        if step >= total or (step * HISTORY_POINTS) // total != ((step - 1) * HISTORY_POINTS) // total:
            self.curve.append(
                {"progress": round(step / max(total, 1), 4), "loss": sum(self._window) / len(self._window)}
            )
            self._window = []

    def set_lr(self, it: int, total: int, warmup: int) -> None:
        """Apply the schedule's factor at iteration ``it`` to every parameter group."""
        for g, base in zip(self.optimizer.param_groups, self._base_lrs()):
            g["lr"] = base * self.lr_factor(it, total, warmup)

    def adapt(self, data: UnlabeledData) -> None:
        """The default offline loop: ``epochs`` passes over the adapt set, one step per batch."""
        if not self.trains:
            return
        hp = self.hp
        self.before_adapt(data)
        indices = self.adapt_indices()
        n = len(data) if indices is None else len(indices)
        per_epoch = data.num_batches(hp["batch_size"], self.drop_last(n), n)
        total = hp["epochs"] * per_epoch
        warmup = hp["warmup_epochs"] * per_epoch
        bar = tqdm(total=total, desc=f"{self.name}", leave=False, disable=None)
        it = 0
        views = self.views()
        prof = self.profiler
        for epoch in range(hp["epochs"]):
            self.before_epoch(epoch, data)
            losses = []
            indices = self.adapt_indices()
            batches = data.batches(
                hp["batch_size"],
                shuffle=True,
                views=views,
                drop_last=self.drop_last(len(data) if indices is None else len(indices)),
                indices=indices,
                generator=self.generator,
            )
            while True:
                with prof.phase("data"):
                    batch = next(batches, None)
                if batch is None:
                    break
                self.set_lr(it, total, warmup)
                with prof.phase("forward"), self.autocast():
                    loss = self.loss(batch)
                with prof.phase("backward"):
                    self.step(loss)
                prof.count("adapt", len(batch["index"]))
                losses.append(loss.item())
                it += 1
                self.record_loss(losses[-1], it, total)
                bar.update(1)
            self.history.append({"epoch": epoch + 1, "loss": float(sum(losses) / max(len(losses), 1))})
        bar.close()

    def stream(self, data: UnlabeledData, order: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, Any]]:
        """Online and episodic regimes: one pass over ``data`` in ``order`` (default: its own), ``stream_step`` per batch.

        Yields ``(index, predict-style output)`` per batch, ``index`` being positions in ``data``.
        Each image's views come from its own generator, so they do not depend on the batching.
        The curve (``history``) gets :data:`HISTORY_POINTS` points (``epoch`` = fraction of the
        stream seen), each with the mean of the ``last_loss`` values the steps since the previous
        point left and the method's ``stream_stats``.
        """
        size = self.stream_batch_size()
        n = len(data) if order is None else len(order)
        total = data.num_batches(size, n=n)
        bar = tqdm(total=n, desc=f"{self.name} ({self.regime})", leave=False, disable=None, unit="img")
        window: list[float] = []
        marks = {max(1, round(total * (i + 1) / HISTORY_POINTS)) for i in range(HISTORY_POINTS)}
        prof = self.profiler
        for i, batch in enumerate(
            data.batches(size, shuffle=False, views=self.stream_views(), indices=order, image_seed=self.seed), start=1
        ):
            self.last_loss = None
            with prof.phase("forward"), self.autocast():
                out = self.stream_step(batch)
            prof.count("adapt", len(batch["index"]))
            if self.last_loss is not None:
                window.append(float(self.last_loss))
                self.record_loss(self.last_loss, i, total)
            if i in marks:
                entry = {"epoch": round(i / total, 4), **self.stream_stats()}
                if window:
                    entry["loss"] = sum(window) / len(window)
                    window = []
                if len(entry) > 1:
                    self.history.append(entry)
            bar.update(len(batch["index"]))
            yield batch["index"], out
        bar.close()

    def stream_stats(self) -> dict[str, float]:
        """Quantities recorded along the stream besides the loss (e.g. TDA's cache sizes)."""
        return {}

    def stream_views(self) -> dict[str, Augment]:
        """The views a stream batch holds (default: the test view only)."""
        return {"images": Augment("none")}

    def _base_lrs(self) -> list[float]:
        if not hasattr(self, "_lrs"):
            self._lrs = [g["lr"] for g in self.optimizer.param_groups]
        return self._lrs

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

    def describe(self) -> dict[str, Any]:
        """What the record says about how this run computed beyond its hyper-parameters (logit scale, views)."""
        return {
            "logit_scale": {"rule": self.logit_scale_rule, "value": round(self.train_logit_scale, 4)},
            "views": {k: v.describe() for k, v in self.views().items()} if self.trains else {},
        }
