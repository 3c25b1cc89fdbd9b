"""qp export: every run's test CDEs as a qp Ensemble that LSST DESC RAIL's evaluators read.

``python -m analysis.export STUDY_DIR_or_RUN_DIR`` writes ``RUN_DIR/predictions.qp.hdf5`` beside
each run's ``predictions.h5`` (``p`` float16 (N, C), ``zs``, ``id``; attribute ``bin_edges``):
``qp.hist`` on the run's bin edges (rows renormalised, as ``study.metrics`` does), with
ancillary ``zmean`` (the CDE mean over bin centres: SPEC 3's point estimate), ``zmode`` (the
centre of the most probable bin), ``id`` and ``redshift`` (the spectroscopic truth, RAIL's
default truth column). A RAIL user evaluates an exported run with (imports aside)::

    ens = qp.read("RUN_DIR/predictions.qp.hdf5")
    ev = PointToPointEvaluator.make_stage(name="ev", metrics=["point_stats_sigma_mad", "point_bias"],
                                          point_estimate_key="zmean", force_exact=True, output_mode="return")
    print(ev.evaluate(ens, {"photometry": {"redshift": ens.ancil["redshift"]}})["summary"].data)

(``from rail.evaluation.point_to_point_evaluator import PointToPointEvaluator``; without
``force_exact`` RAIL approximates the statistics with t-digests.)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import h5py
import numpy as np

from study.errors import UserError
from study.metrics import bin_centers

QP_NAME = "predictions.qp.hdf5"


def read_predictions(run_dir: Path) -> dict[str, np.ndarray]:
    """A run directory's ``predictions.h5``: p (N, C) float64 rows summing to 1, zs, id, edges."""
    path = run_dir / "predictions.h5"
    if not path.is_file():
        raise UserError(
            f"{run_dir}: no predictions.h5; point at a finished run directory (or a study "
            "directory with runs/) of `python -m study.train` / `python -m study.run`"
        )
    with h5py.File(path, "r") as f:
        p = f["p"][:].astype(np.float64)
        out = {"zs": f["zs"][:].astype(np.float64), "id": f["id"][:].astype(np.int64)}
        out["edges"] = np.asarray(f.attrs["bin_edges"], np.float64)
    out["p"] = p / p.sum(axis=1, keepdims=True)
    return out


def ensemble(pred: dict[str, np.ndarray]):
    """The qp.hist Ensemble of one run's CDEs, with zmean, zmode, id and redshift as ancil."""
    import qp

    centres = bin_centers(pred["edges"])
    ens = qp.Ensemble(qp.hist, data={"bins": pred["edges"], "pdfs": pred["p"]})
    ens.set_ancil(
        {
            "zmean": pred["p"] @ centres,  # (N,) SPEC 3's point estimate
            "zmode": centres[np.argmax(pred["p"], axis=1)],
            "id": pred["id"],
            "redshift": pred["zs"],
        }
    )
    return ens


def export_run(run_dir: str | os.PathLike) -> Path:
    """Write ``RUN_DIR/predictions.qp.hdf5`` (atomically: a temporary name, then renamed)."""
    run_dir = Path(run_dir)
    ens = ensemble(read_predictions(run_dir))
    out = run_dir / QP_NAME
    tmp = run_dir / f".tmp{os.getpid()}.{QP_NAME}"  # qp picks the format from the suffix
    try:
        ens.write_to(str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def run_dirs(path: str | os.PathLike) -> list[Path]:
    """The run directories under ``path``: itself, or a study directory's ``runs/*``."""
    path = Path(path)
    if (path / "predictions.h5").is_file():
        return [path]
    runs = sorted(p.parent for p in path.glob("runs/*/predictions.h5"))
    if not runs:
        raise UserError(
            f"{path}: neither a run directory (predictions.h5) nor a study directory with "
            "runs/*/predictions.h5; pass RUN_DIR or STUDY_DIR"
        )
    return runs


def export(path: str | os.PathLike) -> list[Path]:
    """Export every run under ``path`` (a run or a study directory); returns the files written."""
    return [export_run(run) for run in run_dirs(path)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("path", type=Path, help="a run directory or a study directory")
    args = parser.parse_args(argv)
    try:
        written = export(args.path)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for out in written:
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
