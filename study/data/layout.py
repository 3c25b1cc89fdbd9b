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
# A_b / E(B-V) of SDSS DR12's own `extinction_b` columns (Schlegel, Finkbeiner & Davis 1998
# coefficients applied to the SFD98 E(B-V)). Hayat et al.'s files store those five A_b as
# `e_bv`, and their code (utils/sdss_dr12_galactic_reddening.py in mahayat/ssl-sky-surveys)
# reads E(B-V) back as mean_b(A_b / EXTINCTION_R_SFD98), then dereddens with EXTINCTION_R times
# that E(B-V): the SF11 coefficients act on the SFD98 E(B-V), as DR8+ does and as we do.
EXTINCTION_R_SFD98 = np.array([5.155, 3.793, 2.751, 2.086, 1.479])
SOURCES = ("synthetic", "pasquet", "dey", "hayat")
# what the flux table was computed from (file attribute `flux_table_source`): each galaxy's own
# exact SED (the universe), a measured spectrum (convert --spectra), or kcorrect templates fitted
# to its photometry (study.data.templates); for `templates`, `flux_table_fit_from` says which
# photometry: the catalogue `flux` or the measured `phot`
FLUX_TABLE_SOURCES = ("synthetic-exact", "spectra", "templates")
FIT_INPUTS = ("flux", "phot")
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

# The central source's segment (study.data.masks computes it; the writer stores it with these)
MASK = "source_mask"
DETECT_FWHM_PX = 3.5  # Gaussian smoothing of the detection image: SDSS median seeing, 1.4"
DETECT_NSIGMA = 1.5  # detection threshold, in the smoothed detection image's clipped std
N_PIXELS = 10  # smallest source, connected pixels (photutils n_pixels)
N_LEVELS = 32  # deblending thresholds (photutils' default)
CONTRAST = 0.001  # smallest flux fraction of a deblended component (photutils' default)
# radius of the dilation disk: DILATE_PX + DILATE_SCALE x the segment's equivalent radius
# sqrt(area / pi): the PSF's FWHM, and the faint outskirts below the threshold, which grow with the
# galaxy (a fixed 7 px disk left a median 2.6% of a universe galaxy's r light outside its mask,
# 99% held for 14% of galaxies; this one: README "Source masks")
DILATE_PX = 3.5
DILATE_SCALE = 1.5
MASK_ATTRS = {
    "packing": "np.packbits(mask, axis=-1): (N, 64, 8) uint8, bit order big (pixel 0 = bit 7)",
    "method": (
        f"photutils detect_sources ({DETECT_NSIGMA:g} sigma, {N_PIXELS} px) on the band-summed "
        f"S/N image smoothed by a {DETECT_FWHM_PX:g} px FWHM Gaussian; deblend_sources "
        f"({N_LEVELS} levels, contrast {CONTRAST:g}) of the segment at (32, 32); that segment "
        f"dilated by a disk of {DILATE_PX:g} px + {DILATE_SCALE:g} x its equivalent radius, "
        "outside other segments (study.data.masks)"
    ),
}
