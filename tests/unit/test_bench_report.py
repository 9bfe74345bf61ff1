"""`aifs bench`'s report (aifsfs/bench/report.py): ratios of AIFS to each peer, and of each
other AIFS target (aifs-writeback, aifs-cluster) to the peers that are not AIFS, from the
medians of one run; both in the text and the Markdown tables."""

from __future__ import annotations

from aifsfs.bench import report
from aifsfs.bench import workloads as wl
from aifsfs.bench.runner import BenchConfig, Results


def _doc() -> dict:
    res = Results()
    for target, create in (("aifs", [100.0, 300.0]), ("aifs-writeback", [400.0, 400.0]),
                           ("gocryptfs", [1000.0, 1000.0]), ("native", [5000.0, 3000.0])):
        for v in create:
            res.add(target, "small_create", v)
        res.status[target] = {"status": "ran", "reason": ""}
    cfg = BenchConfig(targets=list(res.figures), sizes=wl.Sizes(), repeat=2)
    return report.summarize(res, cfg, {})


def test_each_aifs_target_is_divided_by_the_peers_that_are_not_aifs() -> None:
    doc = _doc()
    assert doc["ratios"]["gocryptfs"]["small_create"] == 0.2          # median 200 / 1000
    assert doc["ratios"]["aifs-writeback"]["small_create"] == 0.5
    wb = doc["variant_ratios"]["aifs-writeback"]
    assert set(wb) == {"gocryptfs", "native"}                          # not aifs itself
    assert wb["gocryptfs"]["small_create"] == 0.4
    assert wb["native"]["small_create"] == 0.1


def test_the_tables_show_the_variant_ratios() -> None:
    doc = _doc()
    md = report.render_markdown(doc)
    assert "| aifs-writeback / peer | gocryptfs | native |" in md
    assert "| small files create+write+close | 0.40x | 0.10x |" in md
    text = report.render_table(doc)
    assert "aifs-writeback/gocryptfs" in text and "0.40x" in text
