"""Virtual shards: each host packs only its own rows, and the global batch never depends on the
number of hosts.

The design:
- The examples that fit `max_length` (from the stored token ids' lengths, data/token_ids.py)
  are shuffled anew every epoch: epoch e's order is a permutation drawn from (seed, e).
- V virtual shards (`data.virtual_shards`, fixed when a run starts and stored in the state; V
  divides the global batch's B rows): shard v is the fixed slice [v*n/V, (v+1)*n/V) of each
  epoch's order (n = examples that fit). A shard packs its slice on its own (data/packing.py)
  into rows, epoch after epoch: an endless stream of rows per shard.
- Global batch b is the next B/V rows of shard 0, then of shard 1, ..., then of shard V-1.
- Host h of H owns shards [h*V/H, (h+1)*V/H): its rows are exactly rows [h*B/H, (h+1)*B/H)
  of the global batch, and it reads, packs and copies nothing else. So its work per global
  batch falls as 1/H, and the global batch is bitwise the same for every H that divides V.
- The position is, per shard, (epoch, next row of that epoch's rows); shards cross into the
  next epoch at slightly different batches. Each host saves the positions of its own shards;
  a run on H' hosts (H' dividing V) takes its shards' positions from the states saved by all
  hosts of the previous run (any H), so it continues with exactly the next global batch.
  Another H' is a one-line error naming the host counts that work.

Every shard's epoch is planned from lengths only (a list of example ids and their rows) when
the shard enters it; a batch then copies its rows' token ids out of the memory-mapped files.
"""

import dataclasses
from typing import Any

import numpy as np

from data import packing
from data.errors import DataError
from data.token_ids import TokenIds

STATE_FORMAT = 2  # 1: the grain-based iterator before virtual shards (not resumable here)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def owned_shards(num_shards: int, process_index: int, process_count: int) -> range:
    """The shards host `process_index` of `process_count` packs (a one-line error if the
    host count does not divide the shard count)."""
    if num_shards % process_count:
        counts = ", ".join(map(str, divisors(num_shards)))
        raise DataError(
            f"{process_count} processes cannot share data.virtual_shards={num_shards}: run on "
            f"{counts} processes (a new run may choose another data.virtual_shards)"
        )
    per_host = num_shards // process_count
    return range(process_index * per_host, (process_index + 1) * per_host)


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """One shard's rows in one epoch: examples grouped by row, rows in order."""

    examples: np.ndarray  # int64 [examples of the shard]: example ids, grouped by row
    row_bounds: np.ndarray  # int64 [num_rows + 1]: row r holds examples[row_bounds[r]:...[r+1]]
    row_sizes: np.ndarray  # int64 [num_rows]: examples in each row
    num_rows: int


class ShardedBatches:
    """This host's rows of each global batch (module docstring); single-threaded."""

    def __init__(
        self,
        token_ids: TokenIds,
        fitting: np.ndarray,
        *,
        seed: int,
        num_shards: int,
        shards: range,
        rows_per_shard: int,
        max_length: int,
        pack: bool,
    ):
        if len(fitting) < num_shards:
            raise DataError(
                f"only {len(fitting)} training examples fit data.max_length={max_length}, fewer "
                f"than data.virtual_shards={num_shards}; lower data.virtual_shards"
            )
        self.token_ids, self.fitting, self.seed = token_ids, fitting, seed
        self.num_shards, self.shards, self.rows_per_shard = num_shards, shards, rows_per_shard
        self.max_length, self.pack = max_length, pack
        self.positions = {v: (0, 0) for v in shards}  # shard -> (epoch, next row in it)
        self.batches = 0  # global batches produced so far
        self._orders: dict[int, np.ndarray] = {}  # epoch -> its order, for epochs in use
        self._plans: dict[int, tuple[int, EpochPlan]] = {}  # shard -> (epoch, its plan)

    def _order(self, epoch: int) -> np.ndarray:
        """Epoch `epoch`'s order of the fitting examples (kept while a shard is in it)."""
        if epoch not in self._orders:
            rng = np.random.default_rng([self.seed, epoch])
            self._orders[epoch] = self.fitting[rng.permutation(len(self.fitting))]
            in_use = {e for e, _ in self.positions.values()} | {epoch}
            for unused in set(self._orders) - in_use:
                del self._orders[unused]
        return self._orders[epoch]

    def plan(self, shard: int, epoch: int) -> EpochPlan:
        """Shard `shard`'s rows in `epoch` (cached while the shard is in that epoch)."""
        if self._plans.get(shard, (None,))[0] != epoch:
            n = len(self.fitting)
            examples = self._order(epoch)[
                shard * n // self.num_shards : (shard + 1) * n // self.num_shards
            ]
            if self.pack:
                lengths = self.token_ids.lengths
                rows, num_rows = packing.pack_rows(
                    lengths["inputs"][examples], lengths["targets"][examples], self.max_length
                )
            else:
                rows, num_rows = np.arange(len(examples)), len(examples)
            by_row = np.argsort(rows, kind="stable")
            bounds = np.searchsorted(rows[by_row], np.arange(num_rows + 1))
            plan = EpochPlan(examples[by_row], bounds, np.diff(bounds), num_rows)
            self._plans[shard] = (epoch, plan)
        return self._plans[shard][1]

    def next_batch(self) -> dict[str, np.ndarray]:
        """This host's rows of the next global batch: int32 [len(shards) * rows_per_shard,
        max_length] arrays of packing.assemble."""
        pieces, examples_per_row = [], []
        for shard in self.shards:
            epoch, row = self.positions[shard]
            needed = self.rows_per_shard
            while needed:
                plan = self.plan(shard, epoch)
                end = min(plan.num_rows, row + needed)
                pieces.append(plan.examples[plan.row_bounds[row] : plan.row_bounds[end]])
                examples_per_row.append(plan.row_sizes[row:end])
                needed -= end - row
                epoch, row = (epoch + 1, 0) if end == plan.num_rows else (epoch, end)
            self.positions[shard] = (epoch, row)
        self.batches += 1
        num_rows = len(self.shards) * self.rows_per_shard
        rows = np.repeat(np.arange(num_rows), np.concatenate(examples_per_row))
        return packing.assemble(
            self.token_ids, np.concatenate(pieces), rows, num_rows, self.max_length
        )

    def get_state(self) -> dict[str, Any]:
        """The position after the last batch: JSON-ready, this host's shards only."""
        return {
            "format": STATE_FORMAT,
            "virtual_shards": self.num_shards,
            "batches": self.batches,
            "shards": {str(v): list(self.positions[v]) for v in self.shards},
        }

    def set_state(self, states: list[dict[str, Any]]) -> None:
        """Continues from the states saved by every host of a run (or just this host's, when
        the host count is unchanged): this host's shards take their saved positions."""
        saved = {int(v): tuple(p) for s in states for v, p in s["shards"].items()}
        missing = [v for v in self.shards if v not in saved]
        if missing:
            raise DataError(
                f"the saved training data position has no entry for virtual shards {missing}: "
                "restore the states saved by every process of the previous run"
            )
        batch_counts = {s["batches"] for s in states}
        if len(batch_counts) != 1:
            raise DataError(f"the saved states are at different batches {sorted(batch_counts)}")
        self.positions = {v: saved[v] for v in self.shards}
        self.batches = batch_counts.pop()
