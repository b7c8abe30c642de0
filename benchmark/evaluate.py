"""The evaluator: runs a method's ``predict`` over a labelled set and scores it.

Labels live here and only here. Images are visited in a fixed seeded permutation (so methods
that normalise with batch statistics, such as TENT, never see class-sorted batches) and the
results are put back in dataset order.
"""
from __future__ import annotations

import numpy as np
import torch

from benchmark.metrics import open_set_metrics

EVAL_BATCH = 64
TOPK = 5


@torch.no_grad()
def predict_set(
    adapter, images: torch.Tensor, seed: int = 0, batch_size: int = EVAL_BATCH, features: torch.Tensor | None = None,
) -> dict[str, np.ndarray]:
    """Predictions of ``adapter`` on uint8 ``images``: ``pred``, ``score``, ``topk_idx``, ``topk_logit``.

    With ``features`` (the frozen image features of ``images``, for a method that adapts nothing
    and has ``predict_features``) the encoder is skipped: that is the feature cache's fast path.
    """
    device = adapter.model.device
    n = images.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    preds = np.empty(n, dtype=np.int64)
    scores = np.empty(n, dtype=np.float32)
    k = min(TOPK, adapter.model.num_classes)
    top_i = np.empty((n, k), dtype=np.int32)
    top_v = np.empty((n, k), dtype=np.float16)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if features is not None:
            logits, score = adapter.predict_features(features[idx].to(device))
        else:
            x = images[idx].to(device).float().div_(255.0)
            with adapter.autocast():
                logits, score = adapter.predict(x)
        logits = logits.float().cpu()
        v, i = logits.topk(k, dim=-1)
        preds[idx.numpy()] = i[:, 0].numpy()
        scores[idx.numpy()] = score.float().cpu().numpy()
        top_i[idx.numpy()] = i.numpy()
        top_v[idx.numpy()] = v.numpy().astype(np.float16)
    return {"pred": preds, "score": scores, "topk_idx": top_i, "topk_logit": top_v}


def score_predictions(pred: np.ndarray, score: np.ndarray, label: np.ndarray, num_known: int) -> dict[str, float]:
    """All open-set metrics (percent) of one prediction set."""
    return open_set_metrics(pred, label, score, num_known)
