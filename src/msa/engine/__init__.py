"""Stage 2+3 (route, assemble, generate) and Memory Interleave over a memory."""

from msa.engine.answer import Answer, RoundInfo
from msa.engine.choice import DOC_CHOICES, ChoiceContext, DocChoice, GeneratedIds, RoutedRequests
from msa.engine.engine import Engine, MemorySnapshot, MemoryView
from msa.engine.in_memory import InMemoryView

__all__ = ["Answer", "ChoiceContext", "DOC_CHOICES", "DocChoice", "Engine", "GeneratedIds", "InMemoryView",
           "MemorySnapshot", "MemoryView", "RoundInfo", "RoutedRequests"]
