"""Package discovery and package data for setuptools; everything else is in pyproject.toml.

The wheel ships the repository's top-level ``recipes/`` and ``data_cards/`` as package data
inside ``alignment`` (``alignment/_recipes``, ``alignment/_data_cards``), so a non-editable
install (``pip install .``) runs the default recipe from any directory. The repository keeps the
folders where they are; ``alignment/paths.py`` finds them in either layout, and
tests/test_packaging.py builds the wheel and checks its contents.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
# installed package name -> folder in the repository (alignment/paths.py: INSTALLED_NAMES)
DATA_FOLDERS = {"alignment._recipes": "recipes", "alignment._data_cards": "data_cards"}
DATA_FILES = ["*.yaml", "*.md"]


def data_packages() -> dict[str, str]:
    """Each data folder and each of its subfolders as a package (``alignment._recipes.stage`` -> recipes/stage)."""
    out = {}
    for name, folder in DATA_FOLDERS.items():
        out[name] = folder
        for sub in sorted(p for p in (HERE / folder).rglob("*") if p.is_dir()):
            parts = sub.relative_to(HERE / folder).parts
            if not any(part.startswith((".", "__")) for part in parts):
                out[".".join((name, *parts))] = "/".join((folder, *parts))
    return out


DATA_PACKAGES = data_packages()

setup(
    packages=find_packages(include=["alignment", "alignment.*", "synth", "synth.*", "reward", "reward.*"])
    + list(DATA_PACKAGES),
    package_dir=DATA_PACKAGES,
    package_data={name: DATA_FILES for name in DATA_PACKAGES},
)
