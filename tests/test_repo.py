"""The repository stands alone: nothing it holds points outside it."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = "../" + "shared"  # spelled in two pieces so this file does not match itself


def tracked_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True,
                               timeout=60).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (an sdist or a copy): nothing to check")
    # .ci/ holds the CI machinery's own scripts, not the project's
    return [ROOT / n for n in names if n and not n.startswith(".ci/") and (ROOT / n).is_file()]


def test_no_tracked_file_refers_to_a_folder_beside_the_repository():
    found = [f"{path.relative_to(ROOT)}:{number}" for path in tracked_files()
             for number, line in enumerate(path.read_bytes().decode(errors="replace").splitlines(), 1)
             if OUTSIDE in line]
    assert not found, f"these lines refer to {OUTSIDE}, outside the repository: {found}"


def test_every_relative_link_in_the_docs_resolves_inside_the_repository():
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # a URL
            resolved = (page.parent / target).resolve()
            if ROOT not in resolved.parents or not resolved.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken
