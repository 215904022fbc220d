"""KV cache of the Yi-Lightning model: sliding-window ring buffers + cross-layer sharing.

- A sliding-attention layer keeps a ring buffer of at most `sliding_window` positions: once full,
  position p is written to slot p % window, so memory stays O(window) at any context length.
- Full-attention layers grow with the context; consecutive full-attention layers grouped by
  `config.kv_plan()` hold ONE K/V per group (only the group's first layer writes it).
- `kv_cache_bytes(config, seq_len, batch)` is the analytic size; `YiLightningCache.nbytes()` the
  bytes a live cache holds. They agree exactly (tests/model/test_cache.py), and for the report's
  pattern at 65,536 tokens `kv_cache_ratio` gives 0.171875 (the "82.8%" saving).

`YiLightningCache` subclasses transformers' `Cache`, so `generate()` treats it like any cache;
`YiLightningForCausalLM` creates it for generation. Run `python bench/model.py` for measured sizes.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class _BatchOps:
    """Batch-dimension edits generate() may apply (num_return_sequences expansion, beam reordering).
    Ring `positions` have no batch dim: every row shares the same absolute positions."""

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self.keys = self.keys.repeat_interleave(repeats, dim=0)
            self.values = self.values.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.keys = self.keys[indices, ...]
            self.values = self.values[indices, ...]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.is_initialized:
            self.keys = self.keys.index_select(0, beam_idx.to(self.keys.device))
            self.values = self.values.index_select(0, beam_idx.to(self.values.device))


class FullKVLayer(_BatchOps, CacheLayerMixin):
    """Append-only K/V of a full-attention layer (or of a sharing group's first layer)."""

    def __init__(self):
        super().__init__()
        self.seen = 0

    def lazy_initialization(self, key_states, value_states) -> None:
        self.keys = key_states[:, :, :0]
        self.values = value_states[:, :, :0]
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        """Append; returns (keys, values, key_positions) covering every position seen."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys = torch.cat([self.keys, key_states], dim=2)
        self.values = torch.cat([self.values, value_states], dim=2)
        self.seen += key_states.shape[2]
        return self.keys, self.values, torch.arange(self.seen, device=key_states.device)

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return -1

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0


class SlidingRingLayer(_BatchOps, CacheLayerMixin):
    """Ring buffer of the last `window` positions of a sliding-attention layer.

    `positions` holds the absolute position stored in each slot. The buffer grows until it holds
    `window` entries, then position p overwrites slot p % window in place.
    """

    def __init__(self, window: int):
        super().__init__()
        self.window = window
        self.seen = 0
        self.positions: torch.Tensor | None = None

    def lazy_initialization(self, key_states, value_states) -> None:
        self.keys = key_states[:, :, :0]
        self.values = value_states[:, :, :0]
        self.positions = torch.zeros(0, dtype=torch.long, device=key_states.device)
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        """Store the new positions; return (keys, values, positions) for this step's attention.

        The returned K/V are the old ring contents (any order; `positions` says which is which)
        followed by every new position, so a multi-token chunk (prefill) sees all keys within its
        window even when the chunk is longer than the window.
        """
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[2]
        new_pos = torch.arange(self.seen, self.seen + n, device=key_states.device)
        k_all = torch.cat([self.keys, key_states], dim=2)
        v_all = torch.cat([self.values, value_states], dim=2)
        pos_all = torch.cat([self.positions, new_pos])
        self.seen += n
        W = self.window
        if self.keys.shape[2] == W:
            # Full ring: overwrite in place (only the last W new positions can survive).
            keep = slice(max(0, n - W), n)
            slots = new_pos[keep] % W
            self.keys = self.keys.index_copy(2, slots, key_states[:, :, keep])
            self.values = self.values.index_copy(2, slots, value_states[:, :, keep])
            self.positions = self.positions.index_copy(0, slots, new_pos[keep])
        elif k_all.shape[2] <= W:
            self.keys, self.values, self.positions = k_all, v_all, pos_all
        else:
            # The ring fills up in this step: keep the last W positions, laid out at slot p % W.
            last = pos_all[-W:]
            order = torch.argsort(last % W)
            self.keys = k_all[:, :, -W:][:, :, order]
            self.values = v_all[:, :, -W:][:, :, order]
            self.positions = last[order]
        return k_all, v_all, pos_all

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return self.window

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return min(self.seen, self.window) + query_length, 0


class YiLightningCache(Cache):
    """One cache layer per *K/V owner* layer; sharing layers read their owner's slot.

    `slot_of[layer]` maps every decoder layer to its cache slot. Attention calls
    `update_layer(layer_idx, k, v)` on owner layers only.
    """

    def __init__(self, config):
        plan = config.kv_plan()
        owners = sorted(set(plan))
        layers = [
            SlidingRingLayer(config.sliding_window) if config.layer_types[o] == "sliding_attention" else FullKVLayer()
            for o in owners
        ]
        super().__init__(layers=layers)
        slot = {o: s for s, o in enumerate(owners)}
        self.slot_of = [slot[plan[i]] for i in range(config.num_hidden_layers)]
        # The first full-attention slot (if any) reports the true sequence length to `generate`.
        self._len_slot = next((s for s, l in enumerate(layers) if isinstance(l, FullKVLayer)), 0)

    def update_layer(self, layer_idx: int, key_states, value_states):
        return self.layers[self.slot_of[layer_idx]].update(key_states, value_states)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[self._len_slot].get_seq_length() if self.layers else 0

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.layers[self.slot_of[layer_idx]].get_mask_sizes(query_length)

    def nbytes(self) -> int:
        """Bytes of K/V tensors held right now (shared slots counted once)."""
        total = 0
        for layer in self.layers:
            if layer.is_initialized:
                total += layer.keys.numel() * layer.keys.element_size()
                total += layer.values.numel() * layer.values.element_size()
        return total


def kv_cache_bytes(config, seq_len: int, batch: int = 1, dtype_bytes: int = 2) -> int:
    """Analytic K/V bytes after `seq_len` tokens: slots of sliding layers hold min(seq_len, window)
    positions, full slots (one per sharing group) hold seq_len."""
    per_pos = batch * config.num_key_value_heads * config.head_dim * 2 * dtype_bytes  # K and V
    total_positions = 0
    for owner in sorted(set(config.kv_plan())):
        sliding = config.layer_types[owner] == "sliding_attention"
        total_positions += min(seq_len, config.sliding_window) if sliding else seq_len
    return per_pos * total_positions


def kv_cache_bytes_all_full(config, seq_len: int, batch: int = 1, dtype_bytes: int = 2) -> int:
    """Baseline: every layer full attention with its own K/V (no window, no sharing)."""
    return batch * config.num_key_value_heads * config.head_dim * 2 * dtype_bytes * seq_len * config.num_hidden_layers


def kv_cache_ratio(config, seq_len: int) -> float:
    """K/V bytes of `config` divided by the all-full-attention, no-sharing baseline."""
    return kv_cache_bytes(config, seq_len) / kv_cache_bytes_all_full(config, seq_len)
