"""Endless, resumable, rank-sharded batches from any map-style dataset.

Each epoch draws a fresh permutation from `(seed, epoch)` alone, and each sample gets its own seed for the
random work done in `__getitem__` (crops, flips). So the batch at a given (epoch, position) is the same
whether the run was interrupted or not, and whatever the number of DataLoader workers: resume is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset


class SeededSample(Dataset):
    """Wraps a dataset so `ds[(index, seed)]` runs `ds[index]` with torch's RNG seeded by `seed`."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class EpochBatches:
    """Iterates forever over batches; `state_dict()` is the data position a checkpoint stores.

    With `world_size > 1` every rank takes a disjoint slice of each epoch's permutation (the same role as
    DistributedSampler) and all ranks see the same number of batches. With `replay_first_epoch` every epoch is
    epoch 0 again, same order and same per-sample seeds, so the same crops: `overfit_batches` wants the very
    same batches, not new draws of the same images."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        num_workers: int = 0,
        collate_fn: Callable | None = None,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
        replay_first_epoch: bool = False,
    ):
        n = len(dataset)
        per_rank = n // world_size
        if per_rank < batch_size:
            raise ValueError(
                f"dataset has {n} samples, fewer than batch_size={batch_size} x world_size={world_size}; "
                "lower the batch size or add data"
            )
        self.dataset = SeededSample(dataset)
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.num_workers, self.collate_fn, self.pin_memory = num_workers, collate_fn, pin_memory
        self.rank, self.world_size = rank, world_size
        self.replay_first_epoch = replay_first_epoch
        self.batches_per_epoch = per_rank // batch_size
        self.epoch, self.position = 0, 0
        self._iterator: Iterator | None = None

    def _epoch_seed(self, epoch: int) -> int:
        return self.seed * 1_000_003 + (0 if self.replay_first_epoch else epoch)

    def _epoch_plan(self, epoch: int) -> list[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(self._epoch_seed(epoch))
        n = len(self.dataset)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        sample_seeds = torch.randint(0, 2**62, (n,), generator=g)
        mine = order[self.rank :: self.world_size][: self.batches_per_epoch * self.batch_size]
        pairs = [(int(i), int(sample_seeds[i])) for i in mine]
        return [pairs[b : b + self.batch_size] for b in range(0, len(pairs), self.batch_size)]

    def _start_epoch(self) -> None:
        plan = self._epoch_plan(self.epoch)[self.position :]
        # Its own generator: a DataLoader iterator otherwise draws its worker base seed from the global RNG,
        # which would shift the training RNG depending on where a run was resumed.
        worker_seeds = torch.Generator().manual_seed(self._epoch_seed(self.epoch))
        loader = DataLoader(
            self.dataset,
            batch_sampler=plan,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=self.pin_memory,
            persistent_workers=False,
            generator=worker_seeds,
        )
        self._iterator = iter(loader)

    def __iter__(self) -> EpochBatches:
        return self

    def __next__(self) -> Any:
        if self._iterator is None:
            self._start_epoch()
        try:
            batch = next(self._iterator)
        except StopIteration:
            self.epoch, self.position = self.epoch + 1, 0
            self._start_epoch()
            batch = next(self._iterator)
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._iterator = None
