"""The evaluator: runs a method's ``predict`` over a labelled set and scores it.

Labels live here and only here. Images are visited in a fixed seeded permutation (so methods
that normalise with batch statistics, such as TENT, never see class-sorted batches) and the
results are put back in dataset order. Every registered OOD score (``benchmark.adapt.scores``) and
every score a method adds of its own is kept per sample, and the metrics are computed under each.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmark.adapt.scores import compute_scores
from benchmark.core.metrics import classification_metrics, otsu_threshold, score_metrics

EVAL_BATCH = 64
TOPK = 5
SCORE_PREFIX = "score_"
REJECTION_RULE = "otsu"
"""The label-free rejection rule of the UniDA H-score: Otsu's threshold of the scores of the
unlabeled data the method adapted on (the adapt set; for online and episodic runs the stream)."""


def as_prediction(out) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A method's ``predict`` output as (logits, the method's own scores): a tensor or a (tensor, dict) pair."""
    if isinstance(out, tuple):
        logits, extra = out
        return logits, dict(extra or {})
    return out, {}


class PredictionSink:
    """Collects per-sample predictions in dataset order: argmax, top-k logits and every score."""

    def __init__(self, n: int, num_classes: int):
        self.n = n
        self.k = min(TOPK, num_classes)
        self.probs = np.zeros((n, num_classes), dtype=np.float32)
        """``softmax(logits)`` of every sample, kept in memory for label-free criteria (not saved)."""
        self.arrays: dict[str, np.ndarray] = {
            "pred": np.empty(n, dtype=np.int64),
            "topk_idx": np.empty((n, self.k), dtype=np.int32),
            "topk_logit": np.empty((n, self.k), dtype=np.float16),
        }
        self.filled = np.zeros(n, dtype=bool)

    def add(self, index: torch.Tensor | np.ndarray, logits: torch.Tensor, extra: dict[str, torch.Tensor]) -> None:
        """Store the predictions of the samples at ``index`` (positions in the evaluated set)."""
        idx = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, dtype=np.int64)
        logits = logits.detach().float().cpu()
        self.probs[idx] = logits.softmax(dim=-1).numpy()
        v, i = logits.topk(self.k, dim=-1)
        self.arrays["pred"][idx] = i[:, 0].numpy()
        self.arrays["topk_idx"][idx] = i.numpy()
        self.arrays["topk_logit"][idx] = v.numpy().astype(np.float16)
        scores = compute_scores(logits)
        scores.update({name: s.detach().double().cpu() for name, s in extra.items()})
        for name, s in scores.items():
            key = SCORE_PREFIX + name
            if key not in self.arrays:
                self.arrays[key] = np.full(self.n, np.nan, dtype=np.float64)
            self.arrays[key][idx] = s.numpy()
        self.filled[idx] = True

    def result(self) -> dict[str, np.ndarray]:
        """The arrays; raises if some sample never got a prediction."""
        if not self.filled.all():
            raise RuntimeError(f"{int((~self.filled).sum())} of {self.n} samples got no prediction")
        return dict(self.arrays)


@torch.no_grad()
def predict_set(
    adapter,
    images: torch.Tensor,
    seed: int = 0,
    batch_size: int = EVAL_BATCH,
    features: torch.Tensor | None = None,
) -> PredictionSink:
    """Predictions of ``adapter`` on uint8 ``images`` in a sink: ``pred``, ``topk_*``, ``score_<name>``, probabilities.

    With ``features`` (the frozen image features of ``images``, for a method that adapts nothing
    and has ``predict_features``) the encoder is skipped: that is the feature cache's fast path.
    """
    device = adapter.model.device
    n = images.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    sink = PredictionSink(n, adapter.model.num_classes)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if features is not None:
            out = adapter.predict_features(features[idx].to(device))
        else:
            x = images[idx].to(device).float().div_(255.0)
            with adapter.autocast():
                out = adapter.predict(x)
        logits, extra = as_prediction(out)
        sink.add(idx, logits, extra)
    return sink


def score_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{score name: per-sample scores}`` of a prediction dict (``score_<name>`` keys)."""
    return {k[len(SCORE_PREFIX) :]: v for k, v in arrays.items() if k.startswith(SCORE_PREFIX)}


def fit_thresholds(arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """Per score, the label-free rejection threshold (:data:`REJECTION_RULE`) of these predictions."""
    return {name: otsu_threshold(s) for name, s in score_arrays(arrays).items()}


def score_predictions(
    arrays: dict[str, np.ndarray], label: np.ndarray, num_known: int, thresholds: dict[str, float]
) -> dict:
    """All metrics (percent) of one prediction set: the classification ones and, under ``scores``,
    one dict per OOD score (its threshold from ``thresholds``)."""
    out = classification_metrics(arrays["pred"], label, num_known)
    out["scores"] = {
        name: score_metrics(arrays["pred"], label, s, num_known, thresholds.get(name, float("nan")), out["acc_pc"])
        for name, s in score_arrays(arrays).items()
    }
    return out
