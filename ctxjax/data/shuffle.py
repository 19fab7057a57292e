"""Which document comes k-th in an epoch of a shard: seeded permutations computed one index at a time.

A Feistel network over the next power of two, cycle-walked into [0, n), is a bijection of range(n) that
needs O(1) memory and no pass over the data: a stream over hundreds of millions of documents (c4) can be
shuffled, split among processes and resumed at any index without materialising an index array.
"""

from __future__ import annotations

import hashlib

import numpy as np

_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a cheap, well-spread hash of a 64-bit integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class IndexShuffle:
    """A pseudo-random permutation of range(n) keyed by a tuple of ints: `shuffle(k)` is its k-th element."""

    ROUNDS = 4

    def __init__(self, n: int, key: tuple[int, ...]):
        self.n = int(n)
        key_bytes = repr(tuple(int(k) for k in key)).encode()
        digest = hashlib.blake2b(key_bytes, digest_size=8 * self.ROUNDS).digest()
        self._round_keys = [int.from_bytes(digest[8 * r:8 * r + 8], "little") for r in range(self.ROUNDS)]
        half_bits = max(1, (max(self.n - 1, 1).bit_length() + 1) // 2)
        self._half_bits, self._half_mask = half_bits, (1 << half_bits) - 1

    def _feistel(self, x: int) -> int:
        left, right = x >> self._half_bits, x & self._half_mask
        for round_key in self._round_keys:
            left, right = right, left ^ (_mix64(right ^ round_key) & self._half_mask)
        return (left << self._half_bits) | right

    def __call__(self, k: int) -> int:
        if not 0 <= k < self.n:
            raise IndexError(f"index {k} outside a permutation of {self.n}")
        x = self._feistel(k)
        while x >= self.n:  # cycle-walking: the domain is at most 4n, so this ends after a few steps
            x = self._feistel(x)
        return x


class DocumentOrder:
    """Documents of one shard: the shard owns a fixed subset of the source, visited in a new order each epoch.

    Ownership does not change between epochs, so each process reads (and tokenizes, and caches) only its own
    documents. `shuffle=False` keeps source order: shard s owns a contiguous block (best for sequential
    sources) and visits it in order.
    """

    def __init__(self, num_docs: int, num_shards: int, shard: int, seed: int, shuffle: bool = True):
        self.num_docs, self.num_shards, self.shard = num_docs, num_shards, shard
        self.seed, self.shuffle = seed, shuffle
        if shuffle:
            self._assign = IndexShuffle(num_docs, (seed, 0xA55))
            self.size = len(range(shard, num_docs, num_shards))
        else:
            self._start = shard * num_docs // num_shards
            self.size = (shard + 1) * num_docs // num_shards - self._start
        self._epoch_orders: dict[int, IndexShuffle] = {}

    def local_to_global(self, j: int) -> int:
        if self.shuffle:
            return self._assign(self.shard + self.num_shards * j)
        return self._start + j

    def global_ids(self) -> np.ndarray:
        """Source indices of the shard's documents, by local index."""
        return np.array([self.local_to_global(j) for j in range(self.size)], dtype=np.int64)

    def local_index(self, epoch: int, k: int) -> int:
        """Local index of the k-th document of `epoch`."""
        if not self.shuffle:
            return k
        order = self._epoch_orders.get(epoch)
        if order is None:
            self._epoch_orders = {epoch: IndexShuffle(self.size, (self.seed, self.shard, epoch, 0xE90C))}
            order = self._epoch_orders[epoch]
        return order(k)
