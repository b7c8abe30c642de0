"""``ClipClassifier``: one open_clip model turned into a K-way classifier over the known classes.

It owns the prompts (fixed templates whose text features are computed once and cached, or a
learnable CoOp-style context), the image normalisation, and access to the parts of the image
encoder that methods adapt: its normalisation layers and, for ViTs, its patch tokens.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmark.core.paths import DATASETS_DIR, EMBEDDED_DIR, EMBEDDED_MODEL, EMBEDDED_TAG
from benchmark.model.precision import weights_dtype

DEFAULT_TEMPLATE = "a photo of a {}."
ENSEMBLE_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a rendering of a {}.",
    "a drawing of a {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "art of the {}.",
    "a sketch of a {}.",
    "a painting of a {}.",
)
"""A small template ensemble (a subset of CLIP's ImageNet prompts) for the ensemble option."""
IMAGENET_TEMPLATES = tuple(t("{}") for t in open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES)
"""CLIP's 80 ImageNet templates (MUST's classifier initialisation, salesforce/MUST templates.json:5-86)."""
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "single": (DEFAULT_TEMPLATE,),
    "ensemble": ENSEMBLE_TEMPLATES,
    "imagenet80": IMAGENET_TEMPLATES,
}
"""The fixed prompt sets a method's ``prompts`` hyper-parameter names."""

LOGIT_SCALE = 100.0
"""Fixed scale of the training and evaluation logits: ``100 * cos(image, text)``."""


class ModelError(ValueError):
    """A model name, weight tag or architecture that cannot serve the requested use."""


def _register_repo_configs() -> None:
    """Make the model configs shipped in ``datasets/*/`` (e.g. the tiny CLIP) known to open_clip."""
    for cfg in sorted(DATASETS_DIR.glob("*/*.json")):
        if cfg.stem not in open_clip.list_models():
            open_clip.add_model_config(cfg)


@dataclass
class LoadedClip:
    """A freshly built open_clip model with its tokenizer and test-time image facts."""

    model: nn.Module
    tokenizer: object
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


_CLIP_CACHE: dict[tuple[str, str], LoadedClip] = {}


def resolve_pretrained(model: str, pretrained: str | None) -> str | None:
    """Map ``pretrained`` to what open_clip accepts: a tag, a file path, or None (random init).

    ``embedded`` means the committed weights of the tiny model; ``none``/``random`` means random
    initialisation (used by tests); an existing path is used as is.
    """
    if pretrained is None or pretrained.lower() in ("", "none", "random"):
        return None
    if pretrained == EMBEDDED_TAG:
        path = EMBEDDED_DIR / f"{model}.pt"
        if not path.is_file():
            raise ModelError(
                f"--pretrained embedded is only defined for the shipped model {EMBEDDED_MODEL!r}; no file {path}"
            )
        return str(path)
    if Path(pretrained).expanduser().exists():
        return str(Path(pretrained).expanduser())
    if any(sep in pretrained for sep in ("/", "\\")) or pretrained.endswith((".pt", ".bin", ".safetensors")):
        raise ModelError(f"weights file not found: {pretrained}")
    tags = open_clip.list_pretrained_tags_by_model(model)
    if tags and pretrained not in tags:
        raise ModelError(f"unknown pretrained tag {pretrained!r} for {model}; known tags: {', '.join(tags)}")
    return pretrained


def load_clip(model: str, pretrained: str | None, device: str | torch.device = "cpu") -> LoadedClip:
    """Build an open_clip model (cached per process; callers get a deep copy they may modify)."""
    _register_repo_configs()
    if model not in open_clip.list_models():
        raise ModelError(f"unknown open_clip model {model!r}; e.g. {EMBEDDED_MODEL}, ViT-B-16, RN50")
    key = (model, str(resolve_pretrained(model, pretrained)))
    if key not in _CLIP_CACHE:
        clip = open_clip.create_model(model, pretrained=resolve_pretrained(model, pretrained), device="cpu")
        clip.eval()
        pp = clip.visual.preprocess_cfg if hasattr(clip.visual, "preprocess_cfg") else {}
        size = pp.get("size", clip.visual.image_size)
        size = size[0] if isinstance(size, (tuple, list)) else size
        _CLIP_CACHE[key] = LoadedClip(
            model=clip,
            tokenizer=open_clip.get_tokenizer(model),
            image_size=int(size),
            mean=tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN)),
            std=tuple(pp.get("std", open_clip.OPENAI_DATASET_STD)),
        )
    base = _CLIP_CACHE[key]
    return LoadedClip(copy.deepcopy(base.model).to(device), base.tokenizer, base.image_size, base.mean, base.std)


def prompt_text(classname: str) -> str:
    """Class names are written with spaces in prompts (``Alarm_Clock`` -> ``Alarm Clock``)."""
    return classname.replace("_", " ")


class PromptContext(nn.Module):
    """A learnable CoOp context of ``n_ctx`` token embeddings shared by all classes.

    The prompt of class k is ``[SOS] ctx_1 .. ctx_n <name_k> . [EOS]``; the context is
    initialised from the token embeddings of ``init`` when it has exactly ``n_ctx`` tokens
    (e.g. "a photo of a" for 4 tokens), otherwise from N(0, 0.02) as in CoOp. It is created in
    the text tower's weight type, float16 for a model converted as ``clip.load`` does on a GPU
    (as UEO's and UPL's contexts are).
    """

    def __init__(self, clip: nn.Module, tokenizer, classnames: list[str], n_ctx: int, init: str | None):
        super().__init__()
        embed = clip.token_embedding
        dtype = clip.transformer.get_cast_dtype()
        init_ids = tokenizer([init])[0] if init else None
        n_init = int((init_ids > 0).sum()) - 2 if init else 0
        if init and n_init == n_ctx:
            with torch.no_grad():
                ctx = embed(init_ids.to(embed.weight.device))[1 : 1 + n_ctx].clone()
        else:
            ctx = torch.randn(n_ctx, embed.weight.shape[1]) * 0.02
        self.ctx = nn.Parameter(ctx.to(dtype))
        placeholder = " ".join(["X"] * n_ctx)
        tokens = tokenizer([f"{placeholder} {prompt_text(c)}." for c in classnames])
        self.register_buffer("tokens", tokens, persistent=False)
        with torch.no_grad():
            self.register_buffer("token_embeds", embed(tokens.to(embed.weight.device)).float(), persistent=False)
        self.n_ctx = n_ctx

    def embeddings(self, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """(K, L, D) prompt embeddings with the shared context spliced in after SOS; for a batch of
        contexts ``ctx`` of shape (B, n_ctx, D), the (B * K, L, D) embeddings of every pair."""
        k = self.token_embeds.shape[0]
        if ctx is None:
            ctx = self.ctx.unsqueeze(0)
        b = ctx.shape[0]
        ctx = ctx.unsqueeze(1).expand(b, k, -1, -1).reshape(b * k, self.n_ctx, -1).to(self.token_embeds.dtype)
        embeds = self.token_embeds.repeat(b, 1, 1)
        return torch.cat([embeds[:, :1], ctx, embeds[:, 1 + self.n_ctx :]], dim=1)


class ClipClassifier(nn.Module):
    """K-way classifier over the known classes: ``logits = 100 * cos(f(x), g(prompt_k))``.

    Images arrive as float tensors in [0, 1] at the model's resolution; the classifier applies the
    model's mean/std itself so that augmentation code never needs to know them.
    """

    def __init__(
        self,
        loaded: LoadedClip,
        classnames: list[str],
        templates: tuple[str, ...] = (DEFAULT_TEMPLATE,),
    ):
        super().__init__()
        self.clip = loaded.model
        self.tokenizer = loaded.tokenizer
        self.image_size = loaded.image_size
        self.classnames = list(classnames)
        self.templates = tuple(templates)
        self.register_buffer("mean", torch.tensor(loaded.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(loaded.std).view(1, 3, 1, 1), persistent=False)
        self.prompt: PromptContext | None = None
        self._text_cache: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    @property
    def is_vit(self) -> bool:
        return isinstance(self.clip.visual, open_clip.transformer.VisionTransformer)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[0,1] images -> the model's normalised input."""
        return (images - self.mean) / self.std

    def _fixed_text_features(self, templates: tuple[str, ...]) -> torch.Tensor:
        """Template-averaged, normalised text features of the class names (no gradient)."""
        feats = []
        with torch.no_grad():
            for name in self.classnames:
                tokens = self.tokenizer([t.format(prompt_text(name)) for t in templates]).to(self.device)
                f = F.normalize(self.clip.encode_text(tokens).float(), dim=-1).mean(0)
                feats.append(F.normalize(f, dim=-1))
        return torch.stack(feats)

    def text_features(self) -> torch.Tensor:
        """(K, D) normalised float32 class text features: cached for fixed prompts, live for a learnable one.

        Features are normalised and compared in float32 whatever the weights' type, so cosines,
        logits and losses are float32 under ``fp16_weights`` too (OpenAI's code keeps them in fp16).
        """
        if self.prompt is not None:
            text = self._encode_prompt_embeddings(self.prompt.embeddings(), self.prompt.tokens)
            return F.normalize(text.float(), dim=-1)
        if self._text_cache is None or self._text_cache.device != self.device:
            self._text_cache = self._fixed_text_features(self.templates)
        return self._text_cache

    def text_features_for(self, ctx: torch.Tensor) -> torch.Tensor:
        """(B, K, D) normalised text features of a batch of contexts (B, n_ctx, D): one text-encoder
        pass for all B x K prompts (TPT tunes one context per test image this way)."""
        if self.prompt is None:
            raise ModelError("text_features_for needs a learnable prompt (enable_prompt_learning)")
        b = ctx.shape[0]
        tokens = self.prompt.tokens.repeat(b, 1)
        text = self._encode_prompt_embeddings(self.prompt.embeddings(ctx), tokens)
        return F.normalize(text.float(), dim=-1).view(b, self.num_classes, -1)

    def class_embeddings(self, templates: tuple[str, ...]) -> torch.Tensor:
        """(K, D) normalised text features for an arbitrary template set (e.g. to initialise a head)."""
        return self._fixed_text_features(tuple(templates))

    def _encode_prompt_embeddings(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """open_clip's ``encode_text`` from token embeddings instead of token ids (for CoOp).

        With the causal mask of CLIP's text tower (and pooling at the end token) the positions
        after the last end token change nothing, so the sequences are cut there: the same
        features for less work (prompts fill about 20 of the 32 or 77 positions).
        """
        clip = self.clip
        cast = clip.transformer.get_cast_dtype()
        mask = clip.attn_mask
        if clip.text_pool_type == "argmax" and mask is not None:
            length = int(tokens.argmax(dim=-1).max()) + 1
            x, tokens, mask = x[:, :length], tokens[:, :length], mask[:length, :length]
        x = x.to(cast) + clip.positional_embedding[: x.shape[1]].to(cast)
        x = clip.transformer(x, attn_mask=mask)
        x = clip.ln_final(x)
        x = open_clip.transformer.text_global_pool(
            x, tokens, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None)
        )
        if isinstance(clip.text_projection, nn.Linear):
            return clip.text_projection(x)
        return x @ clip.text_projection

    def enable_prompt_learning(self, n_ctx: int, init: str | None = "a photo of a") -> nn.Parameter:
        """Replace the fixed prompts by a learnable shared context; returns its parameter."""
        if not hasattr(self.clip, "token_embedding"):
            raise ModelError("prompt learning needs an open_clip CLIP model with its own text transformer")
        self.prompt = PromptContext(self.clip, self.tokenizer, self.classnames, n_ctx, init).to(self.device)
        self._text_cache = None
        return self.prompt.ctx

    @property
    def checkpoint_logit_scale(self) -> float:
        """The weights' own ``logit_scale.exp()``: 100 for OpenAI's CLIP (its trained scale sits at the
        clamp), 76.4 for the embedded ``clipbench-tiny``, 1/0.07 for a randomly initialised model.

        What TPT, C-TPT, TPS and UPL scale their training logits by (their code reads the
        checkpoint, e.g. azshue/TPT ``clip/custom_clip.py:284, 317``); UEO, InfoMax and MUST write a
        fixed 100 (:data:`LOGIT_SCALE`). Every method's predicted logits stay ``100 * cos``.
        """
        scale = getattr(self.clip, "logit_scale", None)
        if scale is None:
            return LOGIT_SCALE
        return float(scale.detach().float().exp())

    def logit_scale(self, rule: str) -> float:
        """The training logits' scale under a method's ``logit_scale_rule``: ``fixed100`` (:data:`LOGIT_SCALE`)
        or ``checkpoint`` (:attr:`checkpoint_logit_scale`)."""
        if rule == "checkpoint":
            return self.checkpoint_logit_scale
        if rule == "fixed100":
            return LOGIT_SCALE
        raise ValueError(f"unknown logit scale rule {rule!r}; known: fixed100, checkpoint")

    @property
    def input_dtype(self) -> torch.dtype:
        """What images are cast to before the image encoder (float16 for ``fp16_weights``)."""
        return weights_dtype(self.visual)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, D) normalised image features of [0,1] images."""
        x = self.normalize(images).to(self.input_dtype)
        return F.normalize(self.clip.encode_image(x).float(), dim=-1)

    def cosine(self, images: torch.Tensor) -> torch.Tensor:
        """(N, K) cosine similarities between images and class prompts."""
        return self.image_features(images) @ self.text_features().t()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, K) logits ``100 * cos``."""
        return LOGIT_SCALE * self.cosine(images)

    def norm_layers(self, include_downsample: bool = True) -> list[tuple[str, nn.Module]]:
        """The image encoder's normalisation layers with affine parameters.

        ViT: ``ln_pre``, ``ln_post`` and every block's ``ln_1``/``ln_2``. ResNet: every BatchNorm;
        with ``include_downsample=False`` those inside the ``downsample`` shortcuts are left out
        (UEO's recipe adapts only the stem and bottleneck ``bn1/bn2/bn3``).
        """
        layers = []
        for name, m in self.visual.named_modules():
            if isinstance(m, nn.LayerNorm) and name.split(".")[-1] in ("ln_pre", "ln_post", "ln_1", "ln_2"):
                layers.append((name, m))
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                if include_downsample or "downsample" not in name:
                    layers.append((name, m))
        if not layers:
            raise ModelError(f"no normalisation layers found in the image encoder {type(self.visual).__name__}")
        return layers

    def vit_forward(
        self, images: torch.Tensor, mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ViT forward that can mask patches: returns (projected image embedding, patch tokens).

        ``mask`` is a bool (N, P) tensor over the P patches; masked patch embeddings are replaced by
        ``mask_token`` before the position embeddings are added (as in BEiT/MUST).
        """
        if not self.is_vit:
            raise ModelError(
                f"patch tokens need a ViT image encoder (e.g. ViT-B-16); this model is {type(self.visual).__name__}"
            )
        v = self.visual
        x = v.conv1(self.normalize(images).to(self.input_dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        if mask is not None:
            x = torch.where(mask.unsqueeze(-1), mask_token.to(x.dtype).expand_as(x), x)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.ln_pre(v.patch_dropout(x))
        x = v.transformer(x)
        pooled, tokens = v._pool(x)
        if v.proj is not None:
            pooled = pooled @ v.proj
        return pooled, tokens

    @property
    def patch_size(self) -> int:
        ps = self.visual.patch_size
        return ps[0] if isinstance(ps, (tuple, list)) else int(ps)
