"""python -m study.data: convert, inspect and re-split photoz-study/1 files (and build a universe);
add measured photometry, a template flux table or source masks to one.

Exit code 2 with a one-line ``error: ...`` on bad input; an existing --out is never overwritten
unless --force is given (and even then only once the new file is complete).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import numpy as np

from study.data.layout import BANDS
from study.errors import UserError

PIXEL_SAMPLE = 2000  # galaxies whose pixels give the per-band quantiles in `inspect`


def cmd_convert(args: argparse.Namespace) -> None:
    from study.data.formats import convert

    out = convert(
        args.format,
        args.input,
        args.out,
        spectra=args.spectra,
        flux_table=args.flux_table,
        data_seed=args.data_seed,
        allow_pickle=args.allow_pickle,
        overwrite=args.force,
        image_dtype=args.dtype,
        chunk=args.chunk,
        masks=not args.no_masks,
    )
    print(f"wrote {out}")


def cmd_split(args: argparse.Namespace) -> None:
    from study.data.dataset import resplit

    out = resplit(args.input, args.out, args.data_seed, overwrite=args.force)
    print(f"wrote {out} (data seed {args.data_seed})")


def cmd_inspect(args: argparse.Namespace) -> None:
    from study.data.dataset import READ_ROWS, validate

    info = validate(args.input, check_hash=not args.no_hash)
    print(f"{info.path}: photoz-study/1, source {info.source}, data seed {info.data_seed}")
    print(f"  N = {info.n}: " + ", ".join(f"{k} {v}" for k, v in info.split_counts.items()))
    print(f"  bins: {info.n_bins} on [{info.bin_edges[0]:g}, {info.bin_edges[-1]:g}]")
    print(f'  images: {info.image_dtype}, {info.pixel_scale_arcsec}"/px')
    with h5py.File(info.path, "r") as f:
        zs = f["zs"][:]
        qs = np.quantile(zs, [0.05, 0.25, 0.5, 0.75, 0.95])
        print("  zs quantiles 5/25/50/75/95%: " + " ".join(f"{q:.4f}" for q in qs))
        # per-band mean/std over every pixel (streamed), quantiles on the first PIXEL_SAMPLE
        total, total_sq = np.zeros(5), np.zeros(5)
        for s in range(0, info.n, READ_ROWS):
            block = f["images"][s : s + READ_ROWS].astype(np.float64)
            total += block.sum(axis=(0, 2, 3))
            total_sq += (block**2).sum(axis=(0, 2, 3))
        count = info.n * 64 * 64
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 0))
        sample = f["images"][:PIXEL_SAMPLE].astype(np.float64)
        pct = np.percentile(sample.transpose(1, 0, 2, 3).reshape(5, -1), [1, 50, 99], axis=1)
        print(
            "  pixels (nanomaggies): band mean std p1 p50 p99 (percentiles: first "
            f"{min(info.n, PIXEL_SAMPLE)} galaxies)"
        )
        for b, band in enumerate(BANDS):
            print(
                f"    {band} {mean[b]:.4g} {std[b]:.4g} {pct[0, b]:.4g} {pct[1, b]:.4g} {pct[2, b]:.4g}"
            )
        known = np.isfinite(f["flux"][:]).all(axis=1).mean()
        print(f"  catalogue fluxes known for {100 * known:.1f}% of galaxies")
        if info.has_flux_table:
            usable = np.zeros(5)
            for s in range(0, info.n, READ_ROWS):
                usable += np.isfinite(f["flux_table"][s : s + READ_ROWS, :, 0]).sum(axis=0)
            frac = " ".join(
                f"{b} {100 * u / info.n:.1f}%" for b, u in zip(BANDS, usable, strict=True)
            )
            kind = str(info.flux_table_source)
            if info.flux_table_fit_from:
                kind += f", fitted to '{info.flux_table_fit_from}'"
            print(f"  flux table: present ({kind}); usable band rows: {frac}")
        else:
            print(
                "  flux table: absent (convert with --spectra, or add one from templates: "
                "`python -m study.data flux-table FILE --from flux|phot`)"
            )
        if info.has_phot:
            phot = f["phot"][:]
            measured = np.isfinite(phot).all(axis=1).mean()
            print(
                f"  measured photometry (phot, phot_err): present, finite for "
                f"{100 * measured:.1f}% of galaxies; {f['phot'].attrs.get('method', '')}"
            )
        else:
            print(
                "  measured photometry (phot, phot_err): absent "
                "(add it with `python -m study.data photometry FILE`)"
            )
        if info.has_masks:
            area = np.unpackbits(f["source_mask"][:PIXEL_SAMPLE], axis=-1).sum(axis=(1, 2))
            print(
                f"  source masks (source_mask): present; central segment median "
                f"{np.median(area):.0f} px, empty for {100 * np.mean(area == 0):.1f}% "
                f"(first {min(info.n, PIXEL_SAMPLE)} galaxies)"
            )
        else:
            print(
                "  source masks (source_mask): absent (add them with `python -m study.data "
                "masks FILE`; needed by augment.background=segmentation)"
            )
    if info.truth_fields:
        print("  truth: " + ", ".join(info.truth_fields))
    print(f"  content_hash {info.content_hash}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "convert", help="convert a public layout (dey, pasquet, hayat) to photoz-study/1"
    )
    p.add_argument(
        "input", type=Path, help="the input file (sdss.npz, Pasquet's example, Hayat's HDF5)"
    )
    p.add_argument("--format", required=True, choices=("dey", "pasquet", "hayat"))
    p.add_argument("--out", required=True, type=Path, help="the photoz-study/1 file to write")
    p.add_argument(
        "--spectra", type=Path, help="HDF5 with specObjID, wave (A), flux: builds the flux table"
    )
    p.add_argument(
        "--flux-table",
        choices=("spectra", "templates"),
        help="build the flux table from --spectra, or from kcorrect templates fitted to the "
        "catalogue fluxes (else the measured phot); default: spectra when --spectra is given",
    )
    p.add_argument("--data-seed", type=int, default=0, help="seed of the train/val/test split")
    p.add_argument(
        "--allow-pickle", action="store_true", help="read pickled labels (dey); trusted files only"
    )
    p.add_argument(
        "--dtype", default="float32", choices=("float32", "float16"), help="stored image dtype"
    )
    p.add_argument("--chunk", type=int, default=1024, help="galaxies per read (bounds memory)")
    p.add_argument(
        "--no-masks",
        action="store_true",
        help="leave out source_mask (its segmentation runs at ~25 galaxies/s per core; add it "
        "later with `python -m study.data masks`)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("inspect", help="validate a file and print a summary")
    p.add_argument("input", type=Path)
    p.add_argument("--no-hash", action="store_true", help="skip re-hashing the content")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("split", help="write a copy with the split redrawn from another data seed")
    p.add_argument("input", type=Path)
    p.add_argument("--data-seed", type=int, required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.set_defaults(func=cmd_split)

    from study.data.aperture import add_photometry_parser
    from study.data.masks import add_masks_parser
    from study.data.templates import add_flux_table_parser
    from study.universe.build import add_universe_parser
    from study.universe.render import universe_gain

    add_universe_parser(sub)
    add_photometry_parser(sub, universe_gain)
    add_flux_table_parser(sub)
    add_masks_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no output was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
