"""`spikeconv report`: one self-contained HTML page of a run directory."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from spikeconv.cli import main
from spikeconv.io.report import render_markdown, write_report


def _png(path, colour=(200, 30, 30)) -> None:
    Image.new("RGB", (6, 4), colour).save(path)


def test_markdown_subset_renders_escaped_with_embedded_images(tmp_path):
    _png(tmp_path / "plot.png")
    text = (
        "# noise: a net\n\nCommand: `spikeconv experiment noise`\n\n"
        "| level | accuracy |\n|---|---:|\n| 10 dB | **98.1** |\n\n"
        "- first <script>alert(1)</script>\n  continued\n- second [paper](https://example.org)\n\n"
        "![noise](plot.png) and ![gone](missing.png)\n"
    )
    body, images = render_markdown(text, tmp_path)
    assert "<h3>noise: a net</h3>" in body and "<code>spikeconv experiment noise</code>" in body
    assert "<th>level</th>" in body and "<td><b>98.1</b></td>" in body and "---" not in body
    assert "<li>first &lt;script&gt;alert(1)&lt;/script&gt; continued</li>" in body
    assert "paper (https://example.org)" in body and "<a " not in body
    assert body.count("data:image/png;base64,") == 1 and images == {(tmp_path / "plot.png").resolve()}
    assert "[image: gone (missing.png)]" in body


def test_cli_report_of_an_evaluation_run(tmp_path, digits_model, capsys):
    _, _, model_path = digits_model
    run = tmp_path / "run"
    snn = tmp_path / "m.snn.pt"
    assert main(["convert", "--model", str(model_path), "--rule", "maxnorm", "--calibration-size", "200",
                 "--out", str(snn), "--quiet"]) == 0  # fmt: skip
    assert main(["evaluate", "--snn", str(snn), "-T", "20", "--test-size", "50", "--out", str(run / "eval.json"),
                 "--plot", str(run / "accuracy.png"), "--quiet"]) == 0  # fmt: skip
    (run / "notes.md").write_text("# notes\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n![plot](accuracy.png)\n")
    _png(run / "other.png", (0, 0, 255))
    capsys.readouterr()
    assert main(["report", str(run), "--quiet"]) == 0
    assert "self-contained" in capsys.readouterr().out
    page = (run / "report.html").read_text()
    final = json.loads((run / "eval.json").read_text())["networks"]["m.snn"]["final_accuracy"]
    assert "<td>m.snn</td>" in page and f"<td>{final:,.2f}</td>" in page  # the evaluation's table
    assert page.count("data:image/png;base64,") == 2  # accuracy.png once (shown by notes.md), other.png
    assert not re.search(r"""(src|href)=["']?(https?:|file:|/)""", page)  # nothing outside the page


def test_report_refuses_a_missing_or_empty_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "nope")
    with pytest.raises(ValueError, match="holds no results"):
        write_report(tmp_path)
