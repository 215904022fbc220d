"""The reward-model inspection report: one self-contained HTML file with embedded matplotlib plots.

Written by :func:`reward.inspect.run_inspection`; open ``report.html`` in any browser (the plots are
base64 PNGs inside the file, so it can be copied or attached alone). Plots:

- chosen vs rejected score histograms (labelled pairs; passed vs failed where only verdicts exist);
- margin distribution (chosen - rejected per pair; passed - failed per verifier pair);
- calibration: verifier pass rate per score bin (equal-count bins), with the count in each bin;
- length vs score scatter (response tokens), coloured by verdict.

Then the summary table and, per prompt, the ranked candidates (rank, score, verdict, label, source,
start of the response). Everything user-provided is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

from reward.candidates import group_by_prompt, labelled_pairs, verifier_pairs

__all__ = ["render_plots", "write_report"]

# Fixed colours: the screenshot test looks for them, and the plots read the same in every report.
CHOSEN_COLOR = "#1f77b4"
REJECTED_COLOR = "#d62728"
NEUTRAL_COLOR = "#7f7f7f"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render_plots(cands: list[dict]) -> dict[str, str]:
    """Plot name -> base64 PNG. Plots without data show a note instead of being left out."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers/CI
    import matplotlib.pyplot as plt

    pairs = labelled_pairs(cands)
    vpairs = verifier_pairs(cands)
    if pairs:
        good, bad, names = [c["score"] for c, _ in pairs], [r["score"] for _, r in pairs], ("chosen", "rejected")
        margins, mtitle = [c["score"] - r["score"] for c, r in pairs], "chosen - rejected"
    else:
        good = [c["score"] for c in cands if c["passed"] is True]
        bad = [c["score"] for c in cands if c["passed"] is False]
        names = ("passed", "failed")
        margins, mtitle = [g["score"] - b["score"] for g, b in vpairs], "passed - failed (same prompt)"
    plots = {}

    fig, ax = plt.subplots(figsize=(6, 3.6))
    if good or bad:
        lo, hi = min(good + bad), max(good + bad)
        bins = [lo + (hi - lo + 1e-9) * i / 20 for i in range(21)]
        ax.hist(good, bins=bins, alpha=0.6, color=CHOSEN_COLOR, label=f"{names[0]} (n={len(good)})")
        ax.hist(bad, bins=bins, alpha=0.6, color=REJECTED_COLOR, label=f"{names[1]} (n={len(bad)})")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no labelled pairs or verdicts", ha="center", va="center", transform=ax.transAxes)
    ax.set(title=f"scores: {names[0]} vs {names[1]}", xlabel="reward", ylabel="count")
    plots["histograms"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    if margins:
        ax.hist(margins, bins=20, color=CHOSEN_COLOR, alpha=0.8)
        ax.axvline(0.0, color=REJECTED_COLOR, linestyle="--", label="0 (wrong order left of it)")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no pairs", ha="center", va="center", transform=ax.transAxes)
    ax.set(title=f"margin: {mtitle}", xlabel="reward margin", ylabel="pairs")
    plots["margins"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    judged = sorted((c for c in cands if c["passed"] is not None), key=lambda c: c["score"])
    if judged:
        nb = max(1, min(10, len(judged) // 5))
        xs, ys, ns = [], [], []
        for b in range(nb):  # equal-count bins, so every point has the same support
            chunk = judged[b * len(judged) // nb:(b + 1) * len(judged) // nb]
            xs.append(sum(c["score"] for c in chunk) / len(chunk))
            ys.append(sum(c["passed"] for c in chunk) / len(chunk))
            ns.append(len(chunk))
        ax.plot(xs, ys, "o-", color=CHOSEN_COLOR)
        for x, y, n in zip(xs, ys, ns):
            ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
        ax.set_ylim(-0.05, 1.05)
    else:
        ax.text(0.5, 0.5, "no verifier verdicts", ha="center", va="center", transform=ax.transAxes)
    ax.set(title="calibration: verifier pass rate by score bin", xlabel="mean reward in bin", ylabel="pass rate")
    plots["calibration"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for flag, color, name in ((None, NEUTRAL_COLOR, "no verdict"), (True, CHOSEN_COLOR, "passed"),
                              (False, REJECTED_COLOR, "failed")):  # judged points drawn on top
        pts = [c for c in cands if c["passed"] is flag]
        if pts:
            ax.scatter([c["n_tokens"] for c in pts], [c["score"] for c in pts], s=10, alpha=0.6, color=color,
                       label=name)
    ax.legend()
    ax.set(title="length vs score", xlabel="response tokens", ylabel="reward")
    plots["length"] = _png(fig)
    return plots


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.3f}"
    return html.escape(str(v))


CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
.plots img { border: 1px solid #ddd; width: 540px; }
.pass { color: #1a7f37; font-weight: 600; } .fail { color: #cf222e; font-weight: 600; }
.resp { font-family: ui-monospace, monospace; white-space: pre-wrap; max-width: 720px; }
"""


def write_report(path: str | Path, cands: list[dict], summary: dict[str, Any], title: str,
                 max_prompts: int = 50) -> Path:
    """Write the self-contained HTML report atomically; returns its path."""
    from alignment.artifacts import atomic_write_text
    from reward.pairs import prompt_text

    plots = render_plots(cands)
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>", "<h2>Summary</h2><table>"]
    for key, v in summary.items():
        if key != "by_source":
            out.append(f"<tr><th>{html.escape(key)}</th><td>{_cell(v)}</td></tr>")
    out.append("</table><h2>Score by source</h2><table><tr><th>source</th><th>n</th><th>mean</th><th>std</th>"
               "<th>min</th><th>max</th></tr>")
    for src, d in summary["by_source"].items():
        out.append(f"<tr><td>{_cell(src)}</td>" + "".join(f"<td>{_cell(d[k])}</td>" for k in
                                                          ("n", "mean", "std", "min", "max")) + "</tr>")
    out.append("</table><h2>Plots</h2><div class='plots'>")
    for name, b64 in plots.items():
        out.append(f"<img alt='{name}' id='plot-{name}' src='data:image/png;base64,{b64}'>")
    out.append("</div><h2>Rankings per prompt</h2>")
    for i, group in enumerate(group_by_prompt(cands).values()):
        if i >= max_prompts:
            out.append(f"<p>... {len(group_by_prompt(cands)) - max_prompts} more prompts in scores.jsonl</p>")
            break
        out.append(f"<h3>{i + 1}. {html.escape(prompt_text(group[0]['prompt'])[:300])}</h3>")
        out.append("<table><tr><th>rank</th><th>score</th><th>verdict</th><th>label</th><th>source</th>"
                   "<th>response (start)</th></tr>")
        for c in sorted(group, key=lambda c: c["rank"]):
            verdict = ("<span class='pass'>PASS</span>" if c["passed"] else "<span class='fail'>FAIL</span>") \
                if c["passed"] is not None else "-"
            out.append(f"<tr><td>{c['rank']}</td><td>{c['score']:.3f}</td><td>{verdict}</td>"
                       f"<td>{_cell(c['label'] or '-')}</td><td>{_cell(c['source'])}</td>"
                       f"<td class='resp'>{html.escape(c['response'][:400])}</td></tr>")
        out.append("</table>")
    out.append("</body></html>\n")
    return atomic_write_text(path, "\n".join(out))
