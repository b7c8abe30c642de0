"""DPE: dual prototype evolving (Zhang et al., NeurIPS 2024), online over the test stream.

Recipe (zhangce01/DPE-CLIP ``main_dpe.py``, ``utils.py``, ``configs/*.yaml`` at fecae5a, with
``info-nce-pytorch`` 0.1.4; file and line of each value in ``docs/recipes.md``). Two kinds of
prototypes evolve along the stream, and every test image gets its own residuals:

- **visual prototypes**: per zero-shot pseudo-label class a priority queue of at most
  ``shot_capacity`` (3) test features, lowest (normalised) entropy kept, as TDA's positive cache;
  the class prototype is the mean of its queue (not re-normalised);
- **textual prototypes**: the global class text features, an entropy-gated running mean of the
  per-image adapted text features: when the adapted prediction's entropy ``H / log2 K`` (H in
  nats, TDA's normalisation) is below ``gate`` (0.1), ``T <- T n/(n+1) + t/(n+1)`` with ``n`` the
  number of updates so far *including this one*: the zero-shot features count as one sample, so
  the first update weighs 1/2. ``T`` is never re-normalised (only its uses are);
- **per-image residuals**: for each test image, a text residual (K x D) and a residual of the
  cached prototypes (M x D, the M classes in the queues) are created at zero, one AdamW step
  (``lr``, eps 1e-3, weight decay 0.1, fresh state) minimises
  ``H(softmax(100 x.t_k + A(x))) + align * InfoNCE(prototypes, t[cached classes])`` with the
  cache term ``A(x) = alpha exp(-beta (1 - x.p_c))`` on each cached class c; the image is then
  predicted with both residuals, and both are discarded (the next image starts at zero again).

Order per image, as in ``main_dpe.py:216-296``: summarise the image with the current global text
features (with ``views > 1``: the mean feature and logits of its 10% lowest-entropy views, the
entropy of their mean probability), put it in its pseudo-label's queue (so it can match itself),
train the residuals, predict, then update the global text features if the prediction is
confident.

The state that persists along the stream (the queues, the global text features and their update
count) lives in this object and ``reset`` restores it. Only the image encoder is independent of
that state, so ``batch_size`` images (and their views) are encoded at once and the per-image steps
then run one after the other, in stream order: the result does not depend on ``batch_size``.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmark.adapt.adapter import Adapter, NonFiniteLoss
from benchmark.adapt.augment import Augment
from benchmark.adapt.view_method import ViewMethod
from benchmark.adapt.views import confident_views, marginal_entropy
from benchmark.model.clip import LOGIT_SCALE
from benchmark.registry import register_method


def info_nce(query: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE without explicit negatives (info-nce-pytorch 0.1.4 ``info_nce``, ``reduction='mean'``).

    Rows are L2-normalised, ``logits = q @ k.T / temperature``, and the positive of query i is
    key i (the other keys are its negatives): the mean cross-entropy with labels ``0..N-1``.
    """
    q, k = F.normalize(query, dim=-1), F.normalize(keys, dim=-1)
    logits = q @ k.t() / temperature
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))


def entropy_of(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` of one (K,) logit vector, as DPE's ``avg_entropy`` of one row."""
    return marginal_entropy(logits.view(1, 1, -1))[0]


def residual_gradients(
    x: torch.Tensor,
    text: torch.Tensor,
    text_norms: torch.Tensor,
    keys: torch.Tensor,
    key_norms: torch.Tensor,
    classes: torch.Tensor,
    alpha: float,
    beta: float,
    align: float,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPE's loss of one image and its gradients with respect to both residuals at zero, in closed form.

    At zero residuals the text features are ``t_k = T_k / |T_k|`` (``text``, (K, D), with
    ``text_norms`` = ``|T_k|``) and the cached prototypes ``p_c = P_c / |P_c|`` (``keys``, (M, D),
    of the ascending ``classes``). The loss (main_dpe.py:233-241) is

        L = H(softmax(l)) + align * InfoNCE(p, t[classes]),
        l_k = 100 x . t_k + [k cached] alpha exp(-beta (1 - x . p_k)),

    and the gradient with respect to a residual r added before the normalisation ``v / |v|`` is
    ``(I - u u^T) g / |v|`` for the gradient g with respect to the unit vector u. Equal to autograd
    through the same formulas (tests), without building a graph for every test image.
    Returns (loss, (K, D) gradient of the text residual, (M, D) gradient of the prototypes' residual).
    """
    affinity = keys @ x
    cache = alpha * torch.exp(-(beta - beta * affinity))
    logits = (LOGIT_SCALE * (text @ x)).index_add(0, classes, cache)
    log_p = logits.log_softmax(0)
    p = log_p.exp()
    entropy = -(p * log_p).sum()
    grad_logits = -p * (log_p + entropy)  # dH/dl_k
    g_text = (LOGIT_SCALE * grad_logits)[:, None] * x
    g_keys = (grad_logits[classes] * cache * beta)[:, None] * x
    cached_text = text[classes]
    log_a = (keys @ cached_text.t() / temperature).log_softmax(1)
    nce = -log_a.diagonal().mean()
    g_sim = (log_a.exp() - torch.eye(len(classes), device=x.device)) * (align / (len(classes) * temperature))
    g_keys = g_keys + g_sim @ cached_text
    g_text = g_text.index_add(0, classes, g_sim.t() @ keys)
    g_text = (g_text - text * (text * g_text).sum(1, keepdim=True)) / text_norms
    g_keys = (g_keys - keys * (keys * g_keys).sum(1, keepdim=True)) / key_norms
    return entropy + align * nce, g_text, g_keys


def adamw_first_step(
    grad: torch.Tensor, lr: float, eps: float, betas: tuple[float, float] = (0.9, 0.999)
) -> torch.Tensor:
    """The parameter after one step of a fresh AdamW from zero, in ``grad``'s type (torch's arithmetic).

    torch's ``AdamW.step`` on a zero parameter: the weight decay multiplies zero (no effect),
    ``m = lerp(0, g, 1 - b1)``, ``v = 0 + (1 - b2) g g``, ``r = -lr / (1 - b1) * m / (sqrt(v) /
    sqrt(1 - b2) + eps)``: about ``-lr g / (|g| + eps)``. In fp16 ``v`` underflows for
    ``|g| < ~8e-3`` and the step becomes ``-lr g / eps`` (DPE's fp16 residuals with eps 1e-3).
    The same ops as ``torch.optim.AdamW`` (single-tensor path), so bit-identical to it (tests).
    """
    zero = torch.zeros_like(grad)
    m = zero.lerp(grad, 1 - betas[0])
    v = torch.addcmul(zero, grad, grad, value=1 - betas[1])
    denom = (v.sqrt() / (1 - betas[1]) ** 0.5).add_(eps)
    return torch.addcdiv(zero, m, denom, value=-lr / (1 - betas[0]))


@contextlib.contextmanager
def one_cpu_thread(device: torch.device):
    """One intra-op thread on a CPU for the per-image steps (restored afterwards; nothing on a GPU).

    Their tensors are tiny (K x D), so waking a second thread costs more than it saves, and on a
    busy machine much more (a per-image step took 35 ms with two threads against 1 ms with one).
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class PrototypeQueues:
    """DPE's visual prototypes: per class a priority queue of (feature, entropy), at most ``capacity``.

    ``offer`` is TDA's ``update_cache`` (``main_dpe.py:40-52``): below capacity the entry is
    appended; at capacity it replaces the highest-entropy entry if its entropy is lower; entries
    stay sorted by entropy. ``prototypes[c]`` is the mean of class c's entries, kept up to date.
    """

    def __init__(self, num_classes: int, dim: int, capacity: int, device: torch.device):
        self.capacity = capacity
        self.entries: dict[int, list[tuple[torch.Tensor, float]]] = {}
        self.prototypes = torch.zeros(num_classes, dim, device=device)
        self.present = torch.zeros(num_classes, dtype=torch.bool, device=device)

    def offer(self, label: int, feature: torch.Tensor, entropy: float) -> None:
        items = self.entries.setdefault(label, [])
        if len(items) < self.capacity:
            items.append((feature, entropy))
        elif entropy < items[-1][1]:
            items[-1] = (feature, entropy)
        else:
            return
        items.sort(key=lambda item: item[1])
        proto = torch.zeros_like(feature)
        for f, _ in items:  # main_dpe.py:142-144: the sum of entry / count, in queue order
            proto += f / len(items)
        self.prototypes[label] = proto
        self.present[label] = True

    def __len__(self) -> int:
        return sum(len(v) for v in self.entries.values())

    def classes(self) -> torch.Tensor:
        """The cached classes in ascending order (``sorted(cache.keys())``)."""
        return self.present.nonzero().squeeze(1)


@register_method
class DPE(ViewMethod):
    """Evolving textual and visual prototypes with per-image residuals trained by one AdamW step.

    Defaults: DPE's ImageNet configuration (``configs/imagenet.yaml``: alpha 6, beta 5, lr 6e-4
    for both residuals, align 0.5) and its ImageNet setting of views: 64 (the original and 63
    AugMix views: random resized crop 0.08-1, flip, AugMix), the 10% lowest-entropy ones adapt,
    the original view is predicted (``predict_view=original``; ``confident``: ImageNet-A's mean of
    the confident views; ``views=1``: the cross-domain data sets' single view for both).
    ``batch_size`` images are encoded together (a speed knob that changes no result).
    """

    name = "dpe"
    regimes = ("online",)
    official_precision = "fp16_weights"
    """``clip.load``'s fp16 model under ``torch.cuda.amp.autocast`` (main_dpe.py:198, 311); residuals
    created in fp16 (main_dpe.py:163, 177) and updated by AdamW in fp16."""
    choices = {**Adapter.choices, "predict_view": ("original", "confident")}
    defaults = {
        "optimizer": "adamw",
        "lr": 6e-4,
        "image_lr_mult": 1.0,
        "weight_decay": 0.1,
        "eps": 1e-3,
        "shot_capacity": 3,
        "alpha": 6.0,
        "beta": 5.0,
        "align": 0.5,
        "temperature": 0.01,
        "gate": 0.1,
        "views": 64,
        "selection": 0.1,
        "augmix": True,
        "crop_scale": [0.08, 1.0],
        "interpolation": "bilinear",
        "predict_view": "original",
        "batch_size": 64,
    }

    def configure(self) -> list[dict]:
        """Eval mode; the two residual templates (zero, never updated: each image trains its own copies)."""
        hp = self.hp
        if hp["views"] < 1 or not 0 < hp["selection"] <= 1 or hp["shot_capacity"] < 1:
            raise ValueError("dpe needs views >= 1, 0 < selection <= 1 and shot_capacity >= 1")
        self.model.eval()
        k, d = self.model.text_features().shape
        # fp16 residuals updated in fp16 under the official precision (main_dpe.py:163, 177)
        self.residual_dtype = torch.float16 if self.precision == "fp16_weights" else torch.float32
        device = self.model.device
        self.text_residual = nn.Parameter(torch.zeros(k, d, dtype=self.residual_dtype, device=device))
        self.cache_residual = nn.Parameter(torch.zeros(k, d, dtype=self.residual_dtype, device=device))
        self.start_stream()
        return [{"params": [self.text_residual]}, {"params": [self.cache_residual], "lr_mult": hp["image_lr_mult"]}]

    def start_stream(self) -> None:
        """The state a new stream starts from: zero-shot text features, empty queues, no update yet."""
        text = self.model.text_features()
        self.text_global = text.detach().clone()
        self.updates = 0
        self.queues = PrototypeQueues(text.shape[0], text.shape[1], self.hp["shot_capacity"], text.device)

    def reset(self) -> None:
        super().reset()
        self.start_stream()

    # ---- views -----------------------------------------------------------------------------------

    def views(self) -> dict[str, Augment]:
        """The views each image adapts on, as recorded: the augmented ones (none with ``views=1``)."""
        return {"images": self.view_augment() if self.hp["views"] > 1 else Augment("none")}

    def stream_views(self) -> dict[str, Augment]:
        return {"images": Augment("none")}

    # ---- one image -----------------------------------------------------------------------------------

    def summarise(self, feats: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """DPE's ``get_clip_logits`` (utils.py:132-163) on (V, D) features: feature, logits and entropy.

        One view: its feature, ``100 cos`` and the entropy of their softmax. Several: the mean
        feature (not re-normalised) and mean logits of the ``selection`` lowest-entropy views and
        the entropy of their mean probability.
        """
        logits = LOGIT_SCALE * feats @ text.t()
        if feats.shape[0] == 1:
            return feats[0], logits[0], entropy_of(logits[0])
        keep = confident_views(logits.unsqueeze(0), self.hp["selection"])[0]
        chosen = logits[keep]
        return feats[keep].mean(0), chosen.mean(0), marginal_entropy(chosen.unsqueeze(0))[0]

    def cache_logits(self, feature: torch.Tensor, prototypes: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(K,) ``alpha exp(-(beta - beta f . p_c))`` on each cached class c (main_dpe.py:154-157)."""
        hp = self.hp
        cache = hp["alpha"] * torch.exp(-(hp["beta"] - hp["beta"] * (prototypes @ feature)))
        return torch.zeros(self.model.num_classes, device=feature.device).index_add(0, classes, cache)

    def image_step(self, feats: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Adapt on one image's (V, D) view features and predict it: ((K,) logits, loss).

        main_dpe.py:216-296: summarise with the current global text features, queue, one AdamW
        step on zero residuals (gradients in closed form: ``residual_gradients``), predict with
        both residuals, then the gated update of the global text features. The residuals are
        dropped afterwards.
        """
        hp = self.hp
        log2k = math.log2(self.model.num_classes)
        norms = self.text_global.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        text = self.text_global / norms
        x, z, h = self.summarise(feats, text)
        self.queues.offer(int(z.argmax()), x, float(h) / log2k)
        classes = self.queues.classes()
        protos = self.queues.prototypes[classes]
        key_norms = protos.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        loss, g_text, g_keys = residual_gradients(
            x,
            text,
            norms,
            protos / key_norms,
            key_norms,
            classes,
            hp["alpha"],
            hp["beta"],
            hp["align"],
            hp["temperature"],
        )
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"non-finite loss {loss.item()} in dpe")
        # both residuals start at zero for every image (main_dpe.py:217-218, 228), in the residuals' type
        text_res = adamw_first_step(g_text.to(self.residual_dtype), hp["lr"], hp["eps"])
        key_res = adamw_first_step(g_keys.to(self.residual_dtype), hp["lr"] * hp["image_lr_mult"], hp["eps"])
        text = F.normalize(self.text_global + text_res.float(), dim=-1)
        keys = F.normalize(protos + key_res.float(), dim=-1)
        if hp["predict_view"] == "original":
            f, z = feats[0], LOGIT_SCALE * feats[0] @ text.t()
        else:
            f, z, _ = self.summarise(feats, text)
        final = z + self.cache_logits(f, keys, classes)
        if float(entropy_of(final)) / log2k < hp["gate"]:
            self.updates += 1  # the zero-shot features count as one sample: the first update weighs 1/2
            n = self.updates
            self.text_global = self.text_global * (n / (n + 1)) + text * (1 / (n + 1))
        return final, float(loss)

    @torch.no_grad()
    def stream_step(self, batch: dict) -> torch.Tensor:
        """Encode the batch's images and views at once, then adapt on and predict each image in order."""
        feats = self.view_features(batch)
        out, losses = [], []
        with one_cpu_thread(feats.device):
            for f in feats:
                logits, loss = self.image_step(f)
                out.append(logits)
                losses.append(loss)
        self.last_loss = sum(losses) / len(losses)
        return torch.stack(out).float()

    def stream_stats(self) -> dict[str, float]:
        """How full the queues are and how often the global text features were updated."""
        return {"queued": float(len(self.queues)), "text_updates": float(self.updates)}
