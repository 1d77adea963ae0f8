"""Memory Parallel: a bank sharded over the ranks of a torch.distributed process group.

Weights are replicated, bank segments sharded by rank (``sharding``), every rank scores its shard and
the global top-k is formed from k candidates per rank (one all-gather per router layer, ``access``);
the selected chunks are sent by their owners in one more all-gather. ``DistributedBankView`` plugs
into the unchanged ``Engine``; ``parallel_add`` encodes with every rank. Failures of a rank are
reported by rank (``dist``).
"""

from msa.parallel.access import DistributedAccess, merge_topk
from msa.parallel.dist import DistContext, RankFailureError, init_distributed
from msa.parallel.encode import parallel_add
from msa.parallel.engine import distributed_engine
from msa.parallel.sharding import ShardLayout, ShardMissingError, assign_segments, load_shard, open_shard, plan_shards
from msa.parallel.view import DistributedBankView

__all__ = [
    "DistContext", "DistributedAccess", "DistributedBankView", "RankFailureError", "ShardLayout",
    "ShardMissingError", "assign_segments", "distributed_engine", "init_distributed", "load_shard",
    "merge_topk", "open_shard", "parallel_add", "plan_shards",
]  # fmt: skip
