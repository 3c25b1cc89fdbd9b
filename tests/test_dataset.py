"""The photoz-study/1 file: round trip, byte-identical output, validation of bad files."""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from study.data.aperture import PHOT_ATTRS
from study.data.dataset import (
    DatasetWriter,
    batch_indices,
    draw_split,
    load_split,
    read_info,
    resplit,
    validate,
    write_dataset,
)
from study.errors import UserError

EDGES = np.linspace(0.0, 0.4, 181)


def make_arrays(n: int = 40, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return dict(
        images=rng.normal(size=(n, 5, 64, 64)).astype(np.float32),
        zs=rng.uniform(0.0, 0.4, n),
        ebv=rng.uniform(0.0, 0.1, n).astype(np.float32),
        flux=np.full((n, 5), np.nan, np.float32),
        split=draw_split(n, 0),
        ids=np.arange(1000, 1000 + n),
        flux_table=rng.uniform(0.5, 1.5, size=(n, 5, 180)).astype(np.float32),
        truth={"coef": rng.normal(size=(n, 5))},
    )


def write(path: Path, **changes) -> Path:
    arrays = make_arrays() | changes
    return write_dataset(path, bin_edges=EDGES, source="synthetic", data_seed=0, **arrays)


def test_round_trip_and_load_split(tmp_path):
    a = make_arrays()
    path = write(tmp_path / "d.h5")
    info = validate(path)
    assert info.n == 40 and info.n_bins == 180 and info.has_flux_table
    assert sum(info.split_counts.values()) == 40 and info.truth_fields == ["coef"]
    for name, code in (("train", 0), ("val", 1), ("test", 2)):
        d = load_split(path, name)
        rows = np.flatnonzero(a["split"] == code)
        np.testing.assert_array_equal(d.index, rows)
        np.testing.assert_array_equal(d.ids, a["ids"][rows])
        assert torch.equal(d.images, torch.from_numpy(a["images"][rows]))
        assert torch.equal(d.zs, torch.from_numpy(a["zs"][rows].astype(np.float32)))
        assert torch.equal(d.flux_table, torch.from_numpy(a["flux_table"][rows]))
    half = load_split(path, "train", image_dtype=torch.float16)
    assert half.images.dtype == torch.float16
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["truth/coef"][:], a["truth"]["coef"])
        assert f["zs"].dtype == np.float64 and f["split"].dtype == np.uint8


def test_identical_content_gives_identical_bytes(tmp_path):
    a = make_arrays()
    write(tmp_path / "a.h5")
    time.sleep(1.1)  # a timestamp anywhere in the file would now differ
    with DatasetWriter(
        tmp_path / "b.h5",
        40,
        bin_edges=EDGES,
        source="synthetic",
        data_seed=0,
        with_flux_table=True,
        truth={"coef": ((5,), np.float64)},
    ) as w:
        for s in (20, 0):  # out of order: the layout and the hash must not depend on it
            rows = {k: v[s : s + 20] for k, v in a.items() if k != "truth"}
            w.write(s, **rows, truth={"coef": a["truth"]["coef"][s : s + 20]})
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()
    write(tmp_path / "c.h5", zs=a["zs"] * 0.5)
    assert read_info(tmp_path / "c.h5").content_hash != read_info(tmp_path / "a.h5").content_hash


def _phot(n: int = 40) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {"phot": rng.normal(10, 3, (n, 5)), "phot_err": rng.uniform(0.1, 1, (n, 5))}


def test_phot_is_optional_stored_and_hashed(tmp_path):
    # Without phot the writer's bytes are unchanged: checked once by hand against the writer of
    # commit 569a96d (a fixed 40-galaxy write_dataset call gave the same SHA-256 of the file).
    bare = write(tmp_path / "bare.h5")
    with h5py.File(bare) as f:
        assert "phot" not in f and "phot_err" not in f
    assert not validate(bare).has_phot
    p = _phot()
    path = write(tmp_path / "p.h5", **p)
    info = validate(path)  # the hash covers phot/phot_err
    assert info.has_phot and info.content_hash != validate(bare).content_hash
    with h5py.File(path) as f, h5py.File(bare) as g:
        for name in ("phot", "phot_err"):
            assert f[name].dtype == np.float32 and f[name].shape == (40, 5)
            np.testing.assert_array_equal(f[name][:], p[name].astype(np.float32))
            assert dict(f[name].attrs) == PHOT_ATTRS
        for name in g:  # everything else as in the file without them
            if isinstance(g[name], h5py.Dataset):
                assert f[name][:].tobytes() == g[name][:].tobytes(), name
    _edit(path, "phot_err", (3, 2), 2.0)
    with pytest.raises(UserError, match="'content_hash' does not match"):
        validate(path)
    with pytest.raises(ValueError, match="phot and phot_err come together"):
        write(tmp_path / "half.h5", phot=p["phot"])
    kwargs = dict(bin_edges=EDGES, source="synthetic", data_seed=0, with_phot=True)
    with pytest.raises(ValueError, match="pass phot= and phot_err="):
        with DatasetWriter(tmp_path / "w.h5", 40, **kwargs) as w:
            w.write(
                0, **{k: v for k, v in make_arrays().items() if k not in ("flux_table", "truth")}
            )
    assert not (tmp_path / "w.h5").exists()


def test_resplit_keeps_every_dataset_and_phot(tmp_path):
    src = write(tmp_path / "p.h5", **_phot())
    new = resplit(src, tmp_path / "s.h5", data_seed=4)
    info = validate(new)
    assert info.data_seed == 4 and info.has_phot
    with h5py.File(src) as f, h5py.File(new) as g:
        assert not np.array_equal(f["split"][:], g["split"][:])
        for name in ("images", "zs", "flux_table", "truth/coef", "phot", "phot_err"):
            assert f[name][:].tobytes() == g[name][:].tobytes(), name
        assert dict(g["phot"].attrs) == PHOT_ATTRS
    bare = resplit(write(tmp_path / "b.h5"), tmp_path / "bs.h5", data_seed=4)
    assert not validate(bare).has_phot


def test_draw_split_sizes_and_seed():
    s = draw_split(607_712, 0)
    assert np.bincount(s).tolist() == [607_712 - 121_543 - 20_000, 20_000, 121_543]
    small = draw_split(1000, 0)
    assert np.bincount(small).tolist() == [760, 40, 200]
    np.testing.assert_array_equal(small, draw_split(1000, 0))
    assert not np.array_equal(small, draw_split(1000, 1))


def test_writer_refuses_existing_and_cleans_up(tmp_path):
    path = write(tmp_path / "d.h5")
    with pytest.raises(UserError, match="--force"):
        write(path)
    out = tmp_path / "e.h5"
    with pytest.raises(RuntimeError):
        with DatasetWriter(out, 4, bin_edges=EDGES, source="synthetic", data_seed=0):
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == [path]


def _edit(path: Path, name: str, index, value) -> Path:
    with h5py.File(path, "r+") as f:
        f[name][index] = value
    return path


@pytest.mark.parametrize(
    ("name", "index", "value", "match"),
    [
        ("images", (7, 2, 3, 3), np.nan, r"'images' has NaN/inf pixels at index 7"),
        ("zs", 5, 0.45, r"'zs' is NaN or outside \[0, 0.4\] at index 5"),
        ("zs", 6, -0.01, r"'zs' .* at index 6"),
        ("ebv", 3, -0.1, r"'ebv' .* at index 3"),
        ("flux", (4, 1), np.inf, r"'flux' is infinite .* index 4"),
        ("split", 9, 3, r"'split' is not 0/1/2 at index 9"),
        ("flux_table", (11, 2, 7), np.nan, r"'flux_table' .*partly-NaN.* index 11"),
        ("id", 8, 1003, r"'id' repeats id 1003 at index 8"),
        ("ebv", 0, 0.05, r"'content_hash' does not match"),
    ],
)
def test_validate_catches_bad_content(tmp_path, name, index, value, match):
    path = _edit(write(tmp_path / "d.h5"), name, index, value)
    with pytest.raises(UserError, match=match) as e:
        validate(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_whole_nan_band_row_is_allowed(tmp_path):
    table = make_arrays()["flux_table"]
    table[3, 0, :] = np.nan  # band u unusable for galaxy 3
    validate(write(tmp_path / "d.h5", flux_table=table))


def test_validate_catches_bad_structure(tmp_path):
    path = write(tmp_path / "d.h5")
    with h5py.File(path, "r+") as f:
        del f["ebv"]
    with pytest.raises(UserError, match=r"dataset 'ebv' is missing"):
        validate(path)
    path = write(tmp_path / "e.h5")
    with h5py.File(path, "r+") as f:
        del f["images"]
        f["images"] = np.zeros((40, 5, 32, 32), np.float32)
    with pytest.raises(UserError, match=r"'images' has shape \(40, 5, 32, 32\), expected"):
        validate(path)
    path = write(tmp_path / "f.h5")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        validate(path)
    with pytest.raises(UserError, match="no such file"):
        validate(tmp_path / "missing.h5")


def test_batch_indices_cover_once():
    g = torch.Generator().manual_seed(0)
    batches = batch_indices(10, 4, g)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    assert [len(b) for b in batch_indices(10, 4, g, drop_last=True)] == [4, 4]
    assert torch.cat(batch_indices(5, 2, g, shuffle=False)).tolist() == [0, 1, 2, 3, 4]
    again = batch_indices(10, 4, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))


def test_float16_file_and_overflow(tmp_path):
    a = make_arrays()
    path = write(tmp_path / "h.h5", image_dtype="float16")
    assert validate(path).image_dtype == "float16"
    d = load_split(path, "test")
    assert torch.equal(d.images, torch.from_numpy(a["images"][d.index].astype(np.float16)).float())
    big = a["images"].copy()
    big[2, 0, 0, 0] = 1e6  # beyond float16's 65504
    with pytest.raises(UserError, match=r"'images' overflows float16 at index 2"):
        write(tmp_path / "o.h5", images=big, image_dtype="float16")
    assert not (tmp_path / "o.h5").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_load_split_onto_cuda(tmp_path):
    path = write(tmp_path / "d.h5")
    cpu = load_split(path, "train")
    gpu = load_split(path, "train", device="cuda", image_dtype=torch.float16)
    assert gpu.images.device.type == "cuda" and gpu.images.dtype == torch.float16
    assert torch.equal(gpu.images.cpu(), cpu.images.half())
    assert torch.equal(gpu.zs.cpu(), cpu.zs) and torch.equal(gpu.flux_table.cpu(), cpu.flux_table)
    g = torch.Generator(device="cuda").manual_seed(0)
    batches = batch_indices(len(gpu), 16, g)
    assert batches[0].device.type == "cuda"
    assert gpu.images[batches[0]].shape == (16, 5, 64, 64)
