"""Names fixed by SPEC.md, written out here as the tests' independent reference (not imported
from the code under test)."""

# SPEC 3: the metric names, in the order of the frame's columns; cde_loss_se is the CDE
# loss's standard error (reported, never an objective)
SPEC3_METRICS = (
    "sigma_nmad",
    "sigma_iqr",
    "bias",
    "bias_median",
    "outlier_frac",
    "outlier_frac_rail",
    "cde_loss",
    "cde_loss_se",
    "ks",
    "cvm",
    "ad",
    "pit_outlier_rate",
    "coverage_68",
    "coverage_95",
)
