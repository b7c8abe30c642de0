"""ZERO: test-time adaptation with zero temperature (Farina et al., NeurIPS 2024), episodic and training-free.

Recipe (FarinaMatteo/zero ``ttas/zero.py``, ``ttas/base.py``, ``data/augs.py``, ``utils/tools.py``;
file and line of each value in ``docs/recipes.md``): for every test image, the original view and
63 random resized crops + flips of the whole image (TPT's views without AugMix); the
``int(64 x 0.3) = 19`` views with the lowest entropy of ``softmax(s cos)`` are kept (``s`` the
checkpoint's ``logit_scale.exp()``: 100 for OpenAI's CLIP, 76.4 for the embedded model); each kept
view votes for its top class, a vote being ``softmax(cos / eps)`` with ``eps`` the machine epsilon
of the cosines' type ("zero temperature"); the class with the most votes is the prediction. A tie
is broken by the remaining views in ascending entropy: the first whose top class is tied wins and
gets one more vote. Nothing is trained and nothing carries over between images.

Decisions on the official code's traps (``docs/recipes.md``, ``zero`` section):

- The vote (``vote``): ``eps`` (default) divides the cosines by ``torch.finfo(dtype).eps`` of the
  cosines' type, as the official code does: under its fp16 autocast (our ``precision=official`` on
  a GPU) that is 2^-10, a logit scale of 1024 on which near ties split a vote; in float32 (a CPU)
  2^-23, in effect an argmax. ``argmax`` gives each kept view one whole vote (the paper's zero
  temperature) whatever the type.
- The tie-break's fallback (no remaining view's top class is tied): the official
  ``break_sample_tie`` masks with a bitwise NOT of integer class indices (``logit[~ties]``, which
  indexes from the end), so it can return an untied class. Ours returns the tied class with the
  largest logit in the most confident remaining view (what the function is meant to do).
- Output: ZERO has no logits; its output is the vote histogram ``p_bar`` (votes plus the tie-break
  vote). We return ``100 * p_bar / k`` (k kept views): the vote fractions on CLIP's scale, so the
  prediction is ZERO's and every registered OOD score is a function of how the kept views agree.

The views are those of TPT (``rrc`` 0.08-1, bilinear, flip; the original view first), obtained
through ``view_features``: with a frozen encoder they are computed once per image and seed for
every method of a sweep that uses them.
"""

from __future__ import annotations

import torch

from benchmark.adapt.adapter import Adapter
from benchmark.adapt.view_method import ViewMethod
from benchmark.adapt.views import checkpoint_logit_scale, confident_views
from benchmark.model.clip import LOGIT_SCALE
from benchmark.registry import register_method


def zero_votes(cos: torch.Tensor, gamma: float, vote: str = "eps", scale: float = LOGIT_SCALE) -> torch.Tensor:
    """(B, K) vote histograms of (B, V, K) cosines: ZERO's ``p_bar`` after its tie-break.

    Views are ranked by the entropy of ``softmax(scale cos)`` (ascending, stable); the first
    ``k = max(1, int(V gamma))`` vote. ``vote="eps"``: ``softmax(cos / finfo(cos.dtype).eps)``
    summed over the kept views (in float32 from the cosines' type); ``"argmax"``: one vote per
    kept view for its first top class. Classes whose votes equal the maximum exactly are tied; the
    tie goes to the top class of the first remaining view (ascending entropy) that is tied, else
    to the tied class with the largest cosine in the first remaining view (the most confident view
    when none remains), and it gets one more vote.
    """
    b, v, k_classes = cos.shape
    k = max(1, int(v * gamma))
    order = confident_views(scale * cos.float(), 1.0)  # (B, V) all views, ascending entropy
    kept = cos.gather(1, order[:, :k, None].expand(-1, -1, k_classes))
    if vote == "eps":
        votes = (kept / torch.finfo(cos.dtype).eps).float().softmax(dim=-1).sum(dim=1)
    elif vote == "argmax":
        votes = torch.nn.functional.one_hot(kept.argmax(dim=-1), k_classes).float().sum(dim=1)
    else:
        raise ValueError(f"vote must be eps or argmax, got {vote!r}")
    best = votes.max(dim=-1).values
    for i in range(b):
        ties = (votes[i] == best[i]).nonzero().flatten()
        if len(ties) < 2:
            continue
        rest = order[i, k:] if v > k else order[i, :1]
        winner = None
        for view in rest.tolist():
            top = int(cos[i, view].argmax())
            if top in ties.tolist():
                winner = top
                break
        if winner is None:
            winner = int(ties[cos[i, rest[0], ties].argmax()])
        votes[i, winner] += 1
    return votes


@register_method
class Zero(ViewMethod):
    """Zero-temperature voting of the confident augmented views of each test image; nothing is trained.

    Hyper-parameters: ``views`` (64: the original and 63 augmented), ``gamma`` (0.3: the fraction
    of views kept), ``vote`` (``eps``: the official division by the type's epsilon; ``argmax``:
    whole votes), ``crop_scale``/``interpolation`` of the random resized crops (torchvision's
    defaults, which ZERO keeps: 0.08-1, bilinear) and ``batch_size`` (test images per stream step:
    a speed knob that changes no result).
    """

    name = "zero"
    trains = False
    regimes = ("episodic",)
    official_precision = "fp16"
    """fp32 weights (``convert_weights`` commented out, clip/model.py:434), the whole method under
    CUDA autocast (run.py:136): the cosines are fp16, so the vote's epsilon is 2^-10."""
    defaults = {
        "views": 64,
        "gamma": 0.3,
        "vote": "eps",
        "crop_scale": [0.08, 1.0],
        "interpolation": "bilinear",
        "batch_size": 64,
    }
    choices = {**Adapter.choices, "vote": ("eps", "argmax")}

    def configure(self) -> list:
        self.model.eval()
        self.seen, self.agreement, self.ties = 0, 0.0, 0
        if self.hp["views"] < 1 or not 0 < self.hp["gamma"] <= 1:
            raise ValueError("zero needs views >= 1 and 0 < gamma <= 1")
        return []

    @torch.no_grad()
    def stream_step(self, batch: dict) -> torch.Tensor:
        """Each image's vote fractions on CLIP's scale, ``100 * p_bar / k``; the model is untouched."""
        feats = self.view_features(batch)  # ZERO's views: crop + flip of the whole image (data/augs.py:36-40)
        cos = feats @ self.model.text_features().t()  # fp16 under the official autocast, as in ttas/zero.py:75
        votes = zero_votes(cos, self.hp["gamma"], self.hp["vote"], checkpoint_logit_scale(self.model))
        k = max(1, int(self.hp["views"] * self.hp["gamma"]))
        top = votes.max(dim=-1).values
        tied = votes.sum(dim=-1) > k + 0.5  # the tie-break's extra vote makes the total k + 1
        self.seen += len(votes)
        self.ties += int(tied.sum())
        self.agreement += float(torch.where(tied, top - 1, top).sum()) / k
        return (LOGIT_SCALE * votes / k).float()

    def stream_stats(self) -> dict[str, float]:
        """Along the stream so far: the mean fraction of kept views that voted for the winner
        (before the tie-break vote), and the fraction of images whose vote was tied."""
        n = max(self.seen, 1)
        return {"vote_agreement": self.agreement / n, "tied": self.ties / n}

    def describe(self) -> dict:
        out = super().describe()
        out["views"] = {"test_views": self.view_augment().describe()}
        return out
