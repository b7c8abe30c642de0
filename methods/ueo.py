"""UEO (Liang et al., ICML 2024): universal entropy optimisation of a prompt and the image norms."""

from __future__ import annotations

import torch
import torch.nn as nn

from benchmark.adapt.adapter import Adapter
from benchmark.adapt.losses import ueo_confidence_weights, ueo_loss
from benchmark.adapt.unlabeled import UnlabeledData
from benchmark.model.features import frozen_image_features
from benchmark.registry import register_method


@register_method
class UEO(Adapter):
    """Learn a shared 4-token prompt context and the image encoder's norm affines with ``ueo_loss``.

    Trainable: the CoOp context (initialised from ``ctx_init``) and the weight and bias of every
    image-encoder normalisation layer outside ResNet ``downsample`` shortcuts (ViT: ln_pre,
    ln_post, ln_1, ln_2; ResNet: stem and bottleneck bn1/bn2/bn3). The whole model stays in eval
    mode, so BatchNorm keeps its pre-trained statistics.

    Sample weights ``w_i`` are the zero-shot MSP of unscaled cosines on the un-augmented adapt
    set, computed once in ``before_adapt`` and looked up by ``batch["index"]``.

    Hyper-parameters besides the loop's: ``lam`` (weight of the marginal-entropy term),
    ``n_ctx`` (context tokens) and ``ctx_init`` (their initial words; "" = random N(0, 0.02)).
    Every default is the official value (tim-learn/UEO ``demo.py``; file and line of each in
    ``docs/recipes.md``); DomainNet's 5 epochs are that data set's recipe (``demo.sh``).
    """

    name = "ueo"
    official_precision = "fp16_weights"
    """``clip.load`` on a GPU: fp16 weights and an fp16 context, norms in fp32 (demo.py:22, 367)."""
    defaults = {
        "epochs": 50,
        "batch_size": 64,
        "optimizer": "sgd",
        "lr": 1e-4,
        "momentum": 0.0,
        "nesterov": False,
        "weight_decay": 0.0,
        "schedule": "cosine",
        "schedule_step": "iteration",
        "augment": "rrc",
        "crop_scale": [0.5, 1.0],
        "interpolation": "bicubic",
        "drop_last": False,
        "lam": 1.0,
        "n_ctx": 4,
        "ctx_init": "a photo of a",
    }
    weights: torch.Tensor | None = None
    """(N,) confidence weight of every adapt image, indexed by ``batch["index"]``."""

    def configure(self) -> list[nn.Parameter]:
        """Eval mode everywhere; the prompt context and the (non-downsample) norm affines train."""
        ctx = self.model.enable_prompt_learning(self.hp["n_ctx"], self.hp["ctx_init"] or None)
        self.model.eval()
        params = [ctx]
        for _, layer in self.model.norm_layers(include_downsample=False):
            params += [layer.weight, layer.bias]
        for p in params:
            p.requires_grad_(True)
        return params

    @torch.no_grad()
    def zero_shot_confidence(self, data: UnlabeledData) -> torch.Tensor:
        """(N,) ``max_k softmax_k(cos_ik)`` of every adapt image under zero-shot CLIP.

        Uses the fixed-prompt text features (``class_embeddings`` never sees the learnable
        context, and the text encoder is frozen) and un-augmented images. Computed in float32
        (no autocast): at temperature 1 the weights differ in the third decimal, below bf16's
        resolution of cosines. The image features come from the feature cache when the runner
        attached one (the encoder has not been updated yet).
        """
        text = self.model.class_embeddings(self.model.templates)
        return ueo_confidence_weights(frozen_image_features(self.model, data.images) @ text.t())

    def before_adapt(self, data: UnlabeledData) -> None:
        """Fix the confidence weights before any update, i.e. from the zero-shot model."""
        self.weights = self.zero_shot_confidence(data)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``ueo_loss`` of the batch's ``100 * cos`` logits with its images' fixed weights."""
        if self.weights is None:
            raise RuntimeError("ueo: confidence weights are computed in before_adapt(); call adapt()")
        return ueo_loss(self.model(batch["images"]), self.weights[batch["index"]], self.hp["lam"])
