"""RAIL peers on a tiny universe: scored with study.metrics, cached per content hash, seeded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import qp
from scipy import stats

from analysis import bpz, peers
from study.data import aperture, layout
from study.data.dataset import write_dataset
from study.errors import UserError
from study.metrics import METRIC_NAMES, all_metrics
from study.universe import build as universe

# RAIL's grids shrunk so FlexZBoost informs in seconds on ~300 galaxies (the CLI uses RAIL's)
FAST = {"flexzboost": {"nbump": 3, "nsharp": 3, "max_basis": 15}}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("peers")  # the universe writes phot/phot_err itself
    return universe.build_universe(400, 0, folder / "u.h5", workers=1, progress=False)


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PHOTOZ_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_magnitudes_deredden_and_mark_non_detections() -> None:
    flux = np.array([[100.0, 10.0, 1.0, -0.5, np.nan]])
    err = np.full((1, 5), 0.5)
    mag, mag_err = peers.magnitudes(flux, err, np.array([0.1]))
    want = 22.5 - 2.5 * np.log10([100.0, 10.0, 1.0]) - 0.1 * layout.EXTINCTION_R[:3]
    np.testing.assert_allclose(mag[0, :3], want)
    np.testing.assert_allclose(mag_err[0, :3], 1.0857362 * 0.5 / np.array([100.0, 10.0, 1.0]))
    assert np.all(mag[0, 3:] == peers.NONDETECT) and np.all(mag_err[0, 3:] == peers.NONDETECT)


def test_on_bins_integrates_the_cdf_over_each_bin() -> None:
    edges = np.linspace(0.0, 0.4, 181)
    loc, scale = np.array([[0.1], [0.02]]), np.array([[0.02], [0.03]])
    ens = qp.Ensemble(qp.stats.norm, data=dict(loc=loc, scale=scale))
    p = peers.on_bins(ens, edges)
    want = np.diff(stats.norm.cdf(edges[None, :], loc, scale), axis=1)
    want /= want.sum(axis=1, keepdims=True)  # the second loses its mass below z = 0
    np.testing.assert_allclose(p, want, rtol=1e-6, atol=1e-12)


def test_both_peers_score_on_the_test_split_and_the_cache_is_hit(data: Path, cache: Path) -> None:
    frame = peers.peer_results(data, inputs=("phot", "truth-flux"), settings=FAST, progress=False)
    assert list(frame["name"]) == [
        f"{e}-{i}" for i in ("phot", "truth-flux") for e in peers.ESTIMATORS
    ]
    assert np.isfinite(frame[list(METRIC_NAMES)].to_numpy(float)).all()
    assert not frame["cached"].any() and (frame["seconds"] < 60).all()
    with h5py.File(data) as f:
        test = f["split"][:] == 2
        zs, ids, edges = f["zs"][:][test], f["id"][:][test], f.attrs["bin_edges"]
        content_hash = f.attrs["content_hash"]
    assert (frame["n_test"] == test.sum()).all()
    assert frame["label"].str.contains("noiseless").tolist() == [False] * 3 + [True] * 3
    folder = cache / "peers" / content_hash
    for name in frame["name"]:
        p = peers.peer_cdes(data, name)
        assert p.shape == (test.sum(), len(edges) - 1)
        with h5py.File(folder / f"{name}.h5") as f:
            assert f["p"].dtype == np.float16
            np.testing.assert_array_equal(f["id"][:], ids)
        row = frame.set_index("name").loc[name]  # the stored CDEs give the reported metrics
        assert all_metrics(p, zs, edges)["sigma_nmad"] == pytest.approx(row["sigma_nmad"], 0.02)
    again = peers.peer_results(data, inputs=("phot", "truth-flux"), settings=FAST, progress=False)
    assert again["cached"].all()
    np.testing.assert_array_equal(
        again[list(METRIC_NAMES)].to_numpy(float), frame[list(METRIC_NAMES)].to_numpy(float)
    )
    other = peers.peer_results(data, estimators=("knn",), settings={"knn": {"nneigh_max": 5}},
                               progress=False)  # fmt: skip
    assert not other["cached"].any()  # other settings: computed again


def test_same_inputs_same_numbers(data: Path) -> None:
    cat = peers.load_catalogue(data, "phot")
    for estimator in peers.ESTIMATORS:
        conf = peers._settings(estimator, FAST)
        np.testing.assert_array_equal(
            peers.run_peer(cat, estimator, conf), peers.run_peer(cat, estimator, conf)
        )
    one = peers.peer_results(data, estimators=("knn",), cache=False, progress=False)
    two = peers.peer_results(data, estimators=("knn",), cache=False, progress=False)
    assert one[list(METRIC_NAMES)].equals(two[list(METRIC_NAMES)])


def test_bpz_normalised_on_the_bins_and_better_than_the_training_median(data: Path) -> None:
    cat = peers.load_catalogue(data, "phot")
    p = peers.run_peer(cat, "bpz", peers._settings("bpz", None))
    test = cat.split == 2
    assert p.shape == (test.sum(), len(cat.edges) - 1) and np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    ours = all_metrics(p, cat.zs[test], cat.edges)
    assert np.isfinite([ours[m] for m in METRIC_NAMES]).all()
    # the trivial estimator: every test galaxy at the training split's median redshift
    dz = (np.median(cat.zs[cat.split == 0]) - cat.zs[test]) / (1 + cat.zs[test])
    trivial = 1.4826 * np.median(np.abs(dz - np.median(dz)))
    assert ours["sigma_nmad"] < 0.75 * trivial, (ours["sigma_nmad"], trivial)
    with pytest.raises(UserError, match="'m_0' is no option of RAIL's BPZ stages"):
        peers.run_peer(cat, "bpz", peers._settings("bpz", {"bpz": {"m_0": 15.0}}))


def test_bpz_sdss_filters_are_speclites_and_its_model_colours_too(tmp_path: Path) -> None:
    import astropy.units as u
    import speclite.filters

    folder = bpz.data_dir(tmp_path)
    assert bpz.data_dir(tmp_path) == folder  # built once
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temporary left over
    names = [f"sdss2010-{b}" for b in layout.BANDS]
    for name, band in zip(bpz.FILTERS, names, strict=True):
        wave, response = np.loadtxt(folder / "FILTER" / f"{name}.res", unpack=True)
        curve = speclite.filters.load_filter(band)
        np.testing.assert_allclose(wave, curve.wavelength, rtol=1e-6)
        np.testing.assert_allclose(response, curve.response, rtol=1e-5, atol=1e-9)
    spectra = (folder / "SED" / "CWWSB4.list").read_text().split()
    assert len(spectra) == sum(peers.SETTINGS["bpz"]["nt_array"]) == 8
    filters = speclite.filters.load_filters(*names)
    for sed in ("El_B2004a", "Sbc_B2004a"):  # smooth templates: no emission lines to resample
        wave, flam = np.loadtxt(folder / "SED" / f"{sed}.sed", unpack=True)
        ab = [np.loadtxt(folder / "AB" / f"{sed}.{f}.nomadau.AB") for f in bpz.FILTERS]
        for row, z in ((0, 0.0), (20, 0.2)):  # the AB files' grid: dz = 0.01
            assert ab[0][row, 0] == pytest.approx(z)
            mags = filters.get_ab_magnitudes(
                flam[1:] * u.erg / u.s / u.cm**2 / u.AA, wave[1:] * (1 + z) * u.AA
            )
            want = np.diff([mags[c][0] for c in mags.colnames])
            got = np.diff(-2.5 * np.log10([a[row, 1] for a in ab]))
            np.testing.assert_allclose(got, want, atol=0.005)


def test_rail_leaves_the_settings_alone(data: Path) -> None:
    """The settings are the cache key: RAIL must not fill them in (FlexZBoost's
    regression_params gained learning_rate and verbosity, so no later process hit the cache)."""
    conf = peers._settings("flexzboost", FAST)
    before = json.dumps(conf, sort_keys=True)
    peers.run_peer(peers.load_catalogue(data, "phot"), "flexzboost", conf)
    assert json.dumps(conf, sort_keys=True) == before
    assert json.dumps(peers.SETTINGS["flexzboost"]["regression_params"], sort_keys=True) == (
        '{"max_depth": 8, "objective": "reg:squarederror"}'
    )


def test_non_detections_go_through_rail_as_its_nondetect_value(data: Path) -> None:
    cat = peers.load_catalogue(data, "phot")
    cat.mags[::7, 0] = peers.NONDETECT  # u drop-outs in both splits
    p = peers.run_peer(cat, "knn", peers._settings("knn", None))
    assert np.isfinite(p).all() and np.allclose(p.sum(axis=1), 1.0)


def test_best_peer_ignores_truth_inputs() -> None:
    frame = peers.pd.DataFrame(
        {
            "inputs": ["phot", "phot", "truth-flux"],
            "sigma_nmad": [0.02, 0.018, 0.01],
            "bias": [-0.001, 0.003, 0.0],
        }
    )
    assert peers.best_peer(frame)["sigma_nmad"] == 0.018
    assert peers.best_peer(frame, "bias")["bias"] == -0.001  # the smallest |bias|


def test_bad_input_names_the_file_and_the_fix(data: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare.h5"
    with h5py.File(data) as f:
        cols = {k: f[k][:] for k in ("images", "zs", "ebv", "flux", "split", "id")}
        edges = f.attrs["bin_edges"]
    write_dataset(bare, **{k: v for k, v in cols.items() if k != "id"}, ids=cols["id"],
                  bin_edges=edges, source="dey", data_seed=0)  # fmt: skip
    with pytest.raises(UserError, match=f"{bare}: dataset 'phot' is missing; .* photometry"):
        peers.peer_results(bare, progress=False)
    real = aperture.add_photometry(bare, tmp_path / "real.h5", progress=False)
    with pytest.raises(UserError, match="'truth-flux' .* only in synthetic files"):
        peers.peer_results(real, inputs=("truth-flux",), progress=False)
    with pytest.raises(UserError, match="no cached CDEs of peer 'knn-phot'"):
        peers.peer_cdes(real, "knn-phot")
    assert peers.main([str(bare)]) == 2


def test_cli_prints_the_table(data: Path, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    copy = tmp_path / "copy.h5"
    shutil.copyfile(data, copy)
    assert peers.main([str(copy), "--estimators", "knn"]) == 0
    out = capsys.readouterr().out
    assert "knn-phot" in out and "RAIL KNN on measured aperture photometry" in out


def test_cli_preset_builds_the_presets_universe_then_lowers_its_priority(cache: Path) -> None:
    """`make demo`'s call: the universe study.run trains on, in $PHOTOZ_CACHE, built if missing."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "analysis.peers", "--preset", "tiny", "--estimators", "knn"]
    script = (  # the priority the process has once main() returns
        "import os, sys; from analysis.peers import main; "
        f"rc = main({cmd[3:] + ['--nice', '3']!r}); print('nice', os.nice(0)); sys.exit(rc)"
    )
    env = {**os.environ, "PHOTOZ_CACHE": str(cache)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    built = universe.cached_universe(512, 0)  # the tiny preset's universe: there already
    assert f"{built}: n_test" in done.stdout and "knn-phot" in done.stdout
    assert f"nice {os.nice(0) + 3}" in done.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, env=env)  # cached both
    assert again.returncode == 0 and "True" in again.stdout.split("knn-phot")[1].splitlines()[0]
