"""The sweep: the grid of run specs a command line (or a config file) asks for.

Hyper-parameters resolve in four layers: the method's defaults (its paper's recipe), the data
set's ``recipes`` (a paper's own recipe for that data set, e.g. UEO's 5 epochs on DomainNet: not a
departure), the data set's ``overrides`` (e.g. the embedded benchmark's budget: departures), then
the user's ``--cfg-options``. Tables name every value that departs from the first two layers.
A list given for a hyper-parameter (``ueo.lr=[1e-4,1e-3]``; for a list-valued one, a list of
lists) is a grid: every point is an ordinary run. The values are resolved here, once, for each
spec (the method's derived values and a concrete precision for the device kind included), so
they are in its hash and its record; the departures from the recipe are computed here too and
stored with the record. Every key of a data set's ``recipes``, ``overrides`` and ``grids`` and of
the user's options is checked against the method's hyper-parameters: a typo is an error.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from benchmark.core.hparams import departures
from benchmark.core.spec import RunSpec, device_kind


class SweepError(ValueError):
    """The requested grid is inconsistent (e.g. a domain that no selected data set has)."""


@dataclass
class SweepRequest:
    """What the user asked for; ``None`` means "the default" for that axis."""

    methods: list[str]
    datasets: list[str]
    seeds: list[int]
    model: str
    pretrained: str
    protocol: str = "ueo"
    domains: list[str] | None = None
    settings: list[str] | None = None
    overrides: dict[str, dict[str, Any]] | None = None
    with_validation: bool = False
    grids: bool = False
    """Also sweep each data set's own ``grids`` (the grid its ``overrides`` were selected from)."""
    device: str = "cpu"
    """The device the runs compute on; its kind (cpu, cuda) is part of every spec."""


DEFAULT_SETTINGS = ["oda"]


def concrete(cls: Any, hp: dict[str, Any], device: str) -> dict[str, Any]:
    """``hp`` with ``precision`` made concrete for ``device``'s kind (``official`` -> the method's own
    on a GPU, fp32 on a CPU); a precision the device cannot run raises ``SweepError``."""
    from benchmark.model.precision import PrecisionError, effective_precision

    try:
        precision = effective_precision(hp["precision"], cls.official_precision, device_kind(device), cls.name)
    except PrecisionError as err:
        raise SweepError(str(err)) from err
    return {**hp, "precision": precision}


def recipe_hparams(method: str, dataset: str, device: str = "cpu") -> dict[str, Any]:
    """A method's recipe on a data set and device kind: its defaults updated by the data set's
    ``recipes`` entry, resolved. Tables show a run's values that differ from this as departures."""
    from benchmark.data import get_spec
    from benchmark.registry import get_method

    cls = get_method(method)
    return concrete(cls, cls.resolve_hparams(get_spec(dataset).recipes.get(method, {})), device)


def check_spec_hparams(ds: Any) -> None:
    """Every method and key of a data set's ``recipes``, ``overrides`` and ``grids`` is registered
    and known, else ``SweepError`` naming the file, the method, the key and the valid keys."""
    from benchmark.registry import METHODS, method_names

    where = ds.path / "dataset.yaml" if getattr(ds, "path", None) else ds.name
    for section in ("recipes", "overrides", "grids"):
        for method, params in (getattr(ds, section) or {}).items():
            if method not in method_names():
                raise SweepError(
                    f"{where}: {section}: unknown method {method!r}; registered: {', '.join(method_names())}"
                )
            known = METHODS.get(method).hparam_defaults()
            for key in params or {}:
                if key not in known:
                    raise SweepError(
                        f"{where}: {section}.{method}: {key!r} is not a hyper-parameter of {method}; "
                        f"valid: {', '.join(sorted(known))}"
                    )


def is_grid(default: Any, value: Any) -> bool:
    """Whether ``value`` lists several values of a hyper-parameter whose default is ``default``.

    A list is a grid for a scalar hyper-parameter; for a list-valued one (e.g. ``crop_scale``) a
    list of lists is.
    """
    if not isinstance(value, (list, tuple)):
        return False
    if isinstance(default, (list, tuple)):
        return bool(value) and all(isinstance(v, (list, tuple)) for v in value)
    return True


def expand_grid(method: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every point of the grid ``params`` spans (one point when no value is a grid), in a stable order."""
    from benchmark.registry import get_method

    defaults = get_method(method).hparam_defaults()
    keys = sorted(params)
    axes = [list(params[k]) if is_grid(defaults.get(k), params[k]) else [params[k]] for k in keys]
    empty = [k for k, axis in zip(keys, axes) if not axis]
    if empty:
        raise SweepError(f"{method}.{empty[0]} = []: an empty grid runs nothing; give a value or a non-empty list")
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]


def parse_cfg_options(options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"ueo.lr": 1e-4}`` -> ``{"ueo": {"lr": 1e-4}}``; the method part must be registered."""
    from benchmark.registry import method_names

    known = method_names()
    out: dict[str, dict[str, Any]] = {}
    for key, value in options.items():
        method, _, param = key.partition(".")
        if not param or method not in known:
            raise SweepError(
                f"--cfg-options key {key!r} must look like <method>.<hyper-parameter> with a registered "
                f"method ({', '.join(known)})"
            )
        out.setdefault(method, {})[param] = value
    from benchmark.registry import get_method

    for method, params in out.items():
        for point in expand_grid(method, params):
            get_method(method).resolve_hparams(point)
    return out


def is_vit_model(model: str) -> bool | None:
    """Whether open_clip architecture ``model`` has a ViT image encoder (None: unknown name).

    Read from the architecture's config (a ResNet's ``vision_cfg.layers`` is a list of stage
    depths, a ViT's a single number), so no model is built and nothing is downloaded.
    """
    import open_clip

    from benchmark.model.clip import _register_repo_configs

    _register_repo_configs()
    cfg = open_clip.get_model_config(model)
    if cfg is None:
        return None
    return not isinstance(cfg.get("vision_cfg", {}).get("layers"), (list, tuple))


def build_sweep(req: SweepRequest, not_applicable: list[str] | None = None) -> list[RunSpec]:
    """Expand a request into run specs (method x data set x domain x setting x seed).

    A method that cannot run on the model (``requires_vit`` on a ResNet, e.g. MUST on RN50) is
    left out rather than failed: it is not a result, and the paper has no such cell either.
    When ``not_applicable`` is given, one line per left-out (method, model) is appended to it.
    """
    from benchmark.data import get_spec
    from benchmark.registry import get_method

    asked_for = set(req.overrides or {})
    outside = sorted(asked_for - set(req.methods))
    if outside:
        raise SweepError(
            f"--cfg-options name method(s) {', '.join(outside)} that are not in this sweep "
            f"({', '.join(req.methods)}); add them to --methods or drop the options"
        )
    vit = is_vit_model(req.model)
    methods = []
    for method in req.methods:
        if get_method(method).requires_vit and vit is False:
            if not_applicable is not None:
                not_applicable.append(f"{method} on {req.model}: needs a ViT image encoder")
            continue
        methods.append(method)

    specs: list[RunSpec] = []
    used_domains: set[str] = set()
    for ds_name in req.datasets:
        ds = get_spec(ds_name)
        if req.protocol not in ds.protocols:
            raise SweepError(f"data set {ds_name} has no protocol {req.protocol!r}; it has {', '.join(ds.protocols)}")
        domains = ds.target_domains if req.domains is None else [d for d in req.domains if d in ds.domains]
        if req.with_validation:
            domains += [d for d in ds.validation_domains if d not in domains]
        used_domains.update(domains)
        if not domains:
            raise SweepError(
                f"none of the domains {req.domains} belong to {ds_name}; its domains: {', '.join(ds.domains)}"
            )
        valid_settings = ds.settings(req.protocol)
        settings = req.settings or [s for s in DEFAULT_SETTINGS if s in valid_settings]
        bad = [s for s in settings if s not in valid_settings]
        if bad:
            raise SweepError(
                f"setting(s) {bad} not in protocol {req.protocol!r} of {ds_name}; valid: {', '.join(valid_settings)}"
            )
        from benchmark.adapt.scores import score_names

        headline = ds.protocol(req.protocol).score
        if headline not in score_names():
            raise SweepError(
                f"protocol {req.protocol!r} of {ds_name} names the OOD score {headline!r}; "
                f"registered scores: {', '.join(score_names())}"
            )
        check_spec_hparams(ds)
        for method in methods:
            cls = get_method(method)
            layers = {**ds.recipes.get(method, {}), **ds.overrides.get(method, {})}
            recipe = recipe_hparams(method, ds_name, req.device)
            asked = (req.overrides or {}).get(method, {})
            if req.grids:
                asked = {**ds.grids.get(method, {}), **asked}
            for point in expand_grid(method, asked):
                hparams = concrete(cls, cls.resolve_hparams({**layers, **point}), req.device)
                diffs = departures(hparams, recipe)
                for domain in domains:
                    for setting in settings:
                        for seed in req.seeds:
                            specs.append(
                                RunSpec(
                                    method=method,
                                    dataset=ds_name,
                                    domain=domain,
                                    setting=setting,
                                    protocol=req.protocol,
                                    seed=seed,
                                    model=req.model,
                                    pretrained=req.pretrained,
                                    hparams=hparams,
                                    device=device_kind(req.device),
                                    departures=diffs,
                                    validation_domains=tuple(ds.validation_domains),
                                )
                            )
    if req.domains is not None:
        unused = [d for d in req.domains if d not in used_domains]
        if unused:
            raise SweepError(f"domain(s) {unused} belong to none of the data sets {req.datasets}")
    return specs
