"""What several stages share: fingerprints of their inputs, output checks, the fragments.

Stage-side code only (it knows configs, datasets and the stage base classes): how a dataset
reference is fingerprinted (:func:`ref_id`), what the fragments depend on
(:func:`fragments_fingerprint`, and :func:`upstream_fingerprint` for the stages after ``02``),
whether an output of an earlier run fits this one (:func:`check_existing_output`), the
fragments of ``02`` (:func:`open_fragments`) and the blockwise stage over them
(:class:`FragmentBlocksStage`, what ``05`` and ``06`` share).

May import: marlseg's library modules and the stage base classes; never another stage
module (the stages import this one, not each other).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from funlib.geometry import Coordinate, Roi

from marlseg.affinities import affinity_source
from marlseg.blockwise import BlockwiseStage
from marlseg.config import Config, DatasetRef, FragmentsConfig
from marlseg.errors import ConfigError
from marlseg.volumes import dataset_exists, open_volume


def ref_id(ref: DatasetRef | None) -> str | None:
    """A dataset reference as fingerprints record it: absolute, so the scheduler and its
    workers (whose config has absolute paths) agree, and so does a run from another cwd."""
    return None if ref is None else f"{Path(ref.path).absolute()}:{ref.dataset}"


def section_params(section: FragmentsConfig) -> dict:
    """A section's parameters without how its workers run (which changes no output)."""
    params = section.model_dump(mode="json", exclude={"workers"})
    for key in ("affs", "boundary", "fragments", "mask"):
        params[key] = ref_id(getattr(section, key))
    return params


def fragments_fingerprint(config: Config) -> dict:
    """Everything the fragments (and RAG nodes) depend on; downstream stages include it."""
    src = affinity_source(config)
    return {
        "input": ref_id(src.ref),
        "input_kind": "boundary" if src.is_boundary else "affs",
        "input_roi": [list(src.roi.offset), list(src.roi.shape)],
        "voxel_size": list(src.voxel_size),
        "fragments": section_params(config.fragments),
        "output": ref_id(config.fragments_ds),
        "db_name": config.db.name,
    }


def check_existing_output(ref: DatasetRef, field: str, roi: Roi, vs, dtype, chunk_nm) -> None:
    """An output from an earlier run must match this one (checked without writing)."""
    if not dataset_exists(ref):
        return
    arr = open_volume(ref, field=field)
    chunks = tuple(int(c) for c in Coordinate(chunk_nm) / Coordinate(vs))
    src = arr._source_data
    if (
        arr.roi != roi
        or arr.voxel_size != Coordinate(vs)
        or np.dtype(arr.dtype) != np.dtype(dtype)
        or tuple(getattr(src, "chunks", ()) or ()) != chunks
    ):
        raise ConfigError(
            f"{field}.dataset",
            f"{ref} exists with another ROI, voxel size, dtype or chunking "
            f"({arr.roi}, {arr.voxel_size}, {arr.dtype}, chunks {list(getattr(src, 'chunks', None) or [])}); "
            f"delete {Path(ref.path).absolute() / ref.dataset} and re-run with --restart, or "
            "use a fresh run.dir",
        )


GENERATION_ATTR = "marlseg_generation"
"""Attribute of the fragments dataset naming the fresh start that wrote it."""


def upstream_fingerprint(config: Config) -> dict:
    """What the stages after ``02`` record about the fragments: their parameters plus the
    generation of the fragments dataset, a random token renewed whenever ``02`` starts afresh
    (and clears the RAG). A re-run of ``02`` from scratch with unchanged parameters thus still
    invalidates the blocks done downstream (their edges were cleared with the nodes)."""
    arr = open_volume(config.fragments_ds, field="fragments.fragments")
    return {
        **fragments_fingerprint(config),
        "generation": arr._source_data.attrs.get(GENERATION_ATTR),
    }


def open_fragments(config: Config, mode: str = "r"):
    """The fragments of ``02`` (a one-line error if they are not there yet)."""
    ref = config.fragments_ds
    if not dataset_exists(ref):
        raise ConfigError(
            "fragments.fragments", f"no fragments at {ref}: run 02_extract_fragments.py first"
        )
    return open_volume(ref, mode=mode, field="fragments.fragments")


class FragmentBlocksStage(BlockwiseStage):
    """A stage over the fragments' ROI in blocks of ``<stage>.block_shape`` (default: the
    fragments' blocks), without context: what 05 extract and 06 evaluate share."""

    @property
    def block_shape(self) -> list[int]:
        own = getattr(self.config, self.name).block_shape
        return list(own or self.config.fragments.block_shape)

    def voxel_size(self) -> Coordinate:
        return open_fragments(self.config).voxel_size

    def geometry(self) -> tuple[Roi, Coordinate, Coordinate]:
        frags = open_fragments(self.config)
        return frags.roi, Coordinate(self.block_shape), Coordinate((0, 0, 0))
