"""qp export: every run's test CDEs as a qp Ensemble that LSST DESC RAIL's evaluators read.

``python -m analysis.export STUDY_DIR_or_RUN_DIR`` writes ``RUN_DIR/predictions.qp.hdf5`` beside
each run's ``predictions.h5`` (``p`` float16 (N, C), ``zs``, ``id``; attribute ``bin_edges``;
read by ``analysis.results.load_predictions``, as the report reads it): ``qp.hist`` on the
run's bin edges (rows renormalised, as ``study.metrics`` does), with
ancillary ``zmean`` (the CDE mean over bin centres: SPEC 3's point estimate), ``zmode`` (the
centre of the most probable bin), ``id`` and ``redshift`` (the spectroscopic truth, RAIL's
default truth column). A RAIL user evaluates an exported run with RAIL 2.0's
``PointToPointEvaluator`` (sigma_mad, bias) and ``DistToPointEvaluator`` (CDE loss, PIT): the
snippet in README.md ("Peers on the same galaxies") and docs/peers.md, run on a real export
there. ``force_exact=True`` makes RAIL use every value (its default accumulates t-digests).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from analysis.results import Predictions, load_predictions
from study.errors import UserError
from study.files import atomic_write
from study.metrics import point_estimate

QP_NAME = "predictions.qp.hdf5"


def ensemble(pred: Predictions):
    """The qp.hist Ensemble of one run's CDEs, with zmean, zmode, id and redshift as ancil."""
    import qp

    p = np.asarray(pred.p, np.float64)
    p = p / p.sum(axis=1, keepdims=True)  # qp's float64 histogram, rows summing to 1
    ens = qp.Ensemble(qp.hist, data={"bins": pred.edges, "pdfs": p})
    ens.set_ancil(
        {
            "zmean": point_estimate(p, pred.edges),  # (N,) SPEC 3's point estimate
            "zmode": pred.centers[np.argmax(p, axis=1)],
            "id": np.asarray(pred.ids, np.int64),
            "redshift": pred.zs,
        }
    )
    return ens


def export_run(run_dir: str | os.PathLike) -> Path:
    """Write ``RUN_DIR/predictions.qp.hdf5`` atomically (``study.files.atomic_write``)."""
    run_dir = Path(run_dir)
    ens = ensemble(load_predictions(run_dir))
    out = run_dir / QP_NAME
    # the temporary name keeps the .hdf5 suffix: qp picks its writer from the file name
    atomic_write(out, lambda tmp: ens.write_to(str(tmp)), keep_suffix=True)
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
