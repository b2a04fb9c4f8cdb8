"""Augmentations for EM training batches, as one chain built from a few options.

Geometry (elastic deformation with in-plane rotation, mirror, transpose) moves every array of
the batch together, so raw, labels and masks stay aligned; labels are resampled by nearest
neighbour (their spec says not interpolatable). Intensity changes (scale and shift, noise,
missing and low-contrast sections) touch raw only, and expect raw in ``[0, 1]``, i.e. after
:func:`~marlseg.gp_pipelines.normalize.unit_range` and before
:func:`~marlseg.gp_pipelines.normalize.signed_range`.

Anisotropic data (ssTEM: z voxels at least twice the in-plane size) gets the treatment the
lsd/CREMI experiments use: deformation and rotation in-plane only, transposes only between
axes of equal voxel size, intensity augmented per section, and section defects — slipped or
shifted sections (elastic misalignment, applied to labels too, since they are misaligned in
the same way in real data) and missing or low-contrast sections (raw only: the network must
bridge them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import gunpowder as gp


@dataclass(frozen=True)
class AugmentOptions:
    """What :func:`augmentations` builds. Lengths in nm, so one set of options suits any
    voxel size."""

    elastic: bool = True
    """Elastic deformation + random in-plane rotation."""
    control_point_spacing: float = 400.0
    """Distance between elastic control points, nm."""
    jitter_sigma: float = 20.0
    """Standard deviation of the control point displacements, nm (0 along z for ssTEM)."""
    rotate: bool = True
    """Random rotation in the y-x plane, in [0, pi/2)."""
    mirror: bool = True
    transpose: bool = True
    """Random permutation of the axes that share a voxel size."""
    intensity: bool = True
    """Random contrast scale and brightness shift (per section for ssTEM)."""
    scale: tuple[float, float] = (0.9, 1.1)
    shift: tuple[float, float] = (-0.1, 0.1)
    noise: bool = True
    """Gaussian noise on raw with probability ``noise_p``."""
    noise_var: float = 0.001
    noise_p: float = 0.5
    sections: bool | None = None
    """Section defects (ssTEM). ``None``: on for anisotropic voxel sizes, off otherwise."""
    prob_missing: float = 0.03
    """Per-section probability of a blank section (raw set to 0)."""
    prob_low_contrast: float = 0.01
    prob_slip: float = 0.03
    """Per-section probability of one section shifted in-plane."""
    prob_shift: float = 0.03
    """Per-section probability of that section and all after it shifted in-plane."""
    max_misalign: float = 40.0
    """Largest in-plane misalignment, nm."""


NO_AUGMENT = AugmentOptions(
    elastic=False, mirror=False, transpose=False, intensity=False, noise=False, sections=False
)


def options(augment: bool | AugmentOptions | dict | None) -> AugmentOptions:
    """``True``/``None`` -> defaults, ``False`` -> none, a dict -> defaults with overrides."""
    if isinstance(augment, AugmentOptions):
        return augment
    if augment is None or augment is True:
        return AugmentOptions()
    if augment is False:
        return NO_AUGMENT
    if isinstance(augment, dict):
        known = {f.name for f in fields(AugmentOptions)}
        unknown = sorted(set(augment) - known)
        if unknown:
            raise ValueError(f"unknown augmentation option(s) {unknown}; known: {sorted(known)}")
        return replace(AugmentOptions(), **augment)
    raise ValueError(f"augment must be true, false or a dict of options, not {augment!r}")


def is_anisotropic(voxel_size: gp.Coordinate) -> bool:
    """ssTEM-like: z at least twice as coarse as the finest in-plane axis."""
    return len(voxel_size) == 3 and voxel_size[0] >= 2 * min(voxel_size[1:])


def _voxels(nm: float, voxel_size: gp.Coordinate) -> list[float]:
    return [nm / v for v in voxel_size]


def augmentations(
    raw: gp.ArrayKey, voxel_size: gp.Coordinate, augment: bool | AugmentOptions | dict = True
) -> list[gp.BatchFilter]:
    """The augmentation chain for batches whose intensities are ``raw`` (in ``[0, 1]``).

    Returns the nodes in order (possibly none); append them with ``+``.
    """
    opt = options(augment)
    voxel_size = gp.Coordinate(voxel_size)
    aniso = is_anisotropic(voxel_size)
    sections = aniso if opt.sections is None else opt.sections
    nodes: list[gp.BatchFilter] = []

    if opt.elastic or (sections and (opt.prob_slip or opt.prob_shift)):
        spacing = [max(1, round(s)) for s in _voxels(opt.control_point_spacing, voxel_size)]
        jitter = _voxels(opt.jitter_sigma, voxel_size) if opt.elastic else [0.0] * 3
        if aniso:
            spacing[0] = 1
            jitter[0] = 0.0  # sections are cut, not deformed, along z
        misalign = 0
        if sections:
            misalign = max(1, round(opt.max_misalign / min(voxel_size[1:])))
        nodes.append(
            gp.ElasticAugment(
                control_point_spacing=spacing,
                jitter_sigma=jitter,
                rotation_interval=(0.0, math.pi / 2.0 if opt.elastic and opt.rotate else 0.0),
                prob_slip=opt.prob_slip if sections else 0.0,
                prob_shift=opt.prob_shift if sections else 0.0,
                max_misalign=misalign,
                subsample=4 if opt.elastic else 1,
                spatial_dims=len(voxel_size),
            )
        )

    if opt.mirror or opt.transpose:
        dims = list(range(len(voxel_size)))
        transpose = [d for d in dims if voxel_size[d] == min(voxel_size)] if opt.transpose else []
        if len(transpose) < 2:
            transpose = []
        nodes.append(
            gp.SimpleAugment(
                mirror_only=dims if opt.mirror else [],
                transpose_only=transpose,
            )
        )

    if opt.intensity:
        nodes.append(
            gp.IntensityAugment(
                raw,
                scale_min=opt.scale[0],
                scale_max=opt.scale[1],
                shift_min=opt.shift[0],
                shift_max=opt.shift[1],
                slab=(1, -1, -1) if aniso else None,
            )
        )

    if opt.noise and opt.noise_var > 0:
        nodes.append(gp.NoiseAugment(raw, mode="gaussian", var=opt.noise_var, p=opt.noise_p))

    if sections and (opt.prob_missing or opt.prob_low_contrast):
        nodes.append(
            gp.DefectAugment(
                raw,
                prob_missing=opt.prob_missing,
                prob_low_contrast=opt.prob_low_contrast,
                contrast_scale=0.1,
                axis=0,
            )
        )
    return nodes


def chain(pipeline, nodes: list[gp.BatchFilter]):
    """``pipeline + n1 + n2 + ...`` (``pipeline`` itself if there are none)."""
    for node in nodes:
        pipeline = pipeline + node
    return pipeline


def mirror_transpose_only() -> AugmentOptions:
    """Geometry without deformation: handy for exact alignment checks."""
    return replace(NO_AUGMENT, mirror=True, transpose=True)


__all__ = [
    "AugmentOptions",
    "NO_AUGMENT",
    "augmentations",
    "chain",
    "is_anisotropic",
    "mirror_transpose_only",
    "options",
]
