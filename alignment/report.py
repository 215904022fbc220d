"""The pipeline report: the console stage table, and ``runs/<name>/report.md`` and ``report.html``
from the manifest.

Written after every pipeline run (atomically). It holds the per-stage table (status, wall
time, metrics) and plots where a table would be hard to read: time per stage, metrics
that several stages share (losses, held-out accuracy after each stage), and the eval
stage's accuracy per checkpoint. The HTML embeds its images (base64 PNG) so it is one
self-contained file; the markdown links the same PNGs in ``report_assets/``.

Run alone on an existing run directory:

    python -m alignment.report runs/tiny_cpu
"""

from __future__ import annotations

import base64
import html
import io
import re
import sys
from pathlib import Path

from alignment.artifacts import (
    Manifest, atomic_write_bytes, atomic_write_json, atomic_write_text, git_commit, is_timing_key,
)

# Eval metrics are named "<checkpoint stage>/<metric>", e.g. "sft_hard/math_heldout_acc".
_EVAL_KEY = re.compile(r"^(?P<stage>[A-Za-z0-9_]+)/(?P<metric>.+)$")


MD_METRICS = 10  # metrics per stage row of report.md


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _headline(key: str) -> bool:
    # counts and secondary estimates stay in the manifest and the report, not the one-line summary
    return not (key.endswith(("/n", "/infra_faults", "_sampled", "_lo", "_hi", "p_mcnemar", "/format", "format_delta",
                              "vs_first_delta", "wrong_step_share"))
                or is_timing_key(key))


def _is_score(metric: str) -> bool:
    """``<set>/acc`` or ``<set>/pass@k[_sampled]``: the accuracies plotted per stage (not their
    interval ends, deltas or p-values)."""
    last = metric.rsplit("/", 1)[-1]
    return last == "acc" or (last.startswith("pass@") and not last.endswith(("_lo", "_hi")))


def _read_json(path: Path):
    """A JSON file's content, or None when it is missing or unreadable (a report never fails on it)."""
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3g}"


def eval_table(metrics: dict, order: list[str], baseline: str | None = None) -> list[str]:
    """Markdown rows of the eval stage: per set (in the recipe's order) and checkpoint, greedy accuracy
    with its 95% interval, sampled pass@k where measured, format compliance, the share of right math
    answers reached through a wrong arithmetic step (``wrong_step_share``), and the paired change
    against the checkpoint before, or against ``baseline`` (the eval's ``compare_to``) (McNemar's exact p)."""
    rows, sets = [], []
    for k, v in metrics.items():
        m = _EVAL_KEY.match(k)
        if not (m and m["stage"] in order and _num(v)):
            continue
        set_name, _, last = m["metric"].rpartition("/")
        if last not in ("acc", "pass@1"):
            continue
        if set_name not in sets:
            sets.append(set_name)
        base = f"{m['stage']}/{set_name}"
        lo, hi = metrics.get(f"{base}/{last}_lo"), metrics.get(f"{base}/{last}_hi")
        ci = f" [{lo:.3f}, {hi:.3f}]" if _num(lo) and _num(hi) else ""
        fmt = metrics.get(f"{base}/format")
        delta, p = metrics.get(f"{base}/delta"), metrics.get(f"{base}/p_mcnemar")
        change = f"{delta:+.3f} ({_p(p)})" if _num(delta) and _num(p) else "-"
        fdelta, fp = metrics.get(f"{base}/format_delta"), metrics.get(f"{base}/format_p_mcnemar")
        fmt_cell = f"{fmt:.3f}" if _num(fmt) else "-"
        if _num(fmt) and _num(fdelta) and _num(fp) and fdelta != 0:
            fmt_cell += f" ({fdelta:+.3f}, {_p(fp)})"
        sampled = ", ".join(f"{key.rsplit('/', 1)[-1].removesuffix('_sampled')} {val:.3f}" for key, val in metrics.items()
                            if key.startswith(f"{base}/pass@") and key.endswith("_sampled") and _num(val)) or "-"
        wrong_step = metrics.get(f"{base}/wrong_step_share")
        rows.append((sets.index(set_name), order.index(m["stage"]), m["stage"], set_name, f"{v:.3f}{ci}", sampled,
                     fmt_cell, f"{wrong_step:.3f}" if _num(wrong_step) else "-", str(metrics.get(f"{base}/n", "-")), change))
    if not rows:
        return []
    against = f"`{baseline}`" if baseline else "previous"
    out = [f"| set | checkpoint | greedy accuracy [95% CI] | sampled pass@k | format (change, McNemar) "
           f"| right after a wrong step | n | change vs {against} (McNemar) |",
           "|---|---|---|---|---|---|---|---|"]
    for _, _, stage, set_name, *cells in sorted(rows, key=lambda r: (r[0], r[1])):
        out.append("| " + " | ".join([set_name, stage, *cells]) + " |")
    return out


def final_vs_first_table(metrics: dict, order: list[str]) -> list[str]:
    """Markdown rows: per set, the last checkpoint's greedy accuracy against the first's, with the
    paired change (McNemar) between the two (the eval's ``<last>/<set>/vs_first_*`` metrics)."""
    from alignment.tasks.evaluate import FINAL_VS_FIRST

    if len(order) < 3:
        return []
    first, last = order[0], order[-1]
    out = []
    for k, delta in metrics.items():
        m = _EVAL_KEY.match(k)
        if not (m and m["stage"] == last and m["metric"].endswith(f"/{FINAL_VS_FIRST}delta") and _num(delta)):
            continue
        set_name = m["metric"][: -len(f"/{FINAL_VS_FIRST}delta")]
        p = metrics.get(f"{last}/{set_name}/{FINAL_VS_FIRST}p_mcnemar")
        acc = [metrics.get(f"{s}/{set_name}/acc", metrics.get(f"{s}/{set_name}/pass@1")) for s in (first, last)]
        cells = [f"{a:.3f}" if _num(a) else "-" for a in acc]
        out.append(f"| {set_name} | {cells[0]} | {cells[1]} | {delta:+.3f} ({_p(p) if _num(p) else '-'}) |")
    if not out:
        return []
    return [f"| set | {first} | {last} | change (McNemar, {last} vs {first}) |", "|---|---|---|---|", *out]


def format_metrics(metrics: dict, limit: int = 6) -> str:
    items = [(k, v) for k, v in metrics.items()
             if (_num(v) or isinstance(v, str)) and _headline(k)]
    return "  ".join(f"{k}={_fmt(v)}" for k, v in items[:limit])


def stage_table(manifest: Manifest, order: list[str]) -> str:
    rows = [("stage", "status", "wall s", "metrics")]
    for name in order:
        e = manifest.entry(name) or {}
        rows.append((name, e.get("status", "-"), _fmt(e.get("wall_time_s", "-")), format_metrics(e.get("metrics", {}), 4)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def _figures(stages: dict[str, dict], order: list[str], checkpoints: list[str] | None = None) -> list[tuple[str, bytes]]:
    """The report's plots. ``checkpoints``: the names eval metrics may carry, in plot order (default
    ``order``; an eval of path inputs adds its own names)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: list[tuple[str, "plt.Figure"]] = []
    done = [s for s in order if stages.get(s, {}).get("status") == "completed"]

    if done:
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.bar(done, [stages[s].get("wall_time_s", 0) for s in done], color="#4C72B0")
        ax.set_ylabel("wall time (s)")
        ax.set_title("Time per stage")
        ax.tick_params(axis="x", rotation=30)
        figs.append(("time_per_stage", fig))

    # eval metrics: accuracy of each stage's checkpoint on each held-out set
    ck = checkpoints or order
    evals: dict[str, dict[str, float]] = {}
    bars: dict[str, dict[str, tuple[float, float]]] = {}  # 95% interval ends of the greedy scores
    for s in done:
        ms = stages[s].get("metrics", {})
        for k, v in ms.items():
            m = _EVAL_KEY.match(k)
            if m and _num(v) and m["stage"] in ck and _is_score(m["metric"]):
                evals.setdefault(m["metric"], {})[m["stage"]] = float(v)
                lo, hi = ms.get(f"{k}_lo"), ms.get(f"{k}_hi")
                if _num(lo) and _num(hi):
                    bars.setdefault(m["metric"], {})[m["stage"]] = (float(v) - lo, hi - float(v))
    if evals:
        fig, ax = plt.subplots(figsize=(9, 3.6))
        for metric, per_stage in sorted(evals.items()):
            xs = [s for s in ck if s in per_stage]
            ys = [per_stage[s] for s in xs]
            err = bars.get(metric, {})
            yerr = [[err.get(s, (0, 0))[0] for s in xs], [err.get(s, (0, 0))[1] for s in xs]] if err else None
            ax.errorbar(xs, ys, yerr=yerr, marker="o", capsize=3, label=metric,
                        linestyle="--" if metric.endswith("_sampled") else "-")
        ax.set_title("Held-out verified metrics after each stage (bars: 95% Wilson interval; dashed: sampled pass@k)")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        figs.append(("eval_per_stage", fig))

    # training signals: one panel per question, one bar per stage that reports it (the first
    # key of the list a stage has is taken, since stages name the same idea differently)
    panels = [
        ("final training loss", ("train_loss_last", "last_logged_loss", "dpo_loss", "finetune_train_loss", "pretrain_train_loss")),
        ("held-out LM loss (base)", ("heldout_loss_after",)),
        ("RM held-out pairwise acc. (before, after)", ("pairwise_acc_init", "pairwise_acc")),
        ("routing balance: max/mean expert load", ("router_load_max_over_mean",)),
        ("MoE aux loss", ("aux_loss", "dpo_aux_loss")),
        ("DPO reward accuracy after the round", ("dpo_post_reward_accuracy",)),
        ("KL to the reference (k3)", ("kl_ref_k3",)),
        ("verifier pass rate of samples", ("verifier_pass_rate", "response_pass_rate")),
        ("safety: SFT rows dropped by the filter", ("safety_dropped",)),
        ("safety: guard events while sampling", ("guard_events",)),
    ]
    data = []
    for title, keys in panels:
        bars = []
        for s in done:
            m = stages[s].get("metrics", {})
            if keys[0] == "pairwise_acc_init":  # a before/after pair, both shown
                bars += [(f"{s}:{k.split('_')[-1]}", float(m[k])) for k in keys if _num(m.get(k))]
                continue
            k = next((k for k in keys if _num(m.get(k))), None)
            if k is not None:
                bars.append((s, float(m[k])))
        if bars:
            data.append((title, bars))
    if data:
        cols = min(3, len(data))
        rows = (len(data) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.7 * rows), squeeze=False)
        for ax, (title, bars) in zip(axes.flat, data):
            ax.bar([b[0] for b in bars], [b[1] for b in bars], color="#55A868")
            ax.set_title(title, fontsize=9)
            ax.tick_params(axis="x", rotation=35, labelsize=7)
        for ax in list(axes.flat)[len(data):]:
            ax.axis("off")
        fig.suptitle("Training signals per stage")
        figs.append(("training_signals", fig))

    out = []
    for name, fig in figs:
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        out.append((name, buf.getvalue()))
    return out


def machine_card() -> dict:
    """Where a run ran: date, commit, accelerator, CPU count and the library versions that set its numbers."""
    import datetime
    import importlib.metadata as md
    import os
    import platform

    import torch

    def version(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "not installed"

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "commit": git_commit(dirty_mark=True),
        "accelerator": ", ".join(gpus) if gpus else "none (CPU)",
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "versions": {p: version(p) for p in ("torch", "triton", "transformers", "trl", "peft", "accelerate", "datasets")},
    }


def write_report(run_dir: str | Path, order: list[str], title: str = "", card: dict | None = None) -> tuple[Path, Path]:
    """Write report.md, report.html and report.json for the run; returns the first two paths.

    ``card`` (default: :func:`machine_card` of this process) says where and from which commit it ran."""
    run_dir = Path(run_dir)
    stages = Manifest(run_dir).stages
    title = title or f"Pipeline report: {run_dir.name}"
    card = machine_card() if card is None else card
    # an eval names its checkpoints (its inputs may be paths, not stages of this run) and its baseline
    evals = {s: info for s in order if isinstance(info := _read_json(run_dir / s / "report.json"), dict)
             and isinstance(info.get("models"), list)}
    checkpoints = list(order) + [m for info in evals.values() for m in info["models"] if m not in order]
    images = _figures(stages, order, list(dict.fromkeys(checkpoints)))
    for name, png in images:
        atomic_write_bytes(run_dir / "report_assets" / f"{name}.png", png)

    versions = ", ".join(f"{k} {v}" for k, v in card.get("versions", {}).items())
    card_line = (f"{card.get('date_utc', '?')} UTC, commit `{card.get('commit', '?')}`, {card.get('accelerator', '?')}, "
                 f"{card.get('cpu_count', '?')} CPUs; {versions}")
    md = [f"# {title}", "", f"Ran: {card_line}", "", "| stage | status | wall s | metrics |", "|---|---|---|---|"]
    rows_html = []
    for s in order:
        e = stages.get(s, {})
        items = [f"{k}={_fmt(v)}" for k, v in e.get("metrics", {}).items() if _num(v) or isinstance(v, str)]
        metrics = ", ".join(items)
        # the markdown row shows the first few (headline first); report.json and the HTML hold them all
        shown = ", ".join(items[:MD_METRICS]) + (f", ... ({len(items) - MD_METRICS} more in report.json)" if len(items) > MD_METRICS else "")
        md.append(f"| {s} | {e.get('status', 'not run')} | {_fmt(e.get('wall_time_s', '-'))} | {shown} |")
        # HTML: the first metrics in view, all of them one click away
        head = ", ".join(metrics.split(", ")[:6])
        cell = html.escape(head) + (f"<details><summary>all metrics</summary>{html.escape(metrics)}</details>"
                                    if metrics != head else "")
        rows_html.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in
                                          (s, e.get("status", "not run"), _fmt(e.get("wall_time_s", "-"))))
                         + f"<td>{cell}</td></tr>")
    total = sum(e.get("wall_time_s", 0) for e in stages.values() if e.get("status") == "completed")
    md += ["", f"Total wall time of completed stages: {total:.1f} s", ""]
    for s in order:
        info = evals.get(s, {})
        table = eval_table(stages.get(s, {}).get("metrics", {}), info.get("models") or order, info.get("compare_to"))
        if table:
            md += [f"## Held-out evaluation (`{s}`)", ""] + table + [""]
            ends = final_vs_first_table(stages.get(s, {}).get("metrics", {}), info.get("models") or order)
            if ends and not info.get("compare_to"):
                md += ["The last checkpoint against the first, per set:", ""] + ends + [""]
    md += [f"![{name}](report_assets/{name}.png)" for name, _ in images]
    imgs_html = "".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,{base64.b64encode(png).decode()}"/>'
        f"<figcaption>{name}</figcaption></figure>" for name, png in images)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}
img{{max-width:100%}}</style></head><body><h1>{html.escape(title)}</h1>
<p>Ran: {html.escape(card_line)}</p>
<table><tr><th>stage</th><th>status</th><th>wall s</th><th>metrics</th></tr>{''.join(rows_html)}</table>
<p>Total wall time of completed stages: {total:.1f} s</p>{imgs_html}</body></html>"""
    md_path = atomic_write_text(run_dir / "report.md", "\n".join(md) + "\n")
    atomic_write_json(run_dir / "report.json", {
        "title": title, "card": card, "order": order, "total_wall_s": round(total, 2),
        "stages": {s: {k: stages.get(s, {}).get(k) for k in ("status", "wall_time_s", "metrics", "error")} for s in order},
    })
    html_path = atomic_write_text(run_dir / "report.html", page)
    return md_path, html_path


if __name__ == "__main__":
    run = Path(sys.argv[1])
    order = list(Manifest(run).stages)
    for p in write_report(run, order):
        print(p)
