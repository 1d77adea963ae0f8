"""One flipped bit in the catalog or in a segment file: detected, or provably harmless."""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

from msa.memory import BankError, MemoryBank
from msa.memory.catalog import Catalog
from msa.parallel.faults.common import Trial, long_text, observe, texts


def _pristine(work: Path, model, tok) -> Path:
    path = work / "flips-base"
    with MemoryBank.create(path, model, tok, max_doc_tokens=64, segment_tokens=200) as bank:
        bank.add(texts(12, 7, "flip"), [f"k{i}" for i in range(6)] + list(range(6, 12)), progress=False)
        bank.add([long_text(7)], ["long"], progress=False)
        bank.delete(["k1"])
    catalog = Catalog(path / "catalog.sqlite")
    catalog.checkpoint()  # everything in the main file: flips hit real data
    catalog.close()
    return path


def _outcome(path: Path, ref: dict, model, tok) -> tuple[bool, str]:
    """(passed, how): detected on read / by check, harmless, or what went wrong."""
    try:
        with MemoryBank.open(path, model, tok) as bank:
            seen = observe(bank)
    except BankError as e:
        return True, f"detected on read: {type(e).__name__}"
    except Exception as e:  # noqa: BLE001
        return False, f"traceback on read: {type(e).__name__}: {e}"
    wrong = [k for k, t in seen["texts"].items() if k in ref["texts"] and t != ref["texts"][k]]
    wrong += [str(i) for i, (a, b) in enumerate(zip(seen["slot_texts"], ref["slot_texts"])) if a is not None and a != b]
    if wrong and seen["slots"] == ref["slots"]:
        return False, f"a wrong text was returned for {wrong[:3]}"
    try:
        with MemoryBank.open(path, model, tok) as bank:
            bank.check()
    except BankError as e:
        return True, f"detected by check: {type(e).__name__}" + ("" if seen == ref else " (reads had changed)")
    except Exception as e:  # noqa: BLE001
        return False, f"traceback in check: {type(e).__name__}: {e}"
    if seen != ref:
        return False, "reads changed and check() passed: " + ", ".join(k for k in ref if seen[k] != ref[k])
    return True, "harmless: every read as before, check() passes"


def run(work: Path, catalog_flips: int, segment_flips: int, seed: int, model, tok) -> list[Trial]:
    base = _pristine(work, model, tok)
    with MemoryBank.open(base, model, tok) as bank:
        ref = observe(bank)
    segs = sorted((base / "segments").iterdir())
    rng = random.Random(seed)
    out = []
    for t in range(catalog_flips + segment_flips):
        target = base / "catalog.sqlite" if t < catalog_flips else rng.choice(segs)
        rel = target.relative_to(base)
        size = target.stat().st_size
        offset, bit = rng.randrange(size), rng.randrange(8)
        copy = work / f"flip-{t}"
        shutil.copytree(base, copy)
        data = bytearray((copy / rel).read_bytes())
        data[offset] ^= 1 << bit
        (copy / rel).write_bytes(bytes(data))
        start = time.perf_counter()
        ok, how = _outcome(copy, ref, model, tok)
        shutil.rmtree(copy)
        out.append(Trial("flips", f"{rel.parts[0]} byte {offset}/{size} bit {bit}", ok, how, time.perf_counter() - start))
    return out
