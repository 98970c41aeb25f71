"""Where the packaged MONAI bundle (``fpt_monai/bundle``) and presets (``fpt_monai/configs``) are: the same files from
a clone (whose ``bundle/`` and ``configs/`` are links to them) and from an installed wheel."""

from __future__ import annotations

from pathlib import Path

__all__ = ["BUNDLE_DIR", "BUNDLE_CONFIGS", "PRESETS_DIR", "bundle_config", "preset_names", "resolve_preset"]

BUNDLE_DIR = Path(__file__).resolve().parents[1] / "bundle"
BUNDLE_CONFIGS = BUNDLE_DIR / "configs"
PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs"


def bundle_config(name: str) -> Path:
    """The bundle's config file ``name`` (e.g. ``"train.yaml"``, ``"metadata.json"``)."""
    path = BUNDLE_CONFIGS / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the packaged bundle has no {name}; reinstall fpt-monai (pip install -e .).")
    return path


def preset_names() -> dict[str, Path]:
    """Every packaged preset by its short name (``small_data``) and its folder name (``recipes/small_data``)."""
    names: dict[str, Path] = {}
    for path in sorted(PRESETS_DIR.glob("*/*.yaml")):
        names[f"{path.parent.name}/{path.stem}"] = path
        names.setdefault(path.stem, path)
    return names


def resolve_preset(name: str) -> Path:
    """A preset given as a short name (``small_data``), a folder name (``recipes/small_data``) or a YAML file path.

    Raises:
        ValueError: no such preset or file; the message lists the packaged ones.
    """
    if name.endswith((".yaml", ".yml", ".json")):
        path = Path(name)
        if path.is_file():
            return path
        packaged = PRESETS_DIR / name.removeprefix("configs/")
        if packaged.is_file():
            return packaged
        raise ValueError(f"{name}: no such config file; give a YAML file or one of the packaged presets.")
    names = preset_names()
    if name not in names:
        known = ", ".join(sorted(n for n in names if "/" in n))
        raise ValueError(f"--preset {name}: no such preset; the packaged presets are: {known}")
    return names[name]
