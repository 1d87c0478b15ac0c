"""``spikeconv report RUN_DIR``: one self-contained HTML page of a run's results.

What a run directory holds is what spikeconv writes: the markdown pages of ``experiment``
and the benchmarks (``NAME.md`` with their tables, and the PNG plots they show), the JSON
of ``evaluate --out`` (a table of its networks) and plots without a page. Markdown is
rendered for the subset spikeconv writes (headings, paragraphs, lists, tables, code,
bold, links, images); every image is embedded as base64, so the page has no external
reference and can be sent on its own. Text is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

from .files import write_text

__all__ = ["render_markdown", "write_report"]

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
code { background: #f3f3f3; padding: 0 3px; }
img { max-width: 100%; }
nav a { margin-right: 1em; }
section { border-top: 2px solid #ddd; margin-top: 2em; }
"""


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``run_dir/report.html``),
    atomically; returns its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    out = Path(out) if out is not None else run_dir / "report.html"
    pages = sorted(p for p in run_dir.rglob("*.md") if p.is_file())
    shown: set[Path] = set()
    sections: list[tuple[str, str]] = []
    for page in pages:
        body, images = render_markdown(page.read_text(), page.parent)
        shown |= images | {page.with_suffix(".json")}
        sections.append((str(page.relative_to(run_dir)), body))
    for data in sorted(run_dir.rglob("*.json")):
        if data in shown:
            continue
        body = _json_section(data)
        if body:
            sections.append((str(data.relative_to(run_dir)), body))
    plots = [p for p in sorted(run_dir.rglob("*.png")) if p.resolve() not in {s.resolve() for s in shown}]
    for plot in plots:
        sections.append((str(plot.relative_to(run_dir)), f"<p>{_image(plot, plot.name)}</p>"))
    if not sections:
        raise ValueError(f"{run_dir} holds no results spikeconv wrote (*.md, evaluate's *.json, *.png)")
    nav = " ".join(f'<a href="#s{k}">{html.escape(name)}</a>' for k, (name, _) in enumerate(sections))
    parts = [f'<section id="s{k}"><h2>{html.escape(name)}</h2>\n{body}</section>' for k, (name, body) in enumerate(sections)]
    title = html.escape(f"spikeconv results: {run_dir.resolve().name}")
    document = (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title><style>{_STYLE}</style></head>\n"
        f"<body><h1>{title}</h1><nav>{nav}</nav>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    write_text(out, document)
    return out


# ----------------------------------------------------------------------------- markdown


def render_markdown(text: str, base: Path) -> tuple[str, set[Path]]:
    """HTML for the markdown subset spikeconv writes, with images (paths relative to
    ``base``) embedded; and the image files it embedded."""
    images: set[Path] = set()
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("```"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
            out.append("<pre>" + html.escape("\n".join(lines[i + 1 : end])) + "</pre>")
            i = end + 1
        elif m := re.match(r"(#{1,6})\s+(.*)", line):
            level = min(len(m.group(1)) + 2, 6)  # the page's own h1/h2 come first
            out.append(f"<h{level}>{_inline(m.group(2), base, images)}</h{level}>")
            i += 1
        elif line.lstrip().startswith("|"):
            end = i
            while end < len(lines) and lines[end].lstrip().startswith("|"):
                end += 1
            out.append(_table(lines[i:end], base, images))
            i = end
        elif re.match(r"\s*[-*]\s+", line):
            items: list[str] = []
            while i < len(lines) and lines[i].strip():
                if re.match(r"\s*[-*]\s+", lines[i]):
                    items.append(re.sub(r"^\s*[-*]\s+", "", lines[i]))
                else:  # a continuation line of the item
                    items[-1] += " " + lines[i].strip()
                i += 1
            out.append("<ul>" + "".join(f"<li>{_inline(item, base, images)}</li>" for item in items) + "</ul>")
        else:
            paragraph = []
            while i < len(lines) and lines[i].strip() and not _starts_block(lines[i]):
                paragraph.append(lines[i].strip())
                i += 1
            out.append(f"<p>{_inline(' '.join(paragraph), base, images)}</p>")
    return "\n".join(out), images


def _starts_block(line: str) -> bool:
    return bool(re.match(r"(#{1,6}\s|\s*\||\s*[-*]\s|```)", line))


def _table(rows: list[str], base: Path, images: set[Path]) -> str:
    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]
    body = [r for r in cells[1:] if not all(re.fullmatch(r":?-{3,}:?", c) for c in r)]
    head = "".join(f"<th>{_inline(c, base, images)}</th>" for c in cells[0])
    rows_html = "".join("<tr>" + "".join(f"<td>{_inline(c, base, images)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows_html}</tbody></table>"


def _inline(text: str, base: Path, images: set[Path]) -> str:
    """Escaped text with ``code``, **bold**, ![images](x.png) and [links](url)."""
    pieces: list[str] = []
    pattern = re.compile(r"`([^`]+)`|\*\*(.+?)\*\*|!\[([^\]]*)\]\(([^)\s]+)\)|\[([^\]]+)\]\(([^)\s]+)\)")
    position = 0
    for m in pattern.finditer(text):
        pieces.append(html.escape(text[position : m.start()]))
        if m.group(1) is not None:
            pieces.append(f"<code>{html.escape(m.group(1))}</code>")
        elif m.group(2) is not None:
            pieces.append(f"<b>{_inline(m.group(2), base, images)}</b>")
        elif m.group(4) is not None:
            target = (base / m.group(4)).resolve()
            if target.is_file() and target.suffix.lower() == ".png":
                images.add(target)
                pieces.append(_image(target, m.group(3)))
            else:  # not a local plot: its text only (the page stays self-contained)
                pieces.append(html.escape(f"[image: {m.group(3)} ({m.group(4)})]"))
        else:
            pieces.append(f"{html.escape(m.group(5))} ({html.escape(m.group(6))})")
        position = m.end()
    pieces.append(html.escape(text[position:]))
    return "".join(pieces)


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt, quote=True)}" src="data:image/png;base64,{data}">'


# ----------------------------------------------------------------------------- evaluate's JSON


def _json_section(path: Path) -> str:
    """A table of an ``evaluate --out`` file's networks; other JSON (an experiment's data
    without its page) as a short listing of its keys."""
    try:
        data: Any = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return ""
    if isinstance(data, dict) and isinstance(data.get("networks"), dict):
        header = ["network", "dataset", "images", "ANN %", "final %", "latency (steps)", "spikes/image", "synops/image"]
        rows = []
        for name, entry in data["networks"].items():
            rows.append([
                name, entry.get("dataset", ""), entry.get("images", ""), _number(entry.get("ann_accuracy")),
                _number(entry.get("final_accuracy")), entry.get("latency", ""), _number(entry.get("spikes_per_image"), 0),
                _number(entry.get("synops_per_image"), 0),
            ])  # fmt: skip
        table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        table += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
        intro = f"`spikeconv evaluate`: T = {data.get('T')}, {data.get('coding')} input, seed {data.get('seed')}."
        body, _ = render_markdown(intro + "\n\n" + "\n".join(table), path.parent)
        return body
    if isinstance(data, dict):
        return f"<p>JSON with keys: {html.escape(', '.join(map(str, data)))}</p>"
    return ""


def _number(value: Any, digits: int = 2) -> str:
    return "" if value is None else f"{value:,.{digits}f}"
