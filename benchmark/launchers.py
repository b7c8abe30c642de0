"""Launchers: how a list of run specs gets executed. Every launcher writes the same records."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from benchmark.registry import LAUNCHERS
from benchmark.runner import RunSpec, execute


@LAUNCHERS.register_module(name="inline")
class InlineLauncher:
    """Run every spec in this process, one after the other (the default; shares caches)."""

    def __call__(self, specs: list[RunSpec], out: Path, data_root: str | None, device: str) -> list[dict[str, Any]]:
        records = []
        bar = tqdm(specs, desc="runs", unit="run", disable=None)
        for spec in bar:
            bar.set_postfix_str(spec.label())
            rec = execute(spec, out, data_root=data_root, device=device)
            if rec["status"] != "done":
                tqdm.write(f"FAILED {spec.label()}: {rec.get('error')}")
            records.append(rec)
        return records
