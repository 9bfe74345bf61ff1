"""Turns raw `aifs bench` figures into statistics, AIFS/peer ratios, a table, JSON and a plot.

Interface:
- `summarize(results, config, machine) -> dict`: the JSON document (schema "aifs-bench/1"):
  `machine`, `config`, `targets` (status, reason, version, notes, expected figures),
  `figure_info` (label, unit, better), `figures[target][figure]` = {runs, median, min, max,
  stdev}, `ratios[peer][figure]` = median(aifs) / median(peer), `variant_ratios[v][peer]
  [figure]` the same for each other AIFS target v (aifs-writeback, aifs-cluster) against the
  non-AIFS peers, `processes`, `duration_s`.
- `render_table(doc) -> str`: the figures (median, with min-max when repeated) and the ratios;
  `render_markdown(doc) -> str`: the same as Markdown tables.
- `write_json(doc, path)`, `plot_ratios(doc, path)` (matplotlib, Agg backend, log scale).

A ratio is AIFS / peer from the same run, for every figure both produced: above 1 is better
for AIFS on throughput figures, below 1 is better on stored bytes and memory.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import workloads as wl
from .runner import BenchConfig, Results

SCHEMA = "aifs-bench/1"
BASE = "aifs"


def _stats(runs: list[float]) -> dict[str, Any]:
    return {
        "runs": runs,
        "median": statistics.median(runs),
        "min": min(runs),
        "max": max(runs),
        "stdev": statistics.stdev(runs) if len(runs) > 1 else 0.0,
    }


def summarize(res: Results, cfg: BenchConfig, machine: dict[str, object]) -> dict[str, Any]:
    figures = {t: {f: _stats(v) for f, v in figs.items() if v} for t, figs in res.figures.items()}
    ratios = _ratios(figures, BASE, [t for t in figures if t != BASE])
    # each other AIFS target (aifs-writeback, aifs-cluster...) against the non-AIFS peers
    others = [t for t in figures if not _is_aifs(t)]
    variant_ratios = {v: r for v in figures if _is_aifs(v) and v != BASE
                      for r in [_ratios(figures, v, others)] if r}
    targets = {}
    for name, st in res.status.items():
        targets[name] = dict(st, expected_figures=res.expected.get(name, []))
    return {
        "schema": SCHEMA,
        "machine": machine,
        "config": {
            "targets": cfg.targets,
            "repeat": cfg.repeat,
            "quick": cfg.quick,
            "sizes": asdict(cfg.sizes),
            "sample_shape": list(wl.SAMPLE_SHAPE),
            "small_file_bytes": wl.SMALL_SIZE,
            "loader_workers": wl.LOADER_WORKERS,
            "drop_caches": res.drop_caches,
        },
        "targets": targets,
        "figure_info": {k: asdict(v) for k, v in wl.FIGURES.items()},
        "figures": figures,
        "ratios": ratios,
        "variant_ratios": variant_ratios,
        "processes": res.processes,
        "interrupted": res.interrupted,
        "duration_s": round(res.duration_s, 1),
    }


def _is_aifs(target: str) -> bool:
    return target == BASE or target.startswith(BASE + "-")


def _ratios(figures: dict[str, dict[str, Any]], base_name: str, peers: list[str]
            ) -> dict[str, dict[str, float]]:
    """median(base) / median(peer) per peer and figure both have."""
    out: dict[str, dict[str, float]] = {}
    base = figures.get(base_name, {})
    for peer in peers:
        for f, st in figures[peer].items():
            if f in base and st["median"] > 0 and base[f]["median"] > 0:
                out.setdefault(peer, {})[f] = base[f]["median"] / st["median"]
    return out


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def _cell(st: dict[str, Any] | None, repeated: bool) -> str:
    if st is None:
        return "-"
    s = _fmt(st["median"])
    if repeated and len(st["runs"]) > 1:
        s += f" ({_fmt(st['min'])}-{_fmt(st['max'])})"
    return s


def _grid(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
    )
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def render_table(doc: dict[str, Any]) -> str:
    ran = [t for t, st in doc["targets"].items() if t in doc["figures"]]
    repeated = doc["config"]["repeat"] > 1
    info = doc["figure_info"]
    keys = [k for k in info if any(k in doc["figures"][t] for t in ran)]
    out = []
    header = ["figure", "unit", *ran]
    rows = []
    for k in keys:
        rows.append(
            [
                info[k]["label"],
                info[k]["unit"],
                *(_cell(doc["figures"][t].get(k), repeated) for t in ran),
            ]
        )
    title = f"median of {doc['config']['repeat']} run(s)" + (", (min-max)" if repeated else "")
    out.append(f"aifs bench: {title}")
    out.append(_grid(header, rows))
    for base, peers, rows in _ratio_tables(doc, ran, keys):
        out.append("")
        out.append(
            "AIFS / peer (same run): >1 is better for AIFS except where marked (lower better)"
            if base == BASE else f"{base} / peer (same run)"
        )
        out.append(_grid(["figure", *(f"{base}/{p}" for p in peers)], rows))
    skipped = [(t, st) for t, st in doc["targets"].items() if st["status"] != "ran"]
    for t, st in skipped:
        out.append(f"{t}: {st['status']} - {st['reason']}")
    if doc.get("interrupted"):
        out.append("interrupted: the figures above are partial")
    return "\n".join(out)


def render_markdown(doc: dict[str, Any]) -> str:
    """The same two tables as `render_table`, as Markdown (for docs/BENCHMARKS.md)."""
    ran = [t for t in doc["targets"] if t in doc["figures"]]
    repeated = doc["config"]["repeat"] > 1
    info = doc["figure_info"]
    keys = [k for k in info if any(k in doc["figures"][t] for t in ran)]
    lines = ["| figure | unit | " + " | ".join(ran) + " |", "|---|---|" + "---:|" * len(ran)]
    for k in keys:
        cells = [_cell(doc["figures"][t].get(k), repeated) for t in ran]
        lines.append(f"| {info[k]['label']} | {info[k]['unit']} | " + " | ".join(cells) + " |")
    for base, peers, rows in _ratio_tables(doc, ran, keys):
        title = "AIFS" if base == BASE else base
        lines += ["", f"| {title} / peer | " + " | ".join(peers) + " |",
                  "|---|" + "---:|" * len(peers)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _ratio_tables(doc: dict[str, Any], ran: list[str], keys: list[str]
                  ) -> list[tuple[str, list[str], list[list[str]]]]:
    """The ratio tables both renderings show: AIFS's, then each other AIFS target's, as
    (target, its peers that ran, rows of [label (lower better), a cell per peer]); a table
    with no figure is left out."""
    info = doc["figure_info"]
    tables = []
    for base, ratios in [(BASE, doc["ratios"]), *doc.get("variant_ratios", {}).items()]:
        peers = [p for p in ran if p in ratios]
        rows = [[info[k]["label"] + (" (lower better)" if info[k]["better"] == "lower" else ""),
                 *(_ratio_cell(ratios[p].get(k)) for p in peers)]
                for k in keys if any(k in ratios[p] for p in peers)]
        if rows:
            tables.append((base, peers, rows))
    return tables


def _ratio_cell(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def plot_ratios(doc: dict[str, Any], path: Path) -> bool:
    """Grouped horizontal bars of AIFS/peer per figure, log scale; False if nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = list(doc["ratios"])
    info = doc["figure_info"]
    keys = [k for k in info if any(k in doc["ratios"][p] for p in peers)]
    if not peers or not keys:
        return False
    fig, ax = plt.subplots(figsize=(11, 0.55 * len(keys) * max(1.0, len(peers) / 2.5) + 1.8))
    height = 0.8 / len(peers)
    colors = plt.get_cmap("tab10").colors  # type: ignore[attr-defined]
    for j, p in enumerate(peers):
        ys, xs = [], []
        for i, k in enumerate(keys):
            r = doc["ratios"][p].get(k)
            if r is not None and math.isfinite(r) and r > 0:
                ys.append(i + (j - (len(peers) - 1) / 2) * height)
                xs.append(r)
        ax.barh(
            ys, xs, height=height * 0.95, color=colors[j % len(colors)], label=f"aifs / {p}", left=0
        )
        for y, x in zip(ys, xs, strict=True):
            ax.text(x, y, f" {x:.2g}", va="center", fontsize=7)
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(range(len(keys)))
    ax.set_yticklabels(
        [
            info[k]["label"] + (" (lower better)" if info[k]["better"] == "lower" else "")
            for k in keys
        ],
        fontsize=9,
    )
    ax.invert_yaxis()
    ax.set_xlabel("AIFS / peer (log scale): right of 1 = AIFS higher")
    m = doc["machine"]
    ax.set_title(
        f"aifs bench ratios - {m.get('cores')} cores, {m.get('memory_gib')} GiB, "
        f"{'quick' if doc['config']['quick'] else 'full'} sizes, median of {doc['config']['repeat']}",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
