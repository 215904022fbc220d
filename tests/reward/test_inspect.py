"""Inspection: rankings, summary figures, files and HTML on a small fixed set; the CLI on a trained RM;
the HTML report rendered in headless Chromium with its plots visible.

Run: python -m pytest -q tests/reward/test_inspect.py
(the Chromium test is skipped where /usr/bin/chromium is absent: `apt-get install -y chromium`).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import pytest

from reward.cli import main
from reward.inspect import load_candidates, run_inspection
from reward.pairs import PairFormatError

FIXED = [
    {"prompt": "What is 2+3?", "response": "5", "passed": True, "source": "gen"},
    {"prompt": "What is 2+3?", "response": "6", "passed": False, "source": "gen"},
    {"prompt": "What is 2+3?", "response": "The answer is 5", "passed": True, "source": "ref"},
    {"prompt": "What is 2+3?", "response": "I think it is 6, maybe", "passed": False, "source": "gen"},
    {"prompt": "Repeat 7.", "chosen": "7", "rejected": "8"},
    {"prompt": [{"role": "user", "content": "Repeat 9."}], "chosen": [{"role": "assistant", "content": "9"}],
     "rejected": [{"role": "assistant", "content": "99"}]},
]


class RuleScorer:
    """A scorer with RewardScorer's interface and a known rule: +2 for a right answer (5 or 7), +0.01 per char.

    It decodes the real chat-template encoding, so it exercises the same encode path as the real scorer.
    """

    batch_size = 4

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def score_ids(self, ids):
        out = []
        for x in ids:
            text = self.tokenizer.decode(x, skip_special_tokens=True).rsplit("assistant\n", 1)[-1].strip()
            out.append((2.0 if ("5" in text or "7" in text) else 0.0) + 0.01 * len(text))
        return out


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_inspection_on_fixed_set(tiny_tokenizer, tmp_path):
    cands = load_candidates(_write_jsonl(tmp_path / "cands.jsonl", FIXED))
    assert len(cands) == 8 and [c["label"] for c in cands[4:]] == ["chosen", "rejected"] * 2
    s = run_inspection(RuleScorer(tiny_tokenizer), cands, tmp_path / "out")
    # labelled pairs: "7" > "8" right, "9" < "99" wrong (the rule knows nothing about 9)
    assert s["pairs"] == 2 and s["pairwise_acc"] == 0.5
    assert s["verifier_pairs"] == 4 and s["verifier_agreement"] == 1.0
    assert s["top1_pass_rate"] == 1.0 and s["random_pass_rate"] == 0.5 and s["judged_prompts"] == 1
    assert s["prompts"] == 3 and s["by_source"]["gen"]["n"] == 3 and s["by_source"]["ref"]["n"] == 1
    assert s["by_source"]["ref"]["mean"] == pytest.approx(2.15)

    rows = [json.loads(l) for l in (tmp_path / "out" / "scores.jsonl").read_text().splitlines()]
    ranked = sorted((r for r in rows if r["prompt"] == "What is 2+3?"), key=lambda r: r["rank"])
    assert [r["response"] for r in ranked] == ["The answer is 5", "5", "I think it is 6, maybe", "6"]
    assert [r["passed"] for r in ranked] == [True, True, False, False]
    assert ranked[0]["score"] == pytest.approx(2.15) and ranked[0]["n_tokens"] > ranked[1]["n_tokens"]

    table = (tmp_path / "out" / "table.txt").read_text()
    assert re.search(r"^\s+1\s+2\.150\s+PASS\s+-\s+ref\s+The answer is 5$", table, re.M), table
    assert re.search(r"^\s+4\s+0\.010\s+FAIL\s+-\s+gen\s+6$", table, re.M), table
    assert "pairwise accuracy      0.500  over 2 labelled pairs" in table
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["pairwise_acc"] == 0.5

    html = (tmp_path / "out" / "report.html").read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(images) == 4 and all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in images)
    assert "The answer is 5" in html and "<script" not in html


def test_bad_candidate_rows_name_file_line_and_key(tmp_path):
    bad = _write_jsonl(tmp_path / "bad.jsonl", [FIXED[0], {"prompt": "x", "text": "y"}])
    with pytest.raises(PairFormatError, match=r"bad.jsonl:2: missing key 'response'"):
        load_candidates(bad)
    with pytest.raises(PairFormatError, match=r"bad2.jsonl:1: key 'passed' must be true, false or null"):
        load_candidates(_write_jsonl(tmp_path / "bad2.jsonl", [{"prompt": "x", "response": "y", "passed": "yes"}]))


@pytest.fixture(scope="module")
def cli_report(trained_rm, echo_task, tmp_path_factory):
    """`yialign-reward inspect` on the trained echo RM's held-out pairs (plus verdict-carrying candidates)."""
    model, tok, _, _, _ = trained_rm
    _, held = echo_task
    root = tmp_path_factory.mktemp("cli")
    model.save_pretrained(root / "rm")
    tok.save_pretrained(root / "rm")
    rows = [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in held]
    for p in held[:10]:
        rows += [{"prompt": p["prompt"], "response": p["chosen"], "passed": True, "source": "right"},
                 {"prompt": p["prompt"], "response": p["rejected"], "passed": False, "source": "wrong"}]
    cands = _write_jsonl(root / "cands.jsonl", rows)
    return root, cands


def test_cli_inspect_on_trained_rm(cli_report, capsys):
    root, cands = cli_report
    rc = main(["inspect", "--model", str(root / "rm"), "--candidates", str(cands), "--out", str(root / "out"),
               "--show", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    summary = json.loads((root / "out" / "summary.json").read_text())
    assert summary["pairs"] == len([l for l in cands.read_text().splitlines() if '"chosen"' in l])
    assert summary["pairwise_acc"] >= 0.8 and summary["verifier_agreement"] >= 0.7
    assert summary["top1_pass_rate"] == summary["verifier_agreement"]  # one passed + one failed per judged prompt
    assert "pairwise accuracy" in out and "prompt 1: Repeat" in out and "more prompts (see scores.jsonl)" in out
    assert (root / "out" / "report.html").stat().st_size > 20_000


def test_cli_samples_candidates_and_runs_verifiers(cli_report, tiny_tokenizer, tmp_path):
    """--problems + --policy: the native sampler draws n candidates per problem, synth's verifier judges them."""
    import torch

    from alignment.model import YiLightningForCausalLM
    from tests.fixtures_model import build_tiny_config

    root, _ = cli_report
    torch.manual_seed(0)
    policy = tmp_path / "sft_hard" / "model"
    YiLightningForCausalLM(build_tiny_config(num_hidden_layers=2)).save_pretrained(policy)
    tiny_tokenizer.save_pretrained(policy)
    rc = main(["inspect", "--model", str(root / "rm"), "--policy", str(policy), "--problems", "templates:heldout",
               "--limit", "2", "--n", "3", "--max-new-tokens", "8", "--out", str(tmp_path / "out")])
    assert rc == 0
    rows = [json.loads(l) for l in (tmp_path / "out" / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {r["source"] for r in rows} == {"sft_hard/model"}
    assert all(isinstance(r["passed"], bool) and r["detail"] for r in rows), "every sample carries a verdict"
    assert sorted(r["rank"] for r in rows) == [1, 1, 2, 2, 3, 3]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["judged_prompts"] == 2


def test_cli_bad_input_is_one_clear_line(tmp_path, capsys):
    rc = main(["inspect", "--model", str(tmp_path / "nope"), "--candidates", str(tmp_path / "missing.jsonl")])
    assert rc == 2
    assert "missing.jsonl does not exist" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _colored_pixels(png_path) -> int:
    import matplotlib.image as mpimg

    img = mpimg.imread(str(png_path))[..., :3]
    spread = img.max(axis=-1) - img.min(axis=-1)
    return int((spread > 0.25).sum())  # saturated pixels: plot bars/lines, not black text or grey borders


def _screenshot(html_path, png_path, profile):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1280,1400",
           f"--screenshot={png_path}", html_path.as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    assert png_path.stat().st_size > 0


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium_with_plots(cli_report, tmp_path):
    root, _ = cli_report
    html = root / "out" / "report.html"
    if not html.exists():
        pytest.skip("run together with test_cli_inspect_on_trained_rm (it writes the report)")
    _screenshot(html, tmp_path / "report.png", tmp_path / "profile1")
    # the same page with every image removed: what is left is text and table borders
    bare = tmp_path / "bare.html"
    bare.write_text(re.sub(r"<img [^>]*>", "", html.read_text()))
    _screenshot(bare, tmp_path / "bare.png", tmp_path / "profile2")
    with_plots, without = _colored_pixels(tmp_path / "report.png"), _colored_pixels(tmp_path / "bare.png")
    shutil.copy(tmp_path / "report.png", root / "out" / "screenshot.png")
    assert with_plots > 20_000 and with_plots > 20 * (without + 1), (with_plots, without)
