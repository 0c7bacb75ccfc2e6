"""Report files: formats, determinism, robustness on empty/partial data, the CLI, the HTML page,
and a metric plugin's own plots() being embedded."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from harness.api import Metric
from harness.registry import metrics
from harness.report import write_report, write_run_report
from harness.report.tables import trajectories
from harness.report.writers import rich_table, to_markdown
from test_report_compare import _write_run
from test_report_tables import make_frame


def test_run_report_files_deterministic_and_loadable(tmp_path):
    f = make_frame()
    files = write_run_report(tmp_path / "r1", f)
    names = sorted(p.name for p in files)
    tables = ("leaderboard", "verdicts", "relation_checkpoint", "relation_step", "relation_model", "trajectories",
              "status")
    want = {f"{t}.{x}" for t in tables for x in ("md", "csv", "parquet")} | {"report.html"}
    assert set(names) == want - {"relation_step.parquet"}  # no suite series: empty, says why in .md
    write_run_report(tmp_path / "r2", f.sample(frac=1.0, random_state=0))  # shuffled input
    for name in ("leaderboard.md", "leaderboard.csv", "trajectories.md", "trajectories.csv",
                 "relation_checkpoint.csv", "relation_model.csv", "verdicts.md", "status.md"):
        assert (tmp_path / "r1/report" / name).read_bytes() == (tmp_path / "r2/report" / name).read_bytes(), name
    back = pd.read_parquet(tmp_path / "r1/report/trajectories.parquet")
    assert back.shape[0] == 24 and "pydoc_mc/acc stderr" in back.columns
    board = pd.read_parquet(tmp_path / "r1/report/leaderboard.parquet")
    assert board.shape[0] == 3 and list(board["rank"]) == [1, 2, 3]  # one row per model
    csv = pd.read_csv(tmp_path / "r1/report/relation_checkpoint.csv")
    assert {"spearman", "kendall", "partial_r", "perm_p", "q_bh"} <= set(csv.columns)


def test_html_is_self_contained(tmp_path):
    write_run_report(tmp_path, make_frame())
    page = (tmp_path / "report/report.html").read_text()
    imgs = re.findall(r'<img[^>]+src="([^"]+)"', page)
    assert len(imgs) >= 3 and all(src.startswith("data:image/png;base64,") for src in imgs)
    assert "<link" not in page and "<script" not in page
    assert "pydoc_mc/acc ↑" in page and "loss.loss ↓" in page
    assert "scatter" in page and "finite_size" in page and "loss_loss" in page


@pytest.mark.parametrize("frame", [None, "empty", "skipped_only", "no_steps"])
def test_never_raises_on_empty_or_partial(tmp_path, frame):
    base = make_frame()
    frames = {None: None, "empty": base.iloc[0:0], "skipped_only": base[base.status == "skipped"],
              "no_steps": base.assign(step=None)}
    files = write_run_report(tmp_path, frames[frame])
    assert (tmp_path / "report/report.html") in files
    md = (tmp_path / "report/leaderboard.md").read_text()
    assert "_empty: " in md  # says why


def test_markdown_and_rich_render():
    lb = trajectories(make_frame())
    md = to_markdown(lb)
    assert md.startswith("## trajectories") and "| 0.2" in md and "- runs: run1" in md
    from rich.console import Console

    con = Console(record=True, width=250)
    con.print(rich_table(lb))
    assert "pydoc_mc/acc ↑" in con.export_text()


def test_plugin_plots_are_called_and_embedded(tmp_path):
    calls = []

    class DrawMetric(Metric):
        name = "obs"

        def __init__(self, **params):  # the report must never build a metric to draw it
            raise AssertionError("plots() is a pure function of records: the class is not instantiated")

        @classmethod
        def plots(cls, records, out_dir):
            calls.append(sorted(records["metric"].unique()))
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots()
            ax.plot([1, 2], [3, 4])
            path = out_dir / "obs_fit.png"
            fig.savefig(path)
            plt.close(fig)
            return [path]

    reg = metrics()
    reg.register("obs", DrawMetric)
    try:
        write_run_report(tmp_path, make_frame())
    finally:
        reg._extra.pop("obs", None)
    assert calls == [["obs"]]
    assert "obs_fit" in (tmp_path / "report/report.html").read_text()


def test_report_cli(tmp_path, capsys):
    from harness.report.cli import main

    run = _write_run(make_frame(), tmp_path / "run")
    out = tmp_path / "out"
    assert main(["report", str(run), "--format", "terminal,md,csv", "--out", str(out), "--n-boot", "50",
                 "--n-perm", "50", "--measures", "lm_eval:*"]) == 0
    text = capsys.readouterr().out
    assert "pydoc_mc/acc ↑" in text and "relation" in text
    assert text.index("leaderboard") < text.index("relation") < text.index("trajectories")  # ranking first
    assert (out / "leaderboard.md").exists() and not (out / "report.html").exists()
    assert main(["report", str(tmp_path / "nope")]) == 2


def test_write_report_custom_performance(tmp_path):
    _, tables = write_report(make_frame(), tmp_path, formats=("csv",), performance=["obs:*"], n_boot=0, n_perm=0)
    rel = next(t for t in tables if t.name == "relation_checkpoint").data
    assert set(rel["performance"]) == {"obs.tracks"}
    assert json.loads(json.dumps(list(rel["observable"])))[0] == "log(tokens_seen)"
