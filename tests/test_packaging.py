"""The wheel: it ships recipes/ and data_cards/ as package data, and the installed layout (not
the checkout) finds them, composes the default recipe and runs ``yialign-synth`` from another
directory.

The wheel is built from a copy of the sources in a temp folder (``pip wheel --no-deps
--no-build-isolation``: offline, ~2 s), so the checkout gets no build/ or egg-info.

Run: python -m pytest -q tests/test_packaging.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from alignment import paths

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "alignment", "synth", "reward", "recipes", "data_cards")
CARD_TEMPLATES = ("synth_generated.md", "reward_pairs.md", "dpo_online_pairs.md")


def _repo_files(folder: str, patterns=("*.yaml", "*.md")) -> set[str]:
    return {p.relative_to(REPO / folder).as_posix() for pat in patterns for p in (REPO / folder).rglob(pat)}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            shutil.copy2(REPO / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (whl,) = out.glob("yi_align-*.whl")
    return whl


def test_checkout_layout_finds_the_top_level_folders():
    assert paths.RECIPES_DIR == REPO / "recipes" and paths.DATA_CARDS_DIR == REPO / "data_cards"
    assert (paths.recipes_dir() / "config.yaml").is_file()
    assert all((paths.data_cards_dir() / t).is_file() for t in CARD_TEMPLATES)


def test_wheel_ships_code_recipes_and_data_cards(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = {n.removeprefix("alignment/_recipes/") for n in names if n.startswith("alignment/_recipes/")}
    cards = {n.removeprefix("alignment/_data_cards/") for n in names if n.startswith("alignment/_data_cards/")}
    assert "config.yaml" in recipes and "pipeline/tiny_cpu.yaml" in recipes and "synth/dry_run.yaml" in recipes
    for group in ("model", "data", "stage", "sampler", "pipeline", "accelerate", "synth"):
        assert any(r.startswith(f"{group}/") for r in recipes), f"recipe group {group}/ missing from the wheel"
    assert recipes == _repo_files("recipes")  # every recipe (and recipes/synth/README.md), nothing else
    assert cards == _repo_files("data_cards") and set(CARD_TEMPLATES) <= cards
    code = {p.relative_to(REPO).as_posix() for pkg in ("alignment", "synth", "reward") for p in (REPO / pkg).rglob("*.py")}
    assert code <= names, f"modules missing from the wheel: {sorted(code - names)[:5]}"
    assert not any(n.startswith(("tests/", "bench/", "recipes/", "data_cards/")) for n in names)
    meta = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    entry_points = zipfile.ZipFile(wheel).read(meta).decode()
    for script in ("yialign = alignment.pipeline:main", "yialign-synth = synth.cli:main", "yialign-reward = reward.cli:main"):
        assert script in entry_points


INSTALLED_CHECK = """
import json, sys
from pathlib import Path
import alignment
from alignment import paths
from alignment.model.config import PRESET_DIR, load_preset
from alignment.pipeline import compose
import reward.cli, reward.runner, synth.cli, synth.outputs

site = Path(sys.argv[1])
assert Path(alignment.__file__).resolve().is_relative_to(site), alignment.__file__
folders = [paths.RECIPES_DIR, PRESET_DIR.parent, synth.cli.RECIPES, reward.cli.RECIPES]
assert all(f == site / "alignment" / "_recipes" for f in folders), folders
assert synth.outputs.CARD_TEMPLATE.is_file() and reward.runner.CARD_TEMPLATE.is_file()
assert load_preset("tiny").num_hidden_layers == 8
cfg = compose([])
print(json.dumps({"pipeline": cfg.pipeline.name, "order": list(cfg.pipeline.order)}))
sys.argv = ["yialign-synth", "out_dir=synth_out"]
synth.cli.main()   # Hydra's config path and search path inside the installed package
"""


def test_installed_layout_runs_from_another_directory(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", INSTALLED_CHECK, str(site)], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    first = json.loads(res.stdout.splitlines()[0])
    assert first["pipeline"] == "tiny_cpu" and first["order"][0] == "base" and first["order"][-1] == "eval"
    written = sorted(p.name for p in (elsewhere / "synth_out").glob("*"))
    assert {"sft.jsonl", "sft.card.md", "pairs.jsonl", "pairs.card.md"} <= set(written), written  # cards from the shipped template
