"""The sweep: the grid of run specs a command line (or a config file) asks for.

Hyper-parameters resolve in three layers: the method's defaults (the paper's recipe), then the
data set's ``overrides`` from its spec folder (e.g. the paper's 5 epochs on DomainNet, or the
embedded benchmark's budget), then the user's ``--cfg-options``. The resolved values are part of
each spec, so they are in its hash and its record.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmark.runner import RunSpec


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


DEFAULT_SETTINGS = ["oda"]


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
        get_method(method).resolve_hparams(params)
    return out


def is_vit_model(model: str) -> bool | None:
    """Whether open_clip architecture ``model`` has a ViT image encoder (None: unknown name).

    Read from the architecture's config (a ResNet's ``vision_cfg.layers`` is a list of stage
    depths, a ViT's a single number), so no model is built and nothing is downloaded.
    """
    import open_clip

    from benchmark.model import _register_repo_configs

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
        domains = ds.domains if req.domains is None else [d for d in req.domains if d in ds.domains]
        used_domains.update(domains)
        if not domains:
            raise SweepError(f"none of the domains {req.domains} belong to {ds_name}; its domains: {', '.join(ds.domains)}")
        valid_settings = ds.settings(req.protocol)
        settings = req.settings or [s for s in DEFAULT_SETTINGS if s in valid_settings]
        bad = [s for s in settings if s not in valid_settings]
        if bad:
            raise SweepError(f"setting(s) {bad} not in protocol {req.protocol!r} of {ds_name}; valid: {', '.join(valid_settings)}")
        for method in methods:
            cls = get_method(method)
            ds_over = {k: v for k, v in ds.overrides.get(method, {}).items() if k in cls.hparam_defaults()}
            hparams = cls.resolve_hparams({**ds_over, **(req.overrides or {}).get(method, {})})
            for domain in domains:
                for setting in settings:
                    for seed in req.seeds:
                        specs.append(RunSpec(method=method, dataset=ds_name, domain=domain, setting=setting,
                                             protocol=req.protocol, seed=seed, model=req.model,
                                             pretrained=req.pretrained, hparams=hparams))
    if req.domains is not None:
        unused = [d for d in req.domains if d not in used_domains]
        if unused:
            raise SweepError(f"domain(s) {unused} belong to none of the data sets {req.datasets}")
    return specs
