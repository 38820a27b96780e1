"""Reading a split in batches, and the one inference path: batches -> logits or encoded features.

`batches` is how the loop reads data (training order, read-ahead workers); `forward` is how every
caller that scores a model reads it: Trainer.predict, modality reliance (trainer/reliance.py) and
the model registry's scorer (search/registry.py). One path, so the eval transforms, batch size,
device copy and autocast of a prediction cannot drift between them.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Iterator

import numpy as np
import torch

from trainer.data.transforms import batch_transform
from trainer.models.presence import complete


def to_device(batch, device):
    """A collated batch (tensor or dict of tensors) on `device`."""
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch.to(device, non_blocking=True)


class BatchView(torch.utils.data.Dataset):
    """Item i = the whole i-th batch (fixed index lists), so worker processes read whole batches
    from the memory-mapped cache and the order never depends on the number of workers."""

    def __init__(self, dataset, batches: list[np.ndarray]):
        self.dataset, self.batches = dataset, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        idx = self.batches[i]
        if hasattr(self.dataset, "get_batch"):
            return self.dataset.get_batch(idx)
        return torch.utils.data.default_collate([self.dataset[int(j)] for j in idx])


def batches(dataset, indices: torch.Tensor, batch_size: int, drop_last: bool,
            num_workers: int = 0, pin_memory: bool = False) -> Iterator[dict]:
    """Collated batches in the order of `indices`; with num_workers > 0 they are read ahead by
    worker processes (and pinned for a fast host-to-device copy)."""
    stop = len(indices) - (len(indices) % batch_size if drop_last else 0)
    view = BatchView(dataset, [indices[s:s + batch_size].numpy() for s in range(0, stop, batch_size)])
    if num_workers == 0:
        yield from (view[i] for i in range(len(view)))
        return
    # own generator: the loader's worker seeding must not draw from the global RNG (dropout)
    yield from torch.utils.data.DataLoader(view, batch_size=None, shuffle=False,
                                           num_workers=num_workers, pin_memory=pin_memory,
                                           prefetch_factor=2, generator=torch.Generator())


@torch.no_grad()
def forward(model, dataset, batch_size: int, device="cpu", num_workers: int = 0,
            autocast: Callable = nullcontext, encode: bool = False) -> Iterator[tuple[dict, object]]:
    """(batch, output) for each batch of `dataset` in order, the model in eval mode.

    `batch` is what the model saw (eval transforms applied, on `device`; "label", "group" and,
    when a modality is missing in the batch, "present" ride along); `output` is one float32 logit
    per sample, or with `encode` the encoded features {modality: float32 (B, d)}, zeros for
    absent rows (model(batch) == model.fuse(model.encode(batch), batch.get("present")))."""
    model.eval()
    device = torch.device(device)
    for batch in batches(dataset, torch.arange(len(dataset)), batch_size, False, num_workers,
                         pin_memory=device.type == "cuda"):
        batch = batch_transform(to_device(complete(batch), device), train=False, generator=None)
        with autocast():
            out = model.encode(batch) if encode else model(batch)
        yield batch, ({m: h.float() for m, h in out.items()} if encode else out.float())


__all__ = ["batches", "forward", "to_device", "BatchView"]
