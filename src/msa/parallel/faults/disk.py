"""A full disk (a small tmpfs) at several free-space levels during adds, deletes and compaction."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from msa.engine import Engine
from msa.memory import BankDiskFullError, BankError, MemoryBank
from msa.parallel.faults.common import Trial, long_text, texts

LEVELS = (0, 4 << 10, 32 << 10, 128 << 10, 512 << 10)
SIZE = "6m"


def _fill(mnt: Path, leave: int) -> Path:
    """Fill the file system at ``mnt`` until about ``leave`` bytes are free; returns the filler file."""
    filler = mnt / "filler"
    with open(filler, "wb") as f:
        while True:
            st = os.statvfs(mnt)
            free = st.f_bavail * st.f_frsize
            if free <= leave:
                break
            try:
                f.write(b"\0" * min(free - leave, 1 << 20))
                f.flush()
            except OSError:  # full
                break
    return filler


def _case(mnt: Path, leave: int, model, tok) -> tuple[bool, str]:
    path = mnt / "bank"
    base = texts(6, leave, "base")
    with MemoryBank.create(path, model, tok, max_doc_tokens=64, segment_tokens=120) as bank:
        bank.add(base, [f"b{i}" for i in range(6)], progress=False)
        bank.delete(["b0"])
    more = texts(8, leave + 1, "more") + [long_text(leave)]
    filler = _fill(mnt, leave)
    outcome, notes = "stored", []
    try:
        try:
            with MemoryBank.open(path, model, tok) as bank:
                bank.add(more, progress=False)
                bank.delete(["b1"])
                bank.compact()
        except BankDiskFullError as e:
            outcome = "refused"
            msg = str(e)
            if "\n" in msg or str(mnt) not in msg:
                return False, f"the disk-full error is not one line naming the file: {msg!r}"
            notes.append(msg[:160])
        with MemoryBank.open(path, model, tok, readonly=True) as ro:  # reads work on the full disk
            ro.stats()
            kept = [ro.get_text(f"b{i}") for i in range(2, 6)]
            if kept != base[2:]:
                return False, "documents stored before the fault changed"
            Engine(model, tok, ro).ask("Where was alpha born?", max_rounds=1, max_new_tokens=3)
    except BankError as e:
        return False, f"{type(e).__name__} while the disk was full: {e}"
    finally:
        filler.unlink()
    with MemoryBank.open(path, model, tok) as bank:  # space again: the re-run completes
        bank.check()
        bank.add(more, progress=False)
        bank.delete(["b1"])
        bank.compact()
        docs = dict(bank.documents())
        if sorted(docs.values()) != sorted(base[2:] + more) or bank.check()["orphans"]:
            return False, "after freeing space the re-run did not give every document exactly once"
    shutil.rmtree(path)
    return True, outcome + (": " + notes[0] if notes else "")


def run(work: Path, levels: tuple[int, ...], model, tok) -> list[Trial]:
    mnt = work / "tmpfs"
    mnt.mkdir(exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        why = (r.stderr or r.stdout).strip() or f"exit code {r.returncode}"
        return [Trial("disk", f"{n} bytes free", None, f"skipped: cannot mount a tmpfs ({why})") for n in levels]
    out = []
    try:
        for leave in levels:
            start = time.perf_counter()
            try:
                ok, detail = _case(mnt, leave, model, tok)
            except Exception as e:  # noqa: BLE001 - a traceback is a failure to report
                ok, detail = False, f"traceback: {type(e).__name__}: {e}"
            for p in mnt.iterdir():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            out.append(Trial("disk", f"{leave} bytes free", ok, detail, time.perf_counter() - start))
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
    return out
