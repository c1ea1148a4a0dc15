"""A self-contained HTML report of a run: figures (plotly.js inlined once) and findings, for people without Python."""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from .diagnosis import Finding
from .figures import PALETTE

#: The page style; the findings' colours come from the one palette (problem: vermillion, warning: orange, info: blue).
_STYLE = f"""
body {{ font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2rem auto; max-width: 1200px;
       color: #1f2933; background: #ffffff; padding: 0 1rem; }}
h1 {{ font-size: 1.8rem; }} h2 {{ margin-top: 2.2rem; border-bottom: 1px solid #d9e2ec; padding-bottom: .3rem; }}
table {{ border-collapse: collapse; }} td, th {{ padding: .25rem .8rem; border-bottom: 1px solid #e4e7eb; text-align: left; }}
.finding {{ padding: .6rem .9rem; margin: .5rem 0; border-left: 4px solid; border-radius: 3px; }}
.problem {{ border-color: {PALETTE[3]}; background: #fdf0e8; }} .warning {{ border-color: {PALETTE[1]}; background: #fff8e6; }}
.info {{ border-color: {PALETTE[0]}; background: #eaf3fa; }}
.fix {{ display: block; margin-top: .3rem; }}
.figure {{ margin: 1.2rem 0; }}
"""


def html_report(title: str, summary: Mapping[str, object], findings: Sequence[Finding],
                figures: Sequence[go.Figure]) -> str:
    """Build a standalone HTML page: a summary table, the findings and every figure (interactive).

    Args:
        title: Page title (e.g. the run's name).
        summary: Label → value rows for the summary table.
        findings: The findings to list (most severe first), each with its fix.
        figures: Plotly figures; plotly.js is embedded once, so the file opens offline.
    """
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in summary.items())
    if findings:
        found = "".join(f'<div class="finding {html.escape(f.severity)}"><strong>{html.escape(f.severity)}:'
                        f'</strong> {html.escape(f.message)}<span class="fix"><strong>Fix:</strong> '
                        f'{html.escape(f.fix)}</span></div>' for f in findings)
    else:
        found = '<div class="finding info">No problems found with the thresholds used.</div>'
    parts = []
    for i, fig in enumerate(figures):
        parts.append('<div class="figure">' + fig.to_html(full_html=False, include_plotlyjs="inline" if i == 0
                                                          else False, config={"displaylogo": False}) + "</div>")
    generated = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>Gradient Flow Diagnostics report, generated {generated}.</p><table>{rows}</table>"
            f"<h2>Findings</h2>{found}<h2>Figures</h2>{''.join(parts)}</body></html>")
