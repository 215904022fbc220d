"""Lockstep batching: run several problems' searches at once and merge their sampler calls.

A search issues one small sampler call at a time (k children of one state, or the rollouts
of one expansion), which leaves a GPU, or even a CPU, mostly idle. ``search_many`` runs
one search per problem in its own thread; every thread's ``generate`` goes to a
:class:`LockstepSampler`, which waits until *every* live search has submitted its next call
(a round), then issues one batched ``generate`` per distinct (n, decoding settings) group,
prompts in problem order, and hands each search its rows.

Determinism: each search is sequential and deterministic given its samples, so the set of
calls in every round, and their order, is fixed by the problems and the config: the same
group of problems gives the same results however the threads are scheduled. The batched
call's seed is derived from the seeds of the calls it merges. Results do depend on which
problems share a group, so groups are fixed by problem index (synth/runner.py).
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Callable, Sequence

from alignment.sampling.base import Sample, Sampler, SamplingParams
from synth.search.tree import SearchResult, derive_seed


class LockstepSampler:
    """Merges one ``generate`` call per live search into batched calls (see module docstring)."""

    def __init__(self, sampler: Sampler, n_searches: int):
        self.sampler = sampler
        self.live = n_searches
        self.cv = threading.Condition()
        self.pending: dict[int, tuple[list, int, SamplingParams]] = {}
        self.results: dict[int, list[list[Sample]] | BaseException] = {}
        self.batched_calls = 0

    def view(self, slot: int) -> "_View":
        return _View(self, slot)

    def submit(self, slot: int, prompts: Sequence, n: int, params: SamplingParams) -> list[list[Sample]]:
        with self.cv:
            self.pending[slot] = (list(prompts), n, params)
            if len(self.pending) >= self.live:
                self._flush()
            while slot not in self.results:
                self.cv.wait()
            out = self.results.pop(slot)
        if isinstance(out, BaseException):
            raise out
        return out

    def finish(self) -> None:
        """A search ended: it will submit no more calls (may complete a waiting round)."""
        with self.cv:
            self.live -= 1
            if self.pending and len(self.pending) >= self.live:
                self._flush()

    def _flush(self) -> None:
        # called with the lock held by the thread that completed the round
        groups: dict[tuple, list[int]] = {}
        for slot in sorted(self.pending):
            _, n, p = self.pending[slot]
            key = (n, p.max_new_tokens, p.temperature, p.top_p, p.top_k, tuple(p.stop))
            groups.setdefault(key, []).append(slot)
        try:
            for key, slots in groups.items():
                prompts = [pr for s in slots for pr in self.pending[s][0]]
                params = self.pending[slots[0]][2]
                seed = derive_seed(*[self.pending[s][2].seed for s in slots])
                out = self.sampler.generate(prompts, key[0], replace(params, seed=seed))
                self.batched_calls += 1
                i = 0
                for s in slots:
                    k = len(self.pending[s][0])
                    self.results[s] = out[i : i + k]
                    i += k
        except BaseException as e:  # noqa: BLE001 - every waiting search must see the failure
            for s in self.pending:
                self.results.setdefault(s, e)
        self.pending.clear()
        self.cv.notify_all()


class _View:
    """The Sampler one search sees."""

    def __init__(self, owner: LockstepSampler, slot: int):
        self.owner, self.slot = owner, slot

    def generate(self, prompts, n: int, params: SamplingParams) -> list[list[Sample]]:
        return self.owner.submit(self.slot, prompts, n, params)


def search_many(problems: Sequence, sampler: Sampler, run_one: Callable[[object, Sampler], SearchResult]) -> list[SearchResult]:
    """Run ``run_one(problem, sampler_view)`` for every problem in lockstep; results in order."""
    if len(problems) == 1:
        return [run_one(problems[0], sampler)]
    lock = LockstepSampler(sampler, len(problems))
    results: list[SearchResult | BaseException | None] = [None] * len(problems)

    def work(i: int) -> None:
        try:
            results[i] = run_one(problems[i], lock.view(i))
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller below
            results[i] = e
        finally:
            lock.finish()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(problems))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results  # type: ignore[return-value]
