"""Streamed batches (background gather, pinned copies on CUDA) equal resident ones, in order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from study.data.dataset import SplitData
from study.data.stream import Batch, batches, pin_split, resident_batches, streamed_batches


def _split(n: int = 50, n_bins: int = 7, table: bool = True, dtype=torch.float16) -> SplitData:
    g = torch.Generator().manual_seed(0)
    return SplitData(
        images=torch.randn(n, 5, 64, 64, generator=g).to(dtype),
        ebv=torch.rand(n, generator=g),
        zs=torch.rand(n, generator=g) * 0.4,
        flux_table=torch.rand(n, 5, n_bins, generator=g) if table else None,
        ids=np.arange(n, dtype=np.int64),
        index=np.arange(n, dtype=np.int64),
    )


def _check_rows(batch: Batch, split: SplitData, idx: torch.Tensor) -> None:
    # Independent reference: plain advanced indexing of the source tensors.
    assert batch.images.dtype == torch.float32
    torch.testing.assert_close(batch.images.cpu(), split.images[idx].float(), rtol=0, atol=0)
    torch.testing.assert_close(batch.ebv.cpu(), split.ebv[idx], rtol=0, atol=0)
    torch.testing.assert_close(batch.zs.cpu(), split.zs[idx], rtol=0, atol=0)
    if split.flux_table is None:
        assert batch.flux_table is None
    else:
        torch.testing.assert_close(batch.flux_table.cpu(), split.flux_table[idx], rtol=0, atol=0)


@pytest.mark.parametrize("table", [True, False])
def test_streamed_equals_resident_on_cpu(table):
    split = _split(table=table)
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(1))
    idx_batches = list(torch.split(order, 16))  # 16, 16, 16, 2: a short last batch
    streamed = list(streamed_batches(split, idx_batches, "cpu", depth=2))
    resident = list(resident_batches(split, idx_batches))
    assert len(streamed) == len(resident) == len(idx_batches)
    for s, r, idx in zip(streamed, resident, idx_batches, strict=True):
        _check_rows(s, split, idx)
        _check_rows(r, split, idx)


def test_streamed_batches_stay_valid_while_thread_runs_ahead():
    # The consumer keeps every batch; the thread gathering ahead must not overwrite old ones.
    split = _split(n=40)
    idx_batches = [torch.arange(i, i + 8) for i in range(0, 40, 8)]
    kept = list(batches(split, idx_batches, "cpu", resident=False))
    for b, idx in zip(kept, idx_batches, strict=True):
        _check_rows(b, split, idx)


def test_streamed_propagates_worker_errors():
    split = _split(n=10)
    bad = [torch.arange(0, 5), torch.tensor([0, 99])]  # row 99 does not exist
    it = streamed_batches(split, bad, "cpu")
    next(it)
    with pytest.raises(IndexError):
        next(it)


def test_empty_epoch():
    assert list(streamed_batches(_split(n=4), [], "cpu")) == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_streamed_equals_resident_on_cuda():
    host = pin_split(_split(n=300))
    dev = SplitData(
        images=host.images.cuda(),
        ebv=host.ebv.cuda(),
        zs=host.zs.cuda(),
        flux_table=host.flux_table.cuda(),
        ids=host.ids,
        index=host.index,
    )
    order = torch.randperm(300, generator=torch.Generator().manual_seed(2))
    idx_batches = list(torch.split(order, 32))
    for s, r, idx in zip(
        streamed_batches(host, idx_batches, "cuda", depth=2),
        resident_batches(dev, idx_batches),
        idx_batches,
        strict=True,
    ):
        assert s.images.is_cuda and s.flux_table.is_cuda
        # Work on the consumer's stream after the copy event: the values must be the copied ones.
        _check_rows(Batch(*(t * 1 for t in s)), host, idx)
        torch.testing.assert_close(s.images, r.images, rtol=0, atol=0)


def test_background_rows_travel_with_their_batch():
    split = _split(n=40)
    bg = torch.rand(40, 5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    idx_batches = list(torch.randperm(40, generator=torch.Generator().manual_seed(4)).split(16))
    for resident in (True, False):
        got = list(batches(split, idx_batches, "cpu", resident=resident, background=bg))
        for b, idx in zip(got, idx_batches, strict=True):
            _check_rows(b, split, idx)
            torch.testing.assert_close(b.background, bg[idx], rtol=0, atol=0)
    assert all(b.background is None for b in resident_batches(split, idx_batches))
