"""Training batches from a split: resident on the device, or streamed from host memory.

Two ways to feed the step, chosen by the config switch ``data.resident``:

- **resident** (the default, cifar10-airbench style): the whole split already lives on the training
  device (``load_split(..., device=dev)``) and a batch is one ``index_select`` there. The paper's
  607,712 galaxies are 607,712 x 5 x 64 x 64 x 2 bytes = 24.9 GB as float16 (plus 2.2 GB of flux
  table): meant to sit on an 80 GB GPU beside a constrained ResNet50 trial (not yet measured on a
  GPU: ``benchmarks.step`` reports the trial's peak memory and whether the set fits).
- **streamed**: when the split does not fit, it stays in (pageable) host memory and a background
  thread gathers the rows of batch i + 1 (and i + 2, ``depth`` ahead) into a small page-locked
  staging buffer and copies them to the device with ``non_blocking=True`` on a side CUDA stream, while
  the main stream runs step i. The main stream only waits on the copy's event, so the host never
  blocks on the transfer: a 128-galaxy float16 batch is 5.2 MB, about 0.2 ms over PCIe 4, against a
  step of tens of ms.

Both yield the same ``Batch`` for the same index batches, so a run's numbers do not depend on the
switch. Index batches must be CPU tensors for the streamed path (the gather happens on the host);
draw the batch order with a CPU generator in both paths so that they see the same order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, NamedTuple

import torch

if TYPE_CHECKING:
    from study.data.dataset import SplitData


class Batch(NamedTuple):
    """One training batch on the device."""

    images: torch.Tensor  # (B, 5, 64, 64), nanomaggies, float32 (or the requested dtype)
    ebv: torch.Tensor  # (B,), float32, mag
    zs: torch.Tensor  # (B,), float32
    flux_table: torch.Tensor | None  # (B, 5, C), float32; None when the file has no table
    # (B, 5, 2) float64 sigma-clipped background mean and std of each band
    # (``augment.background_stats``), when the trainer computed them for the split
    background: torch.Tensor | None = None
    # (B, 64, 8) uint8 packed central-source masks (``source_mask``), when the split has them
    # (the segmentation mode of background resampling); ``augment.unpack_bits`` unpacks them
    masks: torch.Tensor | None = None


def _fields(split: SplitData, background: torch.Tensor | None) -> list[torch.Tensor | None]:
    return [split.images, split.ebv, split.zs, split.flux_table, background, split.masks]


def resident_batches(
    split: SplitData,
    index_batches: Iterable[torch.Tensor],
    *,
    image_dtype: torch.dtype | None = torch.float32,
    background: torch.Tensor | None = None,
) -> Iterator[Batch]:
    """Batches gathered from a split that already lives on the training device.

    Args:
        split: the split, its tensors on the training device.
        index_batches: row numbers into the split per batch, on any device (moved to the split's).
        image_dtype: dtype of the yielded images (a float16 file is stored as float16 and
            converted per batch); None keeps the stored dtype.
        background: optional (n, 5, 2) per-row tensor beside the split (same device), gathered
            into ``Batch.background``.
    """
    device = split.images.device
    for idx in index_batches:
        idx = idx.to(device, non_blocking=True)
        images, ebv, zs = (t.index_select(0, idx) for t in (split.images, split.ebv, split.zs))
        table, bg, masks = (
            None if t is None else t.index_select(0, idx)
            for t in (split.flux_table, background, split.masks)
        )
        if image_dtype is not None:
            images = images.to(image_dtype)
        yield Batch(images, ebv, zs, table, bg, masks)


def pin_split(split: SplitData) -> SplitData:
    """The split with its host tensors copied once into page-locked memory (needs CUDA)."""
    import dataclasses

    names = ("images", "ebv", "zs", "flux_table", "masks")
    pinned = {n: getattr(split, n).pin_memory() for n in names if getattr(split, n) is not None}
    return dataclasses.replace(split, **pinned)


class _Slot:
    """One ring-buffer slot: a host staging buffer per field and the event of its last copy."""

    def __init__(self, fields: list[torch.Tensor | None], batch_size: int, pin: bool) -> None:
        self.host = [
            None
            if t is None
            else torch.empty((batch_size, *t.shape[1:]), dtype=t.dtype, pin_memory=pin)
            for t in fields
        ]
        self.event: torch.cuda.Event | None = None


def streamed_batches(
    split: SplitData,
    index_batches: Sequence[torch.Tensor],
    device: torch.device | str,
    *,
    image_dtype: torch.dtype | None = torch.float32,
    depth: int = 2,
    background: torch.Tensor | None = None,
) -> Iterator[Batch]:
    """Batches gathered on the host by a background thread and copied ahead to ``device``.

    On CUDA the rows go through page-locked staging buffers (the split itself need not be
    pinned: ``pin_split`` only saves the gather's copy) and the copies run on a side stream; the
    consumer's stream waits on each batch's copy event (no host sync) and the batch's memory is
    tied to the consumer's stream (``record_stream``), so the caching allocator cannot reuse it
    early. On CPU the thread only gathers ahead (useful when the host reads are the bottleneck).

    Args:
        split: the split, its tensors on the CPU.
        index_batches: CPU index tensors, one per batch (all of them at most ``batch_size`` long).
        device: the training device.
        image_dtype: dtype of the yielded images (converted on the device, on the side stream).
        depth: how many batches are in flight ahead of the consumer.
        background: optional (n, 5, 2) per-row tensor beside the split (host memory),
            streamed into ``Batch.background``.
    """
    device = torch.device(device)
    if split.images.device.type != "cpu":
        raise ValueError(
            "streamed_batches needs the split in host memory (load_split device='cpu')"
        )
    if not index_batches:
        return
    cuda = device.type == "cuda"
    batch_size = max(len(i) for i in index_batches)
    # depth + 1 slots: batch j refills slot j % (depth + 1) only after batch j - depth - 1's copy
    # out of it has finished (its event), which the worker thread waits for, never the consumer.
    fields = _fields(split, background)
    slots = [_Slot(fields, batch_size, pin=True) for _ in range(depth + 1)] if cuda else []
    side = torch.cuda.Stream(device) if cuda else None

    def job(j: int) -> tuple[list[torch.Tensor | None], torch.cuda.Event | None]:
        # Runs in the single worker thread, so jobs (and slot reuse) are strictly in order.
        idx = index_batches[j]
        if idx.device.type != "cpu":
            raise ValueError("streamed_batches needs CPU index tensors (draw them on the CPU)")
        if not cuda:  # fresh tensors: the consumer may hold them while the thread gathers ahead
            return [None if t is None else t.index_select(0, idx) for t in fields], None
        slot = slots[j % len(slots)]
        if slot.event is not None:
            slot.event.synchronize()  # the previous copy out of this slot has finished
        staged = []
        for src, buf in zip(fields, slot.host, strict=True):
            out = None if src is None or buf is None else buf[: len(idx)]
            if src is not None and out is not None:
                torch.index_select(src, 0, idx, out=out)
            staged.append(out)
        assert side is not None
        with torch.cuda.device(device), torch.cuda.stream(side):
            moved = [None if t is None else t.to(device, non_blocking=True) for t in staged]
            if image_dtype is not None and moved[0] is not None:
                moved[0] = moved[0].to(image_dtype)
            event = torch.cuda.Event()
            event.record(side)
        slot.event = event
        return moved, event

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="photoz-stream")
    pending: list[Future] = [pool.submit(job, j) for j in range(min(depth, len(index_batches)))]
    try:
        for j in range(len(index_batches)):
            if j + depth < len(index_batches):
                pending.append(pool.submit(job, j + depth))
            tensors, event = pending.pop(0).result()
            if cuda:
                stream = torch.cuda.current_stream(device)
                assert event is not None
                stream.wait_event(event)
                for t in tensors:
                    if t is not None:
                        t.record_stream(stream)
            elif image_dtype is not None and tensors[0] is not None:
                tensors[0] = tensors[0].to(image_dtype)
            images, ebv, zs, table, bg, masks = tensors
            assert images is not None and ebv is not None and zs is not None
            yield Batch(images, ebv, zs, table, bg, masks)
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def batches(
    split: SplitData,
    index_batches: Sequence[torch.Tensor],
    device: torch.device | str,
    *,
    resident: bool,
    image_dtype: torch.dtype | None = torch.float32,
    background: torch.Tensor | None = None,
) -> Iterator[Batch]:
    """The batches of one epoch, resident or streamed (the ``data.resident`` switch)."""
    if resident:
        return resident_batches(
            split, index_batches, image_dtype=image_dtype, background=background
        )
    return streamed_batches(
        split, index_batches, device, image_dtype=image_dtype, background=background
    )
