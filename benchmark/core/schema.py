"""The run record (``result.json``): its schema, checked whenever a record is read.

One record per run folder, written by the runner, read by the sweep (is it complete?) and the
report (tables); readers never modify it. Schema ``RECORD_SCHEMA``:

=================== ==================================================================
key                 what it holds
=================== ==================================================================
schema              this schema's number
spec                the run's identity (``benchmark.core.spec.RunSpec.as_dict``), with
                    every resolved hyper-parameter under ``spec.hparams``
hash                the spec's hash: the name of the folder
status              ``done`` or ``failed`` (then ``error`` and ``traceback``)
label, departures   the table row's label and the values departing from the recipe
regime              transductive, online, episodic or none
precision, device   the precision the run computed in and the device kind
headline_score      the protocol's OOD score; ``scores``: every recorded score with
                    its description
metrics             per result part (:data:`PARTS`): classification metrics and, under
                    ``scores``, the score-dependent ones per score
preds_sha256        checksum of ``preds.npz``, verified when the record is read back
data, timings, environment, execution, history, curve, label_free, rejection,
num_trainable, validation_domains, started, finished: facts about the run
=================== ==================================================================
"""

from __future__ import annotations

from typing import Any

RECORD_SCHEMA = 3
PARTS = ("test", "adapt", "online")
"""Result parts: ``test`` (every method), ``adapt`` (transductive runs, the adapt set's predictions)
and ``online`` (a transductive method that also predicted along its adaptation, e.g. TENT)."""
STATUSES = ("done", "failed")

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema": int,
    "spec": dict,
    "hash": str,
    "status": str,
}
_REQUIRED_DONE: dict[str, type | tuple[type, ...]] = {
    "label": str,
    "departures": dict,
    "regime": str,
    "precision": str,
    "device": str,
    "headline_score": str,
    "scores": dict,
    "metrics": dict,
    "preds_sha256": str,
}
_SPEC_KEYS = (
    "method",
    "dataset",
    "domain",
    "setting",
    "protocol",
    "seed",
    "model",
    "pretrained",
    "hparams",
    "device",
    "protocol_version",
)


class RecordError(ValueError):
    """A ``result.json`` that is not a record of this schema; the message says what is wrong."""


def problems(rec: Any) -> list[str]:
    """What is wrong with a parsed ``result.json`` (empty: a valid record of :data:`RECORD_SCHEMA`)."""
    if not isinstance(rec, dict):
        return [f"not a JSON object but {type(rec).__name__}"]
    out = []
    schema = rec.get("schema")
    if schema != RECORD_SCHEMA:
        return [f"record schema {schema!r}, this version reads schema {RECORD_SCHEMA} (rerun to recompute)"]
    required = dict(_REQUIRED)
    if rec.get("status") == "done":
        required.update(_REQUIRED_DONE)
    for key, kind in required.items():
        if key not in rec:
            out.append(f"lacks {key!r}")
        elif not isinstance(rec[key], kind):
            out.append(f"{key!r} is {type(rec[key]).__name__}, expected {getattr(kind, '__name__', kind)}")
    if rec.get("status") not in STATUSES:
        out.append(f"status {rec.get('status')!r} is none of {', '.join(STATUSES)}")
    spec = rec.get("spec")
    if isinstance(spec, dict):
        missing = [k for k in _SPEC_KEYS if k not in spec]
        if missing:
            out.append(f"spec lacks {', '.join(missing)}")
    metrics = rec.get("metrics")
    if rec.get("status") == "done" and isinstance(metrics, dict):
        if "test" not in metrics:
            out.append("metrics lack the test part")
        unknown = sorted(set(metrics) - set(PARTS))
        if unknown:
            out.append(f"metrics have unknown part(s) {', '.join(unknown)}")
    return out


def check(rec: Any, where: str) -> dict[str, Any]:
    """``rec`` when valid, else ``RecordError`` naming ``where`` and every problem."""
    found = problems(rec)
    if found:
        raise RecordError(f"{where}: {'; '.join(found)}")
    return rec
