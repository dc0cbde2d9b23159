"""report.md and report.html of lmjax.report: the same tables, as markdown to paste and as one self-contained page
(styles inline, plots as base64 PNG data), for people who would rather look than read.

A section is lmjax.report's Table: title, columns, rows of cell strings, and a note saying what the numbers are.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Sequence

Table = Any  # lmjax.report.Table, which imports this module

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 80em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 0.3em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
p.note { color: #555; font-size: 0.85em; max-width: 70em; }
figure { margin: 1em 0; } img { max-width: 100%; border: 1px solid #eee; }
.scroll { overflow-x: auto; }
"""


def markdown_document(title: str, intro: str, sections: Sequence[Table], plots: Sequence[Path]) -> str:
  parts = [f"# {title}\n", f"{intro}\n"]
  for section in sections:
    parts.append(f"## {section.title}\n")
    parts.append(section.markdown())
    if section.note:
      parts.append(f"{section.note}\n")
  if plots:
    parts.append("## Plots\n")
    parts.append("\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n")
  return "\n".join(parts)


def _numeric(cell: str) -> bool:
  head = cell.split(" ", 1)[0].replace(",", "").lstrip("-+[")
  return bool(head) and (head[0].isdigit() or head.startswith("."))


def _table_html(section: Table) -> str:
  head = "".join(f"<th>{html.escape(str(c))}</th>" for c in section.columns)
  body = []
  for row in section.rows:
    cells = []
    for cell in row:
      text = html.escape(str(cell)).replace("**chosen**", "<strong>chosen</strong>")
      cells.append(f'<td class="num">{text}</td>' if _numeric(str(cell)) else f"<td>{text}</td>")
    body.append("<tr>" + "".join(cells) + "</tr>")
  note = f'<p class="note">{html.escape(section.note)}</p>' if section.note else ""
  return (f"<h2>{html.escape(section.title)}</h2>\n<div class=\"scroll\"><table><thead><tr>{head}</tr></thead>"
          f"<tbody>{''.join(body)}</tbody></table></div>{note}\n")


def write_html(path: Path, title: str, intro: str, sections: Sequence[Table], plots: Sequence[Path]) -> Path:
  figures = []
  for plot in plots:
    data = base64.b64encode(Path(plot).read_bytes()).decode("ascii")
    figures.append(f'<figure><img alt="{html.escape(plot.stem)}" src="data:image/png;base64,{data}">'
                   f"<figcaption>{html.escape(plot.name)}</figcaption></figure>")
  # The plots after the first summary tables, where a reader looks first; the run-by-run table and the glossary
  # come last.
  lead = [s for s in sections if s.title not in ("Runs", "What the columns mean")]
  tail = [s for s in sections if s not in lead]
  body = ("".join(_table_html(s) for s in lead) + ("<h2>Plots</h2>\n" + "\n".join(figures) if figures else "")
          + "".join(_table_html(s) for s in tail))
  page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
          f"<style>{STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n<p>{html.escape(intro)}</p>\n"
          f"{body}</body></html>\n")
  path.write_text(page, encoding="utf-8")
  return path
