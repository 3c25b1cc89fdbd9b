"""RAIL's BPZ (pz-rail-bpz) as a peer: SDSS filter curves, templates, a prior fitted on training.

desc-bpz ships only the LSST DC2 filter curves. ``data_dir()`` writes a BPZ data directory
for the SDSS u, g, r, i, z bands once per cache (``$PHOTOZ_CACHE/peers/bpz-sdss-<desc-bpz
version>/``, built under a temporary name and renamed into place): ``FILTER/SDSS_<b>.res``
from speclite's ``sdss2010-<b>`` curves (Angstrom, response per photon), the CWW+SB templates
desc-bpz ships (``SED/CWWSB4.list``: El, Sbc, Scd, Im, SB3, SB2 and two SSPs), and the
model fluxes of every template through every filter (``AB/``, desc-bpz's ``ABflux``), so
RAIL's stages read it and never write into it.

``run_bpz`` runs RAIL 2's three BPZ stages in-process on the training and test tables:
``BPZlitePreEstimator`` (each training galaxy's best template at its spectroscopic redshift,
``only_type``: its broad type, and the zero-point offsets), ``BPZliteInformer`` (the Benitez
(2000) prior p(T|m) p(z|T, m) fitted to those types and redshifts, ``output_hdfn=False``:
the HDFN prior of faint deep fields would be wrong for r < 17.77) and ``BPZliteEstimator``
(the posterior marginalised over templates on the file's redshift grid).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import shutil
import tempfile
from importlib import resources
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from study.data import layout
from study.errors import UserError

FILTERS = [f"SDSS_{b}" for b in layout.BANDS]  # FILTER/<name>.res, in the file's band order


def filter_curves() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """speclite's SDSS 2010 curves: {FILTERS name: (wavelength in Angstrom, response)}."""
    import speclite.filters

    curves = {}
    for name, band in zip(FILTERS, layout.BANDS, strict=True):
        f = speclite.filters.load_filter(f"sdss2010-{band}")
        curves[name] = (np.asarray(f.wavelength, np.float64), np.asarray(f.response, np.float64))
    return curves


def _write_filters(folder: Path) -> None:
    (folder / "FILTER").mkdir(parents=True)
    for name, (wave, response) in filter_curves().items():
        np.savetxt(
            folder / "FILTER" / f"{name}.res",
            np.c_[wave, response],
            fmt="%.6g",
            header="wavelength(Angstrom) response (speclite sdss2010)",
        )


def _copy_templates(folder: Path) -> list[str]:
    """desc-bpz's SED folder (its .list files and templates) into ``folder/SED``; the names."""
    source = Path(str(resources.files("desc_bpz") / "data_files" / "SED"))
    shutil.copytree(source, folder / "SED")
    names = {n for lst in (folder / "SED").glob("*.list") for n in lst.read_text().split()}
    return sorted(n.removesuffix(".sed") for n in names)


def _write_model_fluxes(folder: Path, spectra: list[str]) -> None:
    """desc-bpz's ABflux for every (template, filter): ``AB/<sed>.<filter>.nomadau.AB``."""
    from desc_bpz import paths
    from desc_bpz.bpz_tools_py3 import ABflux

    (folder / "AB").mkdir()
    paths.set_data_dir(str(folder))  # ABflux finds SED/, FILTER/ and AB/ through these globals
    with contextlib.redirect_stdout(io.StringIO()):  # ABflux prints every step
        for sed in spectra:
            for name in FILTERS:
                ABflux(sed, name, "no")  # no Madau absorption: irrelevant at z < 1


def data_dir(root: Path) -> Path:
    """The SDSS BPZ data directory under ``root`` (``$PHOTOZ_CACHE/peers``), built once.

    Built in a temporary sibling and renamed into place: a reader never sees half of it, and
    of two concurrent builders the second's rename fails and its copy is discarded.
    """
    final = root / f"bpz-sdss-{version('desc-bpz')}"
    if final.exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        _write_filters(tmp)
        _write_model_fluxes(tmp, _copy_templates(tmp))
        try:
            tmp.rename(final)
        except OSError:
            if not final.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    from desc_bpz import paths

    paths.set_data_dir(str(final))
    return final


def _type_file(pre: Any, train: dict[str, np.ndarray], folder: Path) -> Path:
    """Run the pre-estimator on the training table; its types and offsets as the informer's file."""
    import tables_io

    path = folder / "types.hdf5"
    tables_io.write(pre.estimate(train).data, str(path))
    return path


def run_bpz(
    train: dict[str, np.ndarray],
    test: dict[str, np.ndarray],
    common: dict[str, Any],
    settings: dict[str, Any],
    root: Path,
) -> Any:
    """Inform BPZ's prior on ``train`` and estimate ``test``; the qp ensemble of the test split.

    Args:
        train, test: RAIL numpy-dict tables (``rail_table``); copied, as BPZ edits in place.
        common: the options every peer gets (bands, mag_limits, the redshift grid, ...).
        settings: ``SETTINGS["bpz"]`` with overrides (pre-estimator, informer, estimator).
        root: where the data directory lives (``$PHOTOZ_CACHE/peers``).
    """
    from rail.estimation.algos.bpz_lite import BPZliteEstimator, BPZliteInformer
    from rail.estimation.algos.bpz_preprocess import BPZlitePreEstimator

    est_keys = set(BPZliteEstimator.config_options) - {"name", "config", "model", "output"}
    pre_keys = set(BPZlitePreEstimator.config_options) - {"name", "config", "model", "output"}
    inf_keys = set(BPZliteInformer.config_options) - {"name", "config", "model"}
    unknown = sorted(set(settings) - pre_keys - inf_keys - est_keys)
    if unknown:
        raise UserError(
            f"bpz settings: {unknown[0]!r} is no option of RAIL's BPZ stages; "
            f"choose from {sorted(pre_keys | inf_keys | est_keys)}"
        )
    folder = data_dir(root)
    conf = common | settings | {"bpz_ref_data_path": str(folder), "filter_list": FILTERS}
    tag = f"bpz_{next(_STAGES)}"  # RAIL's data store keys on stage names: one per stage made
    with tempfile.TemporaryDirectory() as scratch:
        pre = BPZlitePreEstimator.make_stage(
            name=f"pre_{tag}", **{k: v for k, v in conf.items() if k in pre_keys}
        )
        types = _type_file(pre, {k: v.copy() for k, v in train.items()}, Path(scratch))
        inform = BPZliteInformer.make_stage(
            name=f"inform_{tag}",
            model=f"{tag}.pkl",
            type_file=str(types),
            **{k: v for k, v in conf.items() if k in inf_keys},
        )
        with np.errstate(invalid="ignore"):  # Nelder-Mead's trial steps can make zm < 0
            inform.inform({k: v.copy() for k, v in train.items()})
    est = BPZliteEstimator.make_stage(
        name=f"estimate_{tag}",
        model=inform.get_handle("model"),
        **{k: v for k, v in conf.items() if k in est_keys},
    )
    return est.estimate({k: v.copy() for k, v in test.items()}).data


_STAGES = itertools.count()
