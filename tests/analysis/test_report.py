"""selmem report: comparison folders -> one markdown page, tables verbatim, plots copied."""

from __future__ import annotations

import json

import pytest

from selmem.analysis.report import report

TABLE = "| model | test accuracy |\n|---|---|\n| selmem | 99.0% ± 0.0% |"


def fake_compare(folder, png=b"\x89PNG fake"):
    (folder / "selmem-s0").mkdir(parents=True)
    (folder / "results.md").write_text(f"# mqar: selmem\n\nCommand: `selmem compare ...`\n\n{TABLE}\n")
    env = {"platform": "linux", "cpu_count": 2, "torch": "2.13.0", "device": "cpu", "git": "0123456789abc"}
    (folder / "selmem-s0" / "env.json").write_text(json.dumps(env))
    (folder / "curves.png").write_bytes(png)
    return folder


def test_report_copies_tables_verbatim_and_plots_beside_it(tmp_path):
    a, b = fake_compare(tmp_path / "runs" / "a"), fake_compare(tmp_path / "runs" / "b", png=b"\x89PNG other")
    out = report([a, b], tmp_path / "docs" / "RESULTS.md", title="Results: recall")
    text = out.read_text()
    assert text.startswith("# Results: recall\n")
    assert f"--out {out} --title 'Results: recall'`" in text  # the page names the command that makes it
    assert text.count(TABLE) == 2 and "## a\n" in text and "## b\n" in text
    assert "git 0123456789" in text and "2 CPUs" in text
    assert (tmp_path / "docs" / "img" / "b-curves.png").read_bytes() == b"\x89PNG other"
    assert "![curves.png](img/a-curves.png)" in text and "state.png" not in text  # only plots that exist


def test_report_refuses_a_folder_that_is_not_a_comparison(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(FileNotFoundError, match="has no results.md"):
        report([tmp_path / "x"], tmp_path / "R.md")
