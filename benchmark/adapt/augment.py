"""Train-time views of the adapt images, computed batch-wise on tensors (CPU or GPU).

The official loaders crop from the whole decoded image (``RandomResizedCrop`` applied to the
file's image, not to a centre crop), so augmentations here read the ``full`` view of each image
(the whole image with its long side at the model resolution R, edge-padded to R x R, with its
valid height and width; see ``benchmark.data.images``) and resample the crop with one
``affine_grid`` + ``grid_sample`` call per batch. The crop boxes are drawn exactly as
torchvision's ``RandomResizedCrop.get_params`` draws them (ten tries, then a centre crop of
clamped aspect ratio), in the pixel units of that view.

An :class:`Augment` is a frozen, named recipe (kind plus parameters); methods build theirs from
their hyper-parameters, and ``describe()`` goes into the run record.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

KINDS = ("none", "rrc", "crop", "randaugment", "augmix")
"""``none``: the test view (centre crop); ``rrc``: random resized crop (+ flip) of the whole image;
``crop``: resize the short side to R, then a random R x R crop (MUST's weak view); ``randaugment``:
``rrc`` followed by timm's RandAugment (MUST's strong view); ``augmix``: ``rrc`` followed by
TPT's AugMix (``benchmark.adapt.augmix``; TPT's and TDA's test views)."""


@dataclass
class ImageBatch:
    """One batch of adapt images: the test view and, when loaded, the whole-image view and its sizes."""

    center: torch.Tensor
    full: torch.Tensor | None = None
    sizes: torch.Tensor | None = None

    def center_float(self) -> torch.Tensor:
        return self.center.float().div(255.0)

    def select(self, rows) -> ImageBatch:
        """The images at ``rows`` (an index, slice or index tensor), every view alike."""
        pick = lambda t: t[rows] if t is not None else None  # noqa: E731
        return ImageBatch(pick(self.center), pick(self.full), pick(self.sizes))

    def repeat(self, times: int) -> ImageBatch:
        """Each image ``times`` times in a row (``[a, a, b, b]``): the raw material of per-image views."""
        rep = lambda t: t.repeat_interleave(times, dim=0) if t is not None else None  # noqa: E731
        return ImageBatch(rep(self.center), rep(self.full), rep(self.sizes))

    def whole(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(float [0,1] whole-image view, (B, 2) valid heights and widths); the centre view if no full view."""
        if self.full is None:
            r = self.center.shape[-1]
            return self.center_float(), torch.full((self.center.shape[0], 2), r, dtype=torch.float64)
        return self.full.float().div(255.0), self.sizes.double()


def rrc_boxes(
    sizes: torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    attempts: int = 10,
) -> torch.Tensor:
    """(B, 4) crop boxes ``(top, left, height, width)`` in pixels, torchvision's ``get_params`` batched.

    Per image of valid size ``(h, w)``: up to ten tries of a target area ``h w U(scale)`` and a
    log-uniform aspect ratio in ``ratio``, ``cw = round(sqrt(area r))``, ``ch = round(sqrt(area / r))``;
    the first try that fits is placed uniformly at random; if none fits, the centre crop of the
    whole image with its aspect ratio clamped to ``ratio``. All tries are drawn at once (drawing
    the unused ones too leaves the distribution of the accepted box unchanged).
    """
    n = sizes.shape[0]
    h, w = sizes[:, 0].double().unsqueeze(1), sizes[:, 1].double().unsqueeze(1)
    u = torch.rand(4, n, attempts, generator=generator, dtype=torch.float64)
    area = h * w * (scale[0] + (scale[1] - scale[0]) * u[0])
    r = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[1])
    cw = torch.round(torch.sqrt(area * r))
    ch = torch.round(torch.sqrt(area / r))
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    top = torch.floor(u[2] * (h - ch + 1))
    left = torch.floor(u[3] * (w - cw + 1))
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)
    tries = torch.stack([top, left, ch, cw], dim=2).gather(1, first.unsqueeze(2).expand(-1, -1, 4)).squeeze(1)
    h, w = h.squeeze(1), w.squeeze(1)
    aspect = w / h
    fw = torch.where(aspect < ratio[0], w, torch.where(aspect > ratio[1], torch.round(h * ratio[1]), w))
    fh = torch.where(aspect < ratio[0], torch.round(w / ratio[0]), h)
    fallback = torch.stack([torch.floor((h - fh) / 2), torch.floor((w - fw) / 2), fh, fw], dim=1)
    return torch.where(fits.any(dim=1, keepdim=True), tries, fallback)


def image_generators(seed: int, index: torch.Tensor) -> list[torch.Generator]:
    """One generator per image, seeded by ``seed`` and the image's position: views that do not
    depend on how images are batched (online and episodic streams)."""
    return [torch.Generator().manual_seed(seed * 1_000_003 + int(i)) for i in index.tolist()]


def resize_crop_boxes(sizes: torch.Tensor, out: int, generator: torch.Generator) -> torch.Tensor:
    """(B, 4) boxes of ``Resize(out) + RandomCrop(out)``: a square of the short side at a random offset.

    With the short side resized to ``out`` the long side is ``round(long * out / short)``; the
    crop offset is uniform over the integers ``0 .. long_r - out``, mapped back to pixels.
    """
    h, w = sizes[:, 0].double(), sizes[:, 1].double()
    short = torch.minimum(h, w)
    long_r = torch.round(torch.maximum(h, w) * out / short)
    off = torch.floor(torch.rand(sizes.shape[0], generator=generator, dtype=torch.float64) * (long_r - out + 1))
    off = off * short / out
    top = torch.where(h > w, off, torch.zeros_like(off))
    left = torch.where(h > w, torch.zeros_like(off), off)
    return torch.stack([top, left, short, short], dim=1)


def crop_resample(
    images: torch.Tensor, boxes: torch.Tensor, out: int, flip: torch.Tensor | None, mode: str = "bicubic"
) -> torch.Tensor:
    """Resample ``boxes`` (top, left, height, width in pixels) of (B, 3, S, S) images to (B, 3, out, out).

    A box maps to the affine grid ``x = (w / S) u + (2 left + w) / S - 1`` (likewise for y) in
    ``grid_sample``'s normalised coordinates (``align_corners=False``); a flip negates ``w / S``.
    """
    n, _, size_h, size_w = images.shape
    top, left, bh, bw = (boxes[:, i].float() for i in range(4))
    sx = bw / size_w
    if flip is not None:
        sx = torch.where(flip, -sx, sx)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = (2 * left + bw) / size_w - 1
    theta[:, 1, 1] = bh / size_h
    theta[:, 1, 2] = (2 * top + bh) / size_h - 1
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, [n, 3, out, out], align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode="border", align_corners=False).clamp_(0.0, 1.0)


def _posterize(img, bits_to_keep: int, **__):
    """timm's posterize, with 0 bits kept giving a black image as Pillow < 10 did (MUST's timm 0.4.12).

    ``PosterizeIncreasing`` at magnitude 10 keeps ``4 - 4 = 0`` bits; current Pillow rejects that.
    """
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _pil_batch(images: torch.Tensor) -> list:
    from PIL import Image

    arrays = images.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arrays]


@dataclass(frozen=True)
class Augment:
    """A named batch transform of adapt images (see :data:`KINDS`).

    ``scale``/``ratio``: the random-resized-crop area fraction and aspect ratio; ``flip``: random
    horizontal flip (p = 0.5); ``interpolation``: ``bicubic`` or ``bilinear``; ``randaugment``:
    timm's config string (e.g. MUST's ``rand-m9-mstd0.5-inc1``); ``mean``: the model's
    normalisation mean (timm fills rotated and sheared borders with it).
    """

    kind: str = "none"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    interpolation: str = "bicubic"
    randaugment: str = ""
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    _ra: list = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown augmentation {self.kind!r}; known: {', '.join(KINDS)}")
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation must be bicubic or bilinear, got {self.interpolation!r}")
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"crop scale must satisfy 0 < lo <= hi <= 1, got {list(self.scale)}")
        if self.kind == "randaugment" and not self.randaugment:
            raise ValueError("kind randaugment needs a timm config string, e.g. rand-m9-mstd0.5-inc1")

    @property
    def needs_full(self) -> bool:
        """Whether the transform crops from the whole image (so the ``full`` view must be loaded)."""
        return self.kind != "none"

    def randaugment_transform(self, size: int):
        """timm's RandAugment for ``size`` px images, with the hyper-parameters timm's
        ``create_transform`` gives it (``translate_const = int(0.45 size)``, the fill colour
        ``round(255 * mean)``, the crop's interpolation); built once."""
        if not self._ra:
            from timm.data import auto_augment
            from timm.data.auto_augment import rand_augment_transform
            from timm.data.transforms import str_to_pil_interp

            for op in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
                if op in auto_augment.NAME_TO_OP:
                    auto_augment.NAME_TO_OP[op] = _posterize
            hparams = {
                "translate_const": int(size * 0.45),
                "img_mean": tuple(round(255 * m) for m in self.mean),
                "interpolation": str_to_pil_interp(self.interpolation),
            }
            self._ra.append(rand_augment_transform(self.randaugment, hparams))
        return self._ra[0]

    def __call__(self, batch: ImageBatch, generator: torch.Generator | list[torch.Generator]) -> torch.Tensor:
        """The augmented float [0, 1] images (B, 3, R, R) of one batch.

        ``generator`` may be a list with one generator per image: each image's view then depends
        on its own generator only, not on which images share the batch.
        """
        if self.kind == "none":
            return batch.center_float()
        if isinstance(generator, (list, tuple)):
            return torch.cat([self(batch.select(slice(i, i + 1)), g) for i, g in enumerate(generator)])
        images, sizes = batch.whole()
        out = batch.center.shape[-1]
        n = images.shape[0]
        if self.kind == "crop":
            return crop_resample(images, resize_crop_boxes(sizes, out, generator), out, None, self.interpolation)
        boxes = rrc_boxes(sizes, self.scale, self.ratio, generator)
        flip = (torch.rand(n, generator=generator) < 0.5) if self.flip else None
        crops = crop_resample(
            images, boxes, out, flip.to(images.device) if flip is not None else None, self.interpolation
        )
        if self.kind == "augmix":
            from benchmark.adapt.augmix import augmix

            return augmix(crops, generator)
        if self.kind == "randaugment":
            ra = self.randaugment_transform(out)
            pil = [ra(im) for im in _pil_batch(crops)]
            arr = np.stack([np.asarray(im, dtype=np.uint8) for im in pil])
            crops = torch.from_numpy(arr).permute(0, 3, 1, 2).to(images.device).float().div_(255.0)
        return crops

    def describe(self) -> dict:
        """What the record says about this view."""
        if self.kind == "none":
            return {"kind": "none"}
        out = {k: v for k, v in asdict(self).items() if not k.startswith("_") and k != "mean"}
        if self.kind == "crop":
            out = {"kind": "crop", "interpolation": self.interpolation}
        if self.kind == "randaugment":
            ra = self.randaugment_transform(224)
            out["randaugment_ops"] = [op.name for op in ra.ops]
            out["randaugment_magnitude"] = ra.ops[0].magnitude if ra.ops else None
            out["randaugment_num_ops"] = ra.num_layers
        return out
