"""The photoz-study/1 layout's constants (SPEC 5), defined once for the writer, the readers, the
converters, the universe and the metrics: the format name, the bands, the SDSS extinction
coefficients, the sources, the split codes and the redshift bins."""

from __future__ import annotations

import numpy as np

FORMAT = "photoz-study/1"
BANDS = "ugriz"  # the order of every 5-band axis: images, flux, flux_table, extinction
# A_b / E(B-V) of the SDSS bands (Schlafly & Finkbeiner 2011, the coefficients SDSS DR8+ applies);
# the universe's extinction and the Dey et al. converter's magnitudes use them (SPEC 5)
EXTINCTION_R = np.array([4.239, 3.303, 2.285, 1.698, 1.263])
SOURCES = ("synthetic", "pasquet", "dey", "hayat")
SPLITS = {"train": 0, "val": 1, "test": 2}  # the `split` dataset's codes
IMAGE_SHAPE = (len(BANDS), 64, 64)


def bin_edges(n_bins: int = 180, z_max: float = 0.4) -> np.ndarray:
    """(n_bins + 1,) equal redshift bins on [0, z_max] (SPEC 1: 180 bins on [0, 0.4])."""
    return np.linspace(0.0, z_max, n_bins + 1)


def bin_centers(edges: np.ndarray) -> np.ndarray:
    """(C,) bin centres from (C + 1,) edges: the z_c of the point estimate (SPEC 3)."""
    e = np.asarray(edges, np.float64)
    return 0.5 * (e[:-1] + e[1:])


# Measured photometry (study.data.aperture measures it; the writer stores it with these attributes)
RADIUS_PX = 8.0  # aperture radius, pixels (3.2" at 0.396"/px)
ANNULUS_PX = (24.0, 31.0)  # background annulus, pixels: inside the 64 x 64 frame
MEASURED = ("phot", "phot_err")  # (N, 5) float32 nanomaggies each
PHOT_ATTRS = {
    "unit": "nanomaggies",
    "method": (
        f"photutils circular aperture r={RADIUS_PX:g} px at (32, 32), exact weights; "
        f"background: 3-sigma-clipped median of the {ANNULUS_PX[0]:g}-{ANNULUS_PX[1]:g} px "
        "annulus (study.data.aperture)"
    ),
}
