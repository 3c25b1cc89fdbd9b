"""The synthetic SDSS-like universe (SPEC 5): its physics and the builder of its photoz-study/1 file.

``population`` (luminosity function, the r < 17.77 cut, SEDs, sizes, extinction), ``sed``
(kcorrect templates, Planck18 distances, template band fluxes, the exact flux table), ``render``
(bulge + disk light, PSF, pixels, noise) and ``build`` (blocks, workers, the file, the cache and
``python -m study.data universe``). It may import astropy, speclite and kcorrect; the training
core never imports it (SPEC 7): the edges (the CLIs, the Tune trainable) resolve the default
dataset with ``study.universe.build.cached_universe`` and hand the trainer a path.
"""
