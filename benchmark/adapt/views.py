"""Augmented views of each test image, their features, and the statistics episodic and training-free methods take of them.

TPT (azshue/TPT ``tpt_classification.py:41-51``) and the methods built on it (TDA's AugMix
setting, C-TPT, TPS, ZERO, MTA, DMN, BoostAdapter) start from the same thing: the image features
of the original view and ``V - 1`` random augmentations of each test image, through a frozen
image encoder. :func:`view_features` computes them.

**Which views.** Image ``i``'s augmentations come from its own generator, seeded by the seed the
caller passes and ``i`` (``image_generators``), so they do not depend on the batching. Methods
pass ``self.view_seed``: the runner gives every method of a cell (data set, domain, user seed)
the same one (``RunSpec.view_seed``), so all methods of a seed see the same views.

**How they are encoded.** Each image's ``V`` views (the original first) go through the encoder
as one batch of ``V``, whatever the caller's batch size: a view's features then depend on its
image only (a CPU or GPU kernel may round differently for other batch shapes), which is what lets
methods with different batch sizes share them bit for bit.

**The view cache.** Methods whose image encoder is frozen during the test pass compute the same
features for the same (image, seed, augmentation, view count). When the runner has attached a
:class:`ViewCache` to the model (``model.view_cache``; ``--no-feature-cache`` leaves it off),
:func:`view_features` looks each image up before encoding it:

- in memory, in a process-wide LRU bounded in bytes (:data:`MEMORY`, ``$CLIPBENCH_VIEW_CACHE_BYTES``,
  default 1 GiB), so the runs of one sweep process share them;
- on disk, under ``<out>/features/views/`` (or ``$CLIPBENCH_FEATURES/views``, like the frozen
  feature cache), so other processes share them too: one folder per bucket (encoder, data set
  and domain, augmentation, view count, seed), holding segment files that each run writes once,
  at its end (``flush``), atomically, named by the hash of their content; they are read with
  ``mmap``, so a large bucket costs no memory until an image is looked up.

Each image's key is a SHA-1 of everything that determines its features: the format version; a
fingerprint of the image encoder's weights and buffers (their bytes, recomputed only when a tensor
of the encoder changed) with its class and resolution; the device (and GPU name), torch version,
autocast state; the normalisation; the augmentation's description and mean; the view count; the
seed; the image's index; and the bytes of the image itself (test view, whole-image view and its
size). Two data sets, domains, seeds or augmentations therefore never collide, and a disk entry
is checked against the full key before use. The view count is part of the key: a request for
fewer views than cached does not reuse a prefix, because ``Augment`` draws all of an image's
crop boxes in one call (``rand(4, n, 10)``), so the first ``k`` views of a draw of ``n`` are not
the draw of ``k`` (tested).

**Opting in.** A method opts in by calling :func:`view_features` (never by encoding views
itself). The cache is consulted only while the image encoder is frozen: every module of
``model.visual`` in eval mode and none of its parameters requiring a gradient; otherwise the
features are computed directly (counted as ``bypassed``). The weight fingerprint in the key means
that even a method which changes the encoder by other means is never served another state's
features. Features are computed under ``no_grad``; a method that needs gradients through the
encoder cannot use this path.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import weakref
from collections import OrderedDict
from pathlib import Path

import torch

from benchmark.adapt.augment import Augment, ImageBatch, image_generators
from benchmark.adapt.losses import softmax_entropy
from benchmark.model.clip import ClipClassifier

FORMAT = 1
"""Version of the view-cache key and file format; bump when the view computation changes."""
ENV_BYTES = "CLIPBENCH_VIEW_CACHE_BYTES"
DEFAULT_MEMORY_BYTES = 1 << 30
FLUSH_BYTES = 64 << 20
"""A run's new entries are written to disk at its end, or earlier once they exceed this."""
ENV_ROOT = "CLIPBENCH_FEATURES"
SUBDIR = "views"


def confident_views(logits: torch.Tensor, fraction: float) -> torch.Tensor:
    """(B, k) indices of each image's ``k = int(V * fraction)`` lowest-entropy views of (B, V, K) logits.

    TPT's ``select_confident_samples`` (tpt_classification.py:41-44): ascending entropy, the
    first ``int(V * top)``; ties keep the lower view index.
    """
    k = max(1, int(logits.shape[1] * fraction))
    entropy = softmax_entropy(logits.flatten(0, 1)).view(logits.shape[:2])
    return entropy.argsort(dim=1, stable=True)[:, :k]


def marginal_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(B,) entropy of the mean of the views' probabilities, ``H(mean_v softmax(z_v))``, of (B, V, K) logits.

    TPT's ``avg_entropy`` (tpt_classification.py:46-51): ``log mean_v p_v`` as
    ``logsumexp_v log_softmax(z_v) - log V``, clamped at the type's minimum, then ``-sum p log p``.
    """
    log_p = logits.float().log_softmax(dim=-1)
    avg = torch.logsumexp(log_p, dim=1) - math.log(logits.shape[1])
    avg = avg.clamp(min=torch.finfo(avg.dtype).min)
    return -(avg * avg.exp()).sum(dim=-1)


def checkpoint_logit_scale(model: ClipClassifier) -> float:
    """The weights' own ``logit_scale.exp()`` (100 for OpenAI's CLIP, about 76.4 for the embedded
    model): what TPT-derived code (TPT, ZERO, MTA) scales cosines by before its view statistics
    (e.g. MaxZanella/MTA ``mta.py:15``, FarinaMatteo/zero ``ttas/zero.py:76``). Predicted logits
    stay ``100 * cos``."""
    scale = getattr(model.clip, "logit_scale", None)
    return 100.0 if scale is None else float(scale.detach().float().exp())


# ---- the in-memory LRU --------------------------------------------------------------------------


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class ByteLRU:
    """A least-recently-used map of tensors whose total size stays within ``limit`` bytes."""

    def __init__(self, limit: int):
        self.limit = int(limit)
        self.used = 0
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> torch.Tensor | None:
        t = self._items.get(key)
        if t is not None:
            self._items.move_to_end(key)
        return t

    def put(self, key: str, t: torch.Tensor) -> None:
        """Insert (or refresh) ``key``; evict the least recently used until within the limit."""
        old = self._items.pop(key, None)
        if old is not None:
            self.used -= _nbytes(old)
        if _nbytes(t) > self.limit:
            return
        self._items[key] = t
        self.used += _nbytes(t)
        while self.used > self.limit:
            _, evicted = self._items.popitem(last=False)
            self.used -= _nbytes(evicted)

    def clear(self) -> None:
        self._items.clear()
        self.used = 0


MEMORY = ByteLRU(int(os.environ.get(ENV_BYTES, DEFAULT_MEMORY_BYTES)))
"""The process-wide in-memory view cache shared by every :class:`ViewCache` of the process."""


# ---- keys ---------------------------------------------------------------------------------------

_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def encoder_fingerprint(model: ClipClassifier) -> str:
    """SHA-1 of the image encoder's class, resolution, parameters and buffers (names, types, shapes, bytes).

    Recomputed only when a tensor of the encoder was replaced or modified in place since the last
    call (its identity, storage, version counter, type or device changed), so a frozen encoder
    pays for it once per model.
    """
    visual = model.visual
    state = visual.state_dict(keep_vars=True)
    signature = tuple(
        (name, id(t), t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape)) for name, t in state.items()
    )
    known = _FINGERPRINTS.get(visual)
    if known is not None and known[0] == signature:
        return known[1]
    h = hashlib.sha1(f"{type(visual).__name__}|{model.image_size}".encode())
    for name, t in state.items():
        data = t.detach().cpu().contiguous()
        h.update(f"|{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        h.update(data.view(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    digest = h.hexdigest()
    _FINGERPRINTS[visual] = (signature, digest)
    return digest


def _device_id(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


def _autocast_state(device: torch.device) -> str:
    if not torch.is_autocast_enabled(device.type):
        return "autocast:off"
    return f"autocast:{torch.get_autocast_dtype(device.type)}"


def _sha1(parts: list) -> str:
    return hashlib.sha1("\0".join(str(p) for p in parts).encode()).hexdigest()


def common_key(model: ClipClassifier, views: int, augment: Augment, seed: int) -> str:
    """Digest of what every image's view features share: encoder, numerics, augmentation, view count, seed."""
    described = json.dumps({**augment.describe(), "mean": list(augment.mean)}, sort_keys=True, default=list)
    return _sha1(
        [
            FORMAT,
            encoder_fingerprint(model),
            _device_id(model.device),
            torch.__version__,
            _autocast_state(model.device),
            model.input_dtype,
            model.mean.flatten().tolist(),
            model.std.flatten().tolist(),
            described,
            int(views),
            int(seed),
        ]
    )


def image_digests(raw: ImageBatch) -> list[str]:
    """SHA-1 per image of its raw views: the test view, the whole-image view and its valid size."""
    center = raw.center.cpu().contiguous()
    full = raw.full.cpu().contiguous() if raw.full is not None else None
    sizes = raw.sizes.cpu() if raw.sizes is not None else None
    out = []
    for row in range(center.shape[0]):
        h = hashlib.sha1(f"{tuple(center.shape[1:])}|{center.dtype}".encode())
        h.update(center[row].numpy().tobytes())
        if full is not None:
            h.update(b"|full|")
            h.update(full[row].numpy().tobytes())
        if sizes is not None:
            h.update(f"|{sizes[row].tolist()}".encode())
        out.append(h.hexdigest())
    return out


def image_keys(common: str, index: torch.Tensor, raw: ImageBatch) -> list[str]:
    """Each image's full key: the common digest, its index and its own bytes."""
    return [_sha1([common, int(i), d]) for i, d in zip(index.tolist(), image_digests(raw))]


# ---- the cache ----------------------------------------------------------------------------------


class ViewCache:
    """View features of frozen-encoder methods: the process-wide memory LRU, and optionally a disk folder.

    ``root``: the folder of the disk cache (None: memory only); ``context``: a label of the data
    (the runner passes ``<data set>/<domain>``) that groups a run's entries into one bucket folder
    (correctness never depends on it: every entry is checked against its full key). Counters:
    ``hits`` (memory), ``disk_hits``, ``misses`` (computed), ``bypassed`` (encoder not frozen).
    """

    def __init__(self, root: Path | str | None = None, context: str = "", memory: ByteLRU | None = None):
        self.root = Path(root) if root is not None else None
        self.context = context
        self.memory = MEMORY if memory is None else memory
        self.hits = self.disk_hits = self.misses = self.bypassed = 0
        self._disk: dict[str, dict[str, tuple[torch.Tensor, int]]] = {}
        self._dirty: dict[str, list[tuple[str, torch.Tensor]]] = {}
        self._dirty_bytes = 0

    @classmethod
    def for_run(cls, out: Path | str, context: str = "") -> ViewCache:
        """The cache of a sweep: ``$CLIPBENCH_FEATURES/views`` when set, else ``<out>/features/views``."""
        root = Path(os.environ.get(ENV_ROOT) or Path(out) / "features") / SUBDIR
        return cls(root, context)

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "disk_hits": self.disk_hits, "misses": self.misses, "bypassed": self.bypassed}

    def bucket(self, common: str) -> str:
        return _sha1([common, self.context])[:24]

    def _bucket_index(self, bucket: str) -> dict[str, tuple[torch.Tensor, int]]:
        """The bucket's segments on disk (memory-mapped), read once per cache instance."""
        if bucket in self._disk:
            return self._disk[bucket]
        index: dict[str, tuple[torch.Tensor, int]] = {}
        folder = self.root / bucket if self.root is not None else None
        if folder is not None and folder.is_dir():
            for path in sorted(folder.glob("*.pt")):
                try:
                    seg = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                    if seg.get("format") != FORMAT or len(seg["keys"]) != seg["feats"].shape[0]:
                        continue
                except (OSError, RuntimeError, EOFError, ValueError, KeyError, AttributeError):
                    continue  # unreadable or foreign: its entries are recomputed
                for row, key in enumerate(seg["keys"]):
                    index[key] = (seg["feats"], row)
        self._disk[bucket] = index
        return index

    def lookup(self, bucket: str, key: str, device: torch.device) -> torch.Tensor | None:
        """The (V, D) features stored under ``key``: from memory, else from disk (then kept in memory)."""
        t = self.memory.get(key)
        if t is not None:
            self.hits += 1
            return t
        found = self._bucket_index(bucket).get(key)
        if found is None:
            return None
        feats, row = found
        t = feats[row].to(device).clone()
        self.memory.put(key, t)
        self.disk_hits += 1
        return t

    def store(self, bucket: str, key: str, feats: torch.Tensor) -> None:
        """Keep freshly computed features in memory and queue them for the next ``flush``."""
        self.misses += 1
        self.memory.put(key, feats)
        if self.root is None:
            return
        self._dirty.setdefault(bucket, []).append((key, feats))
        self._dirty_bytes += _nbytes(feats)
        if self._dirty_bytes > FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write the queued entries of each bucket as one segment file (atomically, named by content)."""
        from benchmark.core.records import atomic_write

        for bucket, entries in self._dirty.items():
            keys = [k for k, _ in entries]
            feats = torch.stack([f.detach().cpu() for _, f in entries]).contiguous()
            buf = io.BytesIO()
            torch.save({"format": FORMAT, "keys": keys, "feats": feats}, buf)
            name = hashlib.sha1("\0".join(keys).encode()).hexdigest()[:24]
            atomic_write(self.root / bucket / f"{name}.pt", buf.getvalue())
            index = self._disk.setdefault(bucket, {})
            for row, key in enumerate(keys):
                index.setdefault(key, (feats, row))
        self._dirty.clear()
        self._dirty_bytes = 0


def encoder_frozen(model: ClipClassifier) -> bool:
    """Whether the image encoder is frozen: every module in eval mode, no parameter requiring a gradient."""
    visual = model.visual
    return not any(m.training for m in visual.modules()) and not any(p.requires_grad for p in visual.parameters())


def active_cache(model: ClipClassifier) -> ViewCache | None:
    """The model's view cache when one is attached and the image encoder is frozen (else None)."""
    cache: ViewCache | None = getattr(model, "view_cache", None)
    if cache is None:
        return None
    if not encoder_frozen(model):
        cache.bypassed += 1
        return None
    return cache


# ---- the views' features ------------------------------------------------------------------------


def image_views(raw: ImageBatch, views: int, augment: Augment, generator: torch.Generator) -> torch.Tensor:
    """(V, 3, R, R) float [0, 1] views of one image (``raw`` holds it alone): the test view, then
    ``V - 1`` augmentations of the whole image drawn from ``generator``."""
    original = raw.center_float()
    if views == 1:
        return original
    return torch.cat([original, augment(raw.repeat(views - 1), generator)])


def encode_views(
    model: ClipClassifier, raw: ImageBatch, views: int, augment: Augment, generator: torch.Generator
) -> torch.Tensor:
    """(V, D) features of one image's views, encoded as one batch of V."""
    return model.image_features(image_views(raw, views, augment, generator))


@torch.no_grad()
def view_features(model: ClipClassifier, batch: dict, views: int, augment: Augment, seed: int) -> torch.Tensor:
    """(B, V, D) image features of every image's original view (its test view, ``batch["raw"]``'s
    ``center``, which is ``batch["images"]`` under the ``none`` stream view) and ``views - 1``
    augmentations of its whole image, drawn from the image's own generator (``seed`` and
    ``batch["index"]``; pass ``self.view_seed``), through the model's view cache when it has one
    and the image encoder is frozen (see the module docstring)."""
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    raw: ImageBatch | None = batch.get("raw")
    if raw is None:
        if views == 1:
            return model.image_features(batch["images"]).unsqueeze(1)
        raise ValueError("augmented views need the batch's raw images (batch['raw']); set needs_full")
    index = batch["index"]
    cache = active_cache(model)
    if cache is not None:
        common = common_key(model, views, augment, seed)
        bucket = cache.bucket(common)
        keys = image_keys(common, index, raw)
    out: list[torch.Tensor | None] = [None] * len(index)
    for row, g in enumerate(image_generators(seed, index)):
        if cache is not None:
            out[row] = cache.lookup(bucket, keys[row], model.device)
        if out[row] is None:
            out[row] = encode_views(model, raw.select(slice(row, row + 1)), views, augment, g)
            if cache is not None:
                cache.store(bucket, keys[row], out[row])
    return torch.stack(out)
