"""Slabs: computations over a whole image grid go slab by slab along the first array axis (z in 3D, y in 2D), so
their working memory stays a few megabytes beyond their result at any image size (a 512×512×400 CT included)."""

from __future__ import annotations

from math import prod

#: Voxels per slab.
SLAB_VOXELS = 1 << 21


def slabs(shape: tuple[int, ...], voxels: int | None = None) -> list[slice]:
    """The first axis of an array of spatial ``shape`` (numpy order) cut into slabs of about ``voxels`` voxels each
    (default :data:`SLAB_VOXELS`), at least one row."""
    rows = max(1, int((voxels or SLAB_VOXELS) // max(1, prod(shape[1:]))))
    return [slice(start, min(start + rows, shape[0])) for start in range(0, shape[0], rows)]
