"""Sections: one-voxel-thick slabs of a volume (xy or xz) to draw, where to cut them, and
reading one as a 2D image on the section's grid.

May import :mod:`marlseg.volumes` and :mod:`marlseg.segmentations`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array

from marlseg import volumes
from marlseg.segmentations import Labels


@dataclass
class Section:
    """A one-voxel-thick slab of the reference grid: an xy section (thin in z) or an xz
    section (thin in y)."""

    name: str
    plane: str
    roi: Roi
    voxel_size: Coordinate

    @property
    def thin_axis(self) -> int:
        return 0 if self.plane == "xy" else 1

    @property
    def image_axes(self) -> tuple[int, int]:
        return (1, 2) if self.plane == "xy" else (0, 2)

    @property
    def shape(self) -> tuple[int, int]:
        r, c = self.image_axes
        return (
            int(self.roi.shape[r] // self.voxel_size[r]),
            int(self.roi.shape[c] // self.voxel_size[c]),
        )

    @property
    def aspect(self) -> float:
        """Height / width of one pixel in the world (an xz section of ssTEM is flat)."""
        r, c = self.image_axes
        return self.voxel_size[r] / self.voxel_size[c]


def choose_sections(
    roi: Roi, voxel_size: Coordinate, num_z: int = 3, max_size: int = 1024
) -> list[Section]:
    """``num_z`` evenly spaced z sections and one xz section through the middle of ``roi``,
    each cropped to at most ``max_size`` voxels per side around the centre."""
    vs = Coordinate(voxel_size)
    shape = roi.shape / vs

    def crop(axis: int) -> tuple[int, int]:
        n = int(shape[axis])
        size = min(n, max_size)
        begin = (n - size) // 2
        return roi.begin[axis] + begin * vs[axis], size * vs[axis]

    (y0, ys), (x0, xs), (z0, zs) = crop(1), crop(2), crop(0)
    out = []
    nz = int(shape[0])
    picks = sorted({min(nz - 1, int(nz * (i + 1) / (num_z + 1))) for i in range(num_z)})
    for k in picks:
        z = roi.begin[0] + k * vs[0]
        out.append(Section(f"z{z // vs[0]:04d}", "xy", Roi((z, y0, x0), (vs[0], ys, xs)), vs))
    y = roi.begin[1] + (int(shape[1]) // 2) * vs[1]
    out.append(Section(f"xz_y{y // vs[1]:04d}", "xz", Roi((z0, y, x0), (zs, vs[1], xs)), vs))
    return out


def read_section(array: Array, section: Section, labels: Labels | None = None) -> np.ndarray:
    """The section as a 2D image (channels first if the array has channels), on the section's
    grid: arrays of another voxel size are sampled at the section's voxel centres."""
    data = labels.read(section.roi) if labels is not None else volumes.read(array, section.roi)
    nc = array.channel_dims
    avs = array.voxel_size
    if avs != section.voxel_size:
        begin = section.roi.snap_to_grid(avs, mode="grow").begin
        index = []
        for a in range(3):
            n = int(section.roi.shape[a] // section.voxel_size[a])
            centres = section.roi.begin[a] + (np.arange(n) + 0.5) * section.voxel_size[a]
            index.append(np.floor((centres - begin[a]) / avs[a]).astype(int))
        data = data[(slice(None),) * nc + np.ix_(*index)]
    return data.squeeze(axis=nc + section.thin_axis)
