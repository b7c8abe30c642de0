"""Figures a reader would put in a paper, and tables that regenerate identically.

Every figure type is rendered from hand-made records of 24 methods with 40-character labels: no
text leaves the canvas, no two texts overlap, no legend covers a data axes. The difference figure
draws exactly the numbers computed here from the records. The tables do not move when every
metric is perturbed by 1e-9.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from matplotlib.text import Text
from scipy import stats as sps

from benchmark.report import plots, stats
from benchmark.report.aggregate import AVG, analyse, difference_frame, difference_grid
from benchmark.report.build import write_report
from benchmark.report.frame import records_frame
from benchmark.report.tables import fmt_num, fmt_p

DOMAINS = ["clipart", "painting", "real_world", "sketch_and_quickdraw"]
SEEDS = [1, 2, 3]
REGIMES = ["transductive", "online", "episodic"]
METRICS = ("acc_pc", "auroc", "hm_accpc_auroc")
GOLDEN = Path(__file__).parent / "golden"


def _labels(n: int = 23) -> list[str]:
    """``n`` labels of 40 characters: departures, long names without spaces, and a real one."""
    out = ["pseudo_label_ensemble (epochs=15, lr=0.06, view_pool=4)", "same_as_baseline"]
    for i in range(n - 2):
        if i % 3 == 0:
            lab = f"method_{i:02d}_with_a_long_name_without_spaces"
        elif i % 3 == 1:
            lab = f"m{i:02d} (batch_size=64, epochs=1, lr=5e-06, x=1)"
        else:
            lab = f"adapter {i:02d} (pos_alpha=4.0, neg_beta=1.0)"
        out.append(lab[:40].ljust(40, "x"))
    return out


def _metrics(rng: np.random.Generator, shift: float) -> dict[str, float]:
    acc = float(np.clip(70 + shift + rng.normal(0, 2), 0, 100))
    auroc = float(np.clip(75 + 0.7 * shift + rng.normal(0, 2), 0, 100))
    return {
        "acc": acc,
        "acc_pc": acc,
        "auroc": auroc,
        "hm_accpc_auroc": 2 * acc * auroc / (acc + auroc),
        "fpr95": 100 - auroc / 2,
        "oscr": acc * auroc / 100,
        "hos": (acc + auroc) / 2,
    }


def _history(regime: str, i: int) -> list[dict[str, float]]:
    if i == 3:  # one point only
        return [{"epoch": 1, "loss": 2.0}]
    if regime == "transductive":
        return [{"epoch": e, "loss": 2.5 - 0.2 * e + 0.01 * i, "selected": 100.0 + e} for e in (1, 2, 3)]
    if i % 4 == 1:  # a TDA-like stream: cache sizes only, no loss
        return [{"epoch": f, "positive_cache": 30 * f, "negative_cache": 12 * f} for f in (0.25, 0.5, 0.75, 1.0)]
    return [{"epoch": f, "loss": 1.5 - 0.3 * f, "positive_cache": 30 * f} for f in (0.25, 0.5, 0.75, 1.0)]


def _records() -> list[tuple[Path, dict]]:
    """24 methods (zero_shot + 23) x 4 domains x 3 seeds; one method equal to zero_shot everywhere, one
    failed run and one missing."""
    rng = np.random.default_rng(0)
    base = {(d, s): _metrics(rng, 0.0) for d in DOMAINS for s in SEEDS}
    out = []
    methods = [("zero_shot", "none")] + [(lab, REGIMES[i % 3]) for i, lab in enumerate(_labels())]
    for i, (label, regime) in enumerate(methods):
        shift = float(rng.normal(0, 3))
        for d in DOMAINS:
            for s in SEEDS:
                if i == 5 and (d, s) == ("sketch_and_quickdraw", 3):
                    continue  # missing
                m = base[(d, s)] if label in ("zero_shot", "same_as_baseline") else _metrics(rng, shift)
                status = "failed" if i == 6 and (d, s) == ("clipart", 1) else "done"
                name = label.split(" ")[0]
                rec = {
                    "spec": {
                        "protocol": "ueo",
                        "dataset": "synthetic",
                        "setting": "oda",
                        "domain": d,
                        "seed": s,
                        "method": name,
                        "model": "ViT-B-16",
                        "pretrained": "openai",
                        "device": "cpu",
                        "hparams": {},
                    },
                    "status": status,
                    "label": label,
                    "departures": {},
                    "regime": regime,
                    "headline_score": "msp_cos",
                    "scores": {"msp_cos": "max softmax of the raw cosines"},
                    "metrics": {
                        "test": {
                            "acc": m["acc"],
                            "acc_pc": m["acc_pc"],
                            "scores": {"msp_cos": {k: v for k, v in m.items() if k not in ("acc", "acc_pc")}},
                        }
                    },
                    "history": [] if regime == "none" or status != "done" else _history(regime, i),
                }
                out.append((Path(f"/runs/{i}-{d}-{s}"), rec))
    return out


@pytest.fixture(scope="module")
def records() -> list[tuple[Path, dict]]:
    return _records()


@pytest.fixture(scope="module")
def group(records):
    groups = analyse(records_frame(records), METRICS)
    assert len(groups) == 1 and len(groups[0].methods) == 24
    return groups[0]


def _inside(inner, outer, tol: float = 1.0) -> bool:
    return (
        inner.x0 >= outer.x0 - tol
        and inner.y0 >= outer.y0 - tol
        and inner.x1 <= outer.x1 + tol
        and inner.y1 <= outer.y1 + tol
    )


def _overlap(a, b, tol: float = 0.5) -> bool:
    return min(a.x1, b.x1) - max(a.x0, b.x0) > tol and min(a.y1, b.y1) - max(a.y0, b.y0) > tol


def _drawn_texts(fig) -> list[Text]:
    """The visible, non-empty texts the last draw drew: tick labels only of the ticks inside the view."""
    ticks = {}
    for ax in fig.axes + [child for parent in fig.axes for child in parent.child_axes]:
        for axis in (ax.xaxis, ax.yaxis):
            every = axis.get_major_ticks() + axis.get_minor_ticks()
            shown = ax.axison and axis.get_visible()
            drawn = set(map(id, axis._update_ticks())) if shown else set()  # what Axis.draw draws
            for tick in every:
                for label in (tick.label1, tick.label2):
                    ticks[id(label)] = id(tick) in drawn
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and ticks.get(id(t), True)]


def _check_layout(fig) -> None:
    """Every drawn text inside the canvas, no two texts overlapping, no legend over a data axes."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = []
    for t in _drawn_texts(fig):
        box = t.get_window_extent(renderer)
        assert _inside(box, fig.bbox), f"text {t.get_text()!r} at {box} leaves the canvas {fig.bbox}"
        boxes.append((t, box))
    for i, (t, a) in enumerate(boxes):
        for u, b in boxes[i + 1 :]:
            assert not _overlap(a, b), f"texts {t.get_text()!r} and {u.get_text()!r} overlap"
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    for legend in legends:
        lb = legend.get_window_extent(renderer)
        assert _inside(lb, fig.bbox)
        for data_ax in fig.axes:
            if data_ax.axison:
                assert not _overlap(lb, data_ax.get_window_extent(renderer)), "a legend covers a data axes"


def _render_and_check(fig) -> None:
    _check_layout(fig)
    plots.plt.close(fig)


def test_long_labels_wrap_within_their_width():
    for label in _labels():
        wrapped = plots.wrap_label(label)
        assert wrapped.replace("\n", "").replace(" ", "") == label.replace(" ", "")
        assert plots.text_width(wrapped) <= plots.LABEL_WIDTH + 1e-9


def test_difference_figure_layout(group):
    for metric in METRICS:
        frame = difference_frame(group, metric)
        assert len(frame) == 23
        _render_and_check(plots.difference_figure(frame, metric, group.baseline, group.title))


def test_heatmap_layout(group):
    _render_and_check(
        plots.heatmap_figure({m: difference_grid(group, m) for m in METRICS}, group.baseline, group.title)
    )


def test_bars_layout(group):
    regimes = {m: group.frame[group.frame.method == m].regime.iloc[0] for m in group.methods}
    _render_and_check(plots.bars_figure({m: group.grids[m] for m in METRICS}, group.columns, group.title, regimes))


def test_cd_layout(group):
    r = group.ranks["hm_accpc_auroc"]
    assert r is not None and len(r.methods) >= 20
    _render_and_check(plots.cd_figure(r.methods, r.result.avg_ranks, r.result.cd, r.cliques, group.title))


def test_tradeoff_layout(group):
    _render_and_check(
        plots.tradeoff_figure(group.grids["acc_pc"], group.grids["auroc"], group.columns, group.baseline, group.title)
    )


def test_curves_layout(group):
    done = group.frame[group.frame.status == "done"]
    histories = {m: [h for h in done[done.method == m].history if h] for m in group.methods}
    histories = {m: h for m, h in histories.items() if h}
    regimes = {m: done[done.method == m].regime.iloc[0] for m in histories}
    fig = plots.curves_figure(histories, regimes, group.title)
    one_point = [t for t in fig.findobj(Text) if t.get_text() == "loss: 1 point"]
    assert len(one_point) == 1
    _render_and_check(fig)


def _direct_differences(records, label: str, metric: str) -> dict[tuple[str, int], float]:
    """``label`` minus zero_shot per (domain, seed) both finished, straight from the record dicts."""

    def values(lab):
        out = {}
        for _, r in records:
            if r["label"] == lab and r["status"] == "done":
                t = r["metrics"]["test"]
                out[(r["spec"]["domain"], r["spec"]["seed"])] = t.get(metric, t["scores"]["msp_cos"].get(metric))
        return out

    base, own = values("zero_shot"), values(label)
    return {k: own[k] - base[k] for k in own if k in base}


def test_difference_figure_draws_the_numbers_of_the_records(records, group):
    metric = "hm_accpc_auroc"
    frame = difference_frame(group, metric)
    fig = plots.difference_figure(frame, metric, group.baseline, group.title)
    drawn = {a.get_gid(): a for a in fig.findobj(lambda a: isinstance(a.get_gid(), str))}
    for r in frame.itertuples():
        d = np.array(list(_direct_differences(records, r.method, metric).values()))
        assert r.n == len(d)
        assert r.mean == pytest.approx(d.mean(), abs=1e-12)
        half = sps.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        assert (r.ci_lo, r.ci_hi) == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-9)
        assert drawn[f"mean {r.method}"].get_xdata()[0] == r.mean
        assert list(drawn[f"ci {r.method}"].get_xdata()) == [r.ci_lo, r.ci_hi]
        test = next(t for t in group.tests[metric] if t.method == r.method)
        assert r.p_holm == pytest.approx(test.holm_wilcoxon, nan_ok=True) and r.mark == test.mark  # the daggers
    same = frame[frame.method == "same_as_baseline"].iloc[0]
    assert (same["mean"], same.ci_lo, same.ci_hi) == (0.0, 0.0, 0.0)
    assert list(drawn["ci same_as_baseline"].get_xdata()) == [0.0, 0.0]
    assert drawn["mean same_as_baseline"].get_xdata()[0] == 0.0
    gains = frame["mean"].to_numpy()
    assert list(gains) == sorted(gains, reverse=True)  # best first
    plots.plt.close(fig)
    fpr = difference_frame(group, "fpr95")["mean"].to_numpy()
    assert list(fpr) == sorted(fpr)  # lower is better: most negative first


def test_heatmap_numbers_are_per_domain_means_of_the_differences(records, group):
    grid = difference_grid(group, "auroc")
    assert "zero_shot" not in grid.index and list(grid.columns) == [*DOMAINS, "all"]
    for label in grid.index:
        diffs = _direct_differences(records, label, "auroc")
        for d in DOMAINS:
            vals = [v for (dom, _), v in diffs.items() if dom == d]
            assert grid.loc[label, d] == pytest.approx(np.mean(vals), abs=1e-12)
        assert grid.loc[label, "all"] == pytest.approx(np.mean(list(diffs.values())), abs=1e-12)
    assert (grid.loc["same_as_baseline"] == 0).all()
    avg = group.grids["auroc"]
    assert set(avg) == set(group.methods) and AVG in avg["zero_shot"]


def _perturb(out: Path, eps: float) -> None:
    """Add ``eps`` to every metric of every record under ``out``."""

    def bump(block):
        for k, v in block.items():
            if isinstance(v, dict):
                bump(v)
            elif isinstance(v, float) and k not in ("n", "n_known", "n_unknown", "threshold"):
                block[k] = v + eps

    for path in (out / "runs").glob("*/result.json"):
        rec = json.loads(path.read_text())
        bump(rec.get("metrics") or {})
        path.write_text(json.dumps(rec))


@pytest.mark.parametrize("eps", [1e-9, -1e-9])
def test_tables_do_not_move_when_every_metric_moves_by_1e_9(tmp_path: Path, eps: float):
    """The golden leaderboard with validation-domain selection, rebuilt from records whose every metric
    moved by ``eps``: every table, p-value and statistic prints the same."""
    shutil.copytree(GOLDEN / "runs", tmp_path / "runs")
    _perturb(tmp_path, eps)
    write_report(tmp_path, reported=[], plots=False, selection="validation_domain")
    expected = GOLDEN / "expected_validation_domain"
    files = sorted(p.relative_to(expected) for p in expected.rglob("*") if p.is_file())
    assert files
    for rel in files:
        assert (tmp_path / rel).read_text() == (expected / rel).read_text(), f"{rel} moved"


def test_p_values_and_statistics_print_two_significant_digits():
    cases = {
        0.0055: "0.0055",
        0.00017: "0.00017",
        1.234e-05: "1.2e-05",
        0.000394: "0.00039",
        0.5: "0.50",
        1.0: "1.0",
        0.0105: "0.011",
        8.37: "8.4",
        19.77: "20",
        150.3: "150",
        math.nan: "n/a",
    }
    assert {p: fmt_p(p) for p in cases if not math.isnan(p)} == {p: t for p, t in cases.items() if not math.isnan(p)}
    assert fmt_p(math.nan) == "n/a"
    assert [fmt_num(x) for x in (-1e-15, 1e-15, -4.031)] == ["0.00", "0.00", "-4.03"]  # no noise-signed zero
    assert fmt_num(0.56, 2, sign=True) == "+0.56"


def test_last_bit_noise_neither_breaks_ties_nor_signs_zeros():
    """Differences equal but for float noise (``acc`` and ``acc_pc`` of balanced classes are the same numbers
    computed in another order) tie, and a noise-sized difference is zero: the tests do not move."""
    exact = np.array([10 / 9, 10 / 9, -10 / 9, 2.0, 0.5, 0.0, 3.0])
    noisy = np.array([1.1111111111111143, 1.1111111111111001, -1.111111111111107, 2.0, 0.5, 1e-14, 3.0])
    assert stats.wilcoxon_signed_rank(noisy) == stats.wilcoxon_signed_rank(exact)
    base = np.full(7, 70.0)
    r_exact, r_noisy = stats.paired_tests(base + exact, base), stats.paired_tests(base + noisy, base)
    assert r_noisy.p_wilcoxon == r_exact.p_wilcoxon and r_noisy.p_ttest == pytest.approx(r_exact.p_ttest, rel=1e-9)
    same = stats.paired_tests(base + np.array([0, 1e-14, -1e-14, 0, 0, 0, 0]), base)
    assert math.isnan(same.p_wilcoxon) and math.isnan(same.p_ttest)  # equal to the baseline but for noise
    assert list(stats.rank_rows(np.array([[70.0, 70.0 + 1e-13, 69.0]]))[0]) == [1.5, 1.5, 3.0]


def test_few_pairs_and_single_runs_are_drawn_and_said(records):
    """A method with one common pair (no interval), one with none, a metric where lower is better, a single run:
    every figure still renders inside its canvas."""
    keep = {"zero_shot", "same_as_baseline", _labels()[0], _labels()[2]}
    small = []
    for path, rec in records:
        if rec["label"] not in keep:
            continue
        spec = rec["spec"]
        if rec["label"] == _labels()[0] and (spec["domain"], spec["seed"]) != ("clipart", 1):
            continue  # one pair only
        if rec["label"] == _labels()[2] and rec["spec"]["seed"] == 1:
            rec = {**rec, "spec": {**spec, "seed": 9}}  # no pair in common with the baseline
        small.append((path, rec))
    g = analyse(records_frame(small), ("acc_pc", "fpr95"))[0]
    frame = difference_frame(g, "fpr95")
    by = frame.set_index("method")
    assert by.loc[_labels()[0], "n"] == 1 and math.isnan(by.loc[_labels()[0], "ci_lo"])
    fig = plots.difference_figure(frame, "fpr95", g.baseline, g.title)
    assert any("no interval: 1 pair" in t.get_text() for t in fig.findobj(Text))
    _render_and_check(fig)
    _render_and_check(
        plots.heatmap_figure({m: difference_grid(g, m) for m in ("acc_pc", "fpr95")}, g.baseline, g.title)
    )
    done = g.frame[g.frame.status == "done"]
    one = {m: [h for h in done[done.method == m].history if h][:1] for m in g.methods[1:2]}
    _render_and_check(plots.curves_figure(one, {m: "online" for m in one}, g.title))
    _render_and_check(plots.cd_figure(["a", "b"], [1.0, 2.0], 5.0, [(0, 1)], g.title))
