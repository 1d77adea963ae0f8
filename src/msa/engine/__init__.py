"""Stage 2+3 (route, assemble, generate) and Memory Interleave over a memory."""

from msa.engine.engine import Answer, Engine, MemoryView, RoundInfo
from msa.engine.in_memory import InMemoryView

__all__ = ["Answer", "Engine", "InMemoryView", "MemoryView", "RoundInfo"]
