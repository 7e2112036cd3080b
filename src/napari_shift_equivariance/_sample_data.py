"""Sample data for napari: synthetic images with their instance labels (nothing is downloaded).

Each function returns an image layer and a labels layer as napari ``LayerData`` tuples.
"""

from __future__ import annotations

from typing import Any

from . import data

LayerData = tuple[Any, dict, str]


def _pair(image, labels, name: str, **kwargs: Any) -> list[LayerData]:
    return [
        (image, {"name": name, **kwargs}, "image"),
        (labels, {"name": f"{name} labels", **kwargs}, "labels"),
    ]


def disks_on_grid() -> list[LayerData]:
    """Identical disks every 16 px (= n·f^l for f=2, l<=4): the net cannot tell them apart."""
    image, labels = data.periodic_disks(
        (256, 256), radius=5, spacing=16, noise=0.01, elastic=True, seed=0
    )
    return _pair(image, labels, "disks spacing 16")


def disks_coprime() -> list[LayerData]:
    """Identical disks every 15 px (co-prime with f^l = 8 or 16): told apart up to f^(d·l)."""
    image, labels = data.periodic_disks(
        (256, 256), radius=5, spacing=15, noise=0.01, elastic=True, seed=0
    )
    return _pair(image, labels, "disks spacing 15")


def nuclei_2d() -> list[LayerData]:
    """Nuclei-like fluorescence, 512×512."""
    image, labels = data.nuclei((512, 512), seed=0)
    return _pair(image, labels, "nuclei 2D")


NUCLEI_3D_ANISOTROPY = 2.0


def nuclei_3d() -> list[LayerData]:
    """Nuclei-like 3D stack (z, y, x) = 48×192×192 with z steps twice the pixel size."""
    image, labels = data.nuclei((48, 192, 192), anisotropy=NUCLEI_3D_ANISOTROPY, seed=0)
    return _pair(image, labels, "nuclei 3D", scale=(NUCLEI_3D_ANISOTROPY, 1.0, 1.0))
