"""README.md's code blocks run, so they cannot drift from the code.

Convention: every fenced ```python and ```bash block runs, in the README's order, in one temporary
working directory; python blocks share one namespace (a later block uses names an earlier one made).
A bash block holds one `msa ...` command per line (a `# comment` ends it; `> FILE` at the end writes
its stdout to FILE) and each must exit 0. A block that cannot run here is marked by the line
``<!-- readme-test: skip: REASON -->`` just above its fence. Every relative link must name a file of
the repository.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

from msa.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip:\s*(\S.*?)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")


def blocks(text: str) -> list[tuple[int, str, str, str | None]]:
    """(line number, language, code, skip reason or None) of every fenced block."""
    lines = text.splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m and m.group(1):
            start, lang = i, m.group(1)
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            above = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
            skip = SKIP.search(above)
            out.append((start + 1, lang, "\n".join(lines[start + 1 : j]), skip.group(1) if skip else None))
            i = j
        i += 1
    return out


def run_shell_line(line: str, where: str) -> None:
    argv = shlex.split(line, comments=True)
    if not argv:
        return
    assert argv[0] == "msa", f"{where}: a runnable bash block holds only msa commands, got {line!r}"
    target = None
    if len(argv) >= 3 and argv[-2] == ">":
        argv, target = argv[:-2], argv[-1]
    assert not {"|", ">", "<", ";", "&&"} & set(argv), f"{where}: no pipes or other shell syntax: {line!r}"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv[1:])
    assert code == 0, f"{where}: {line!r} exited {code}"
    if target:
        Path(target).write_text(out.getvalue(), encoding="utf-8")


def test_every_block_is_runnable_or_says_why():
    found = blocks(README.read_text(encoding="utf-8"))
    assert found, "README has no code blocks"
    for line, lang, _, skip in found:
        assert lang in ("python", "bash"), f"README.md:{line}: a {lang!r} block; mark it skip or use python/bash"
        if skip is not None:
            assert len(skip) > 10, f"README.md:{line}: say why the block cannot run"
    assert sum(skip is None for *_, skip in found) >= 3


def test_relative_links_name_repository_files():
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\((?!https?://|#)([^)\s]+)\)", text) + re.findall(r"`((?:\.\./|\./)[^`\s]+)`", text)
    for t in targets:
        path = (ROOT / t.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT) and path.exists(), f"README links to {t}, which is not in the repository"


def test_readme_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    ran = 0
    for line, lang, code, skip in blocks(README.read_text(encoding="utf-8")):
        if skip is not None:
            continue
        where = f"README.md:{line}"
        if lang == "python":
            exec(compile(code, where, "exec"), namespace)  # noqa: S102 -- the README's own code
        else:
            for n, cmd in enumerate(code.splitlines()):
                run_shell_line(cmd, f"README.md:{line + 1 + n}")
        ran += 1
    assert ran >= 3
