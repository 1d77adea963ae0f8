"""msa: Memory Sparse Attention — a trainable, persistent memory of 100M+ tokens for decoder LLMs."""

from msa.config import EnginePolicy, MSAConfig, MSALossConfig, ModelConfig
from msa.engine import Answer, Engine
from msa.memory import AddReport, BankError, DeleteReport, MemoryBank
from msa.model import CompressedMemory, MSAForCausalLM, PackedBatch, PrefixCache

__version__ = "0.1.0"

__all__ = ["AddReport", "Answer", "BankError", "CompressedMemory", "DeleteReport", "Engine", "MemoryBank", "MSAConfig", "MSAForCausalLM", "ModelConfig", "PackedBatch", "PrefixCache", "__version__"]
