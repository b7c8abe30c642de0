"""Pre-flight: before the first run, check once what every run of the sweep needs.

A sweep of thousands of runs must not record thousands of identical failures because the
weights cannot be had (no network, a wrong path) or a data domain is missing: each distinct
backbone is resolved (and, before a real run, loaded once, which also fills open_clip's download
cache for the runs) and each (data set, domain) located on disk. A problem stops the sweep with
one message saying what is missing and how to get it, before any record is written.
"""

from __future__ import annotations

from benchmark.core.spec import RunSpec


class PreflightError(RuntimeError):
    """What the sweep needs and cannot have; the message says how to get it."""


def check_backbone(model: str, pretrained: str, load: bool) -> None:
    """The weights resolve (a known tag or an existing file) and, with ``load``, load."""
    from benchmark.model.clip import ModelError, load_clip, resolve_pretrained

    try:
        resolve_pretrained(model, pretrained)
        if load:
            load_clip(model, pretrained, "cpu")
    except ModelError as err:
        raise PreflightError(str(err)) from err
    except Exception as err:  # open_clip / the hub raise many kinds when weights cannot be had
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PreflightError(
            f"cannot load the weights {pretrained!r} of {model}: {type(err).__name__}: {first}. open_clip downloads "
            f"a tag on first use and caches it (this needs network access); on an offline machine download the "
            f"weights elsewhere and pass --pretrained /path/to/weights.pt"
        ) from err


def check_domain(dataset: str, domain: str, data_root: str | None) -> None:
    """The domain's files are where the data set's spec says (generated data sets always are)."""
    from benchmark.data import DataError, get_spec
    from benchmark.data.locate import locate

    spec = get_spec(dataset)
    if spec.layout.kind == "synthetic":
        return
    try:
        locate(spec, domain, data_root)
    except DataError as err:
        raise PreflightError(str(err)) from err


def preflight(specs: list[RunSpec], data_root: str | None, load_weights: bool = True) -> list[str]:
    """Every problem of ``specs``' distinct backbones and (data set, domain)s, one line each (empty: none).

    A data set's missing root is reported once, not once per domain.
    """
    problems: list[str] = []
    for model, pretrained in sorted({(s.model, s.pretrained) for s in specs}):
        try:
            check_backbone(model, pretrained, load_weights)
        except PreflightError as err:
            problems.append(str(err))
    for dataset, domain in sorted({(s.dataset, s.domain) for s in specs}):
        try:
            check_domain(dataset, domain, data_root)
        except PreflightError as err:
            if str(err) not in problems:
                problems.append(str(err))
    return problems
