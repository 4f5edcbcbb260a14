"""The README's "Layout" table names every module of ``schemas/``, ``transforms/``, ``pipelines/``
and ``query/`` in its folder's row. Read from the folders, so a module added later is checked too."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("schemas", "transforms", "pipelines", "query")


def _layout_rows() -> dict[str, str]:
    """``{folder: what}`` of the README's "## Layout" table."""
    text = (ROOT / "README.md").read_text().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|", 1) for line in text.splitlines() if line.startswith("| `")]
    return {folder.strip().strip("`").rstrip("/"): what for folder, what in rows}


def test_the_table_has_the_folders():
    assert set(FOLDERS) <= set(_layout_rows())


def test_every_module_is_named_in_its_folders_row():
    rows = _layout_rows()
    unnamed = [
        f"{folder}/{path.name}"
        for folder in FOLDERS
        for path in sorted((ROOT / folder).glob("*.py"))
        if path.name != "__init__.py" and f"`{path.name}`" not in rows[folder]
    ]
    assert unnamed == []
