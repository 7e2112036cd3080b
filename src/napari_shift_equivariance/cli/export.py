"""``nse export``: share a model as a bioimage.io model package."""

from __future__ import annotations

import argparse
import os

from ..errors import NSEError
from ._common import add_common, emit

FORMATS = ("bioimageio",)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="a bioimage.io model package (.zip, format 0.5)")
    p.add_argument("model", help="a model file or 'default'")
    p.add_argument("--format", choices=FORMATS, default="bioimageio",
                   help="package format (default bioimageio)")
    p.add_argument("--out", required=True, help="package file (.zip)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--name", help="model name in the package")
    p.add_argument("--description", help="one-paragraph description")
    p.add_argument("--author", action="append", dest="authors", metavar="NAME",
                   help="an author (repeat for several)")
    p.add_argument("--license", default="BSD-3-Clause", help="SPDX licence id")
    p.add_argument("--sample", help="test image (default: generated nuclei)")
    p.add_argument("--no-torchscript", action="store_true",
                   help="only pytorch_state_dict weights")
    p.add_argument("--test", action="store_true",
                   help="then test-run the package with bioimageio.core (offline)")
    add_common(p, json_flag=True)
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from ..export import check_package, export_bioimageio
    from ..io import read_image

    sample = None
    if args.sample is not None:
        import numpy as np

        sample = np.asarray(read_image(args.sample, lazy=False))
    kwargs = {"name": args.name, "description": args.description, "license": args.license,
              "sample": sample, "torchscript": not args.no_torchscript,
              "overwrite": args.overwrite}
    if args.authors:
        kwargs["authors"] = args.authors
    path = export_bioimageio(args.model, args.out, **kwargs)
    data = {"out": str(path), "format": args.format, "bytes": os.path.getsize(path)}
    text = f"wrote {path} (bioimage.io model package, format 0.5)"
    if args.test:
        status, failed = check_package(path)
        data.update({"test": status, "failed": failed})
        text += f"\nbioimageio.core test: {status}"
        if failed:
            text += "\n  " + "\n  ".join(failed)
        emit(args, data, text)
        if status != "passed":
            raise NSEError(f"{path} did not pass bioimageio.core's test ({status})")
        return 0
    emit(args, data, text)
    return 0
