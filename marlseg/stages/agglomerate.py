"""``03_agglomerate.py``: blockwise waterz agglomeration, a merge score for every RAG edge.

Per block, over its read ROI (write ROI + ``agglomerate.context``): the fragments and the
affinities are read, waterz agglomerates the fragments all the way with the configured merge
function (table: :data:`marlseg.watershed.MERGE_FUNCTIONS`), and every adjacency edge the block
owns is upserted as ``edges {u, v, merge_score, agglomerated: true}`` with ``u < v``.

``merge_score`` is the lowest threshold at which this block's agglomeration joins ``u`` and
``v`` (the running maximum of the merge history's scores up to their merge; see
:func:`marlseg.watershed.merge_scores`), so thresholding edges at ``t`` in ``04`` reproduces
waterz's segmentation at ``t``. Edges whose fragments never merged get 1.0.

Edge ownership: an edge ``(u, v)``, ``u < v``, is scored by exactly one block, the one whose
write ROI holds fragment ``u`` (fragments never cross a fragments-block face, and
``agglomerate.block_shape`` is a whole multiple of ``fragments.block_shape`` on the same grid,
so each fragment lies in one agglomeration block). Fragment ids grow with the block index, so
this is the block with the lower index of the two. ``v`` touches ``u``, hence lies within one
voxel of that write ROI: a context of at least one voxel per axis shows the block every edge
it owns. Scores near block faces depend on what the context shows, which is why blockwise
and single-block results differ slightly (see the README).
"""

from __future__ import annotations

import numpy as np
from funlib.geometry import Coordinate, Roi

from marlseg import watershed as W
from marlseg.affinities import affinity_source
from marlseg.config import Config
from marlseg.crashtest import maybe_die_for_test
from marlseg.errors import ConfigError
from marlseg.labels import unique
from marlseg.rag import RagStage
from marlseg.stages.common import open_fragments, upstream_fingerprint
from marlseg.volumes import check_multiple, read


def agglomerate_block_shape(config: Config) -> list[int]:
    return list(config.agglomerate.block_shape or config.fragments.block_shape)


class AgglomerateStage(RagStage):
    """Blockwise waterz agglomeration: merge scores on RAG edges."""

    name = "agglomerate"
    description = "Blockwise waterz agglomeration: a merge score for every RAG edge."
    read_write_conflict = False  # every edge has one owner block; upserts by (u, v)

    @property
    def function(self) -> str:
        return W.scoring_function(self.config.agglomerate.merge_function)

    def check(self) -> None:
        super().check()
        cfg = self.config
        try:
            function = self.function
        except KeyError:
            raise ConfigError(
                "agglomerate.merge_function",
                f"unknown merge function {cfg.agglomerate.merge_function!r}; known: mean, "
                "hist_quant_N (N = 10, 15, ..., 95), hist_quant_N_initmax, max, min, or a "
                "waterz scoring-function type",
            ) from None
        if not W.is_prebuilt(function):
            try:
                import witty  # noqa: F401
            except ImportError:
                raise ConfigError(
                    "agglomerate.merge_function",
                    f"{cfg.agglomerate.merge_function!r} is not compiled into waterz and "
                    "compiling it needs witty, a C++ compiler and boost; use mean or hist_quant_N",
                ) from None
        src = affinity_source(cfg)
        frags = open_fragments(cfg)
        vs = frags.voxel_size
        if frags.roi != src.roi or frags.voxel_size != src.voxel_size:
            raise ConfigError(
                "fragments.fragments",
                f"{cfg.fragments_ds} covers {frags.roi} at {list(vs)} nm but the affinities "
                f"{src.ref} cover {src.roi} at {list(src.voxel_size)} nm",
            )
        block = agglomerate_block_shape(cfg)
        field = "agglomerate.block_shape"
        check_multiple(field, block, vs)
        check_multiple("agglomerate.context", cfg.agglomerate.context, vs)
        if any(b % f for b, f in zip(block, cfg.fragments.block_shape)):
            raise ConfigError(
                field,
                f"{block} nm is not a whole multiple of fragments.block_shape "
                f"{cfg.fragments.block_shape} (each fragment must lie in one block)",
            )
        if any(c < v for c, v in zip(cfg.agglomerate.context, vs)):
            raise ConfigError(
                "agglomerate.context",
                f"{cfg.agglomerate.context} nm: at least one voxel ({list(vs)} nm) per axis is "
                "needed to see the edges leaving a block",
            )

    def voxel_size(self) -> Coordinate:
        return open_fragments(self.config).voxel_size

    def geometry(self) -> tuple[Roi, Coordinate, Coordinate]:
        frags = open_fragments(self.config)
        return (
            frags.roi,
            Coordinate(agglomerate_block_shape(self.config)),
            Coordinate(self.config.agglomerate.context),
        )

    def fingerprint(self) -> dict:
        return {
            "fragments": upstream_fingerprint(self.config),
            "agglomerate": self.config.agglomerate.model_dump(mode="json", exclude={"workers"}),
            "block_shape": agglomerate_block_shape(self.config),
            "scoring_function": self.function,
        }

    def prepare(self) -> None:
        rag = self.open_rag()
        try:
            if rag.count_nodes() == 0:
                raise ConfigError(
                    "db.name", f"the RAG {self.config.db.name!r} has no nodes: run 02 first"
                )
        finally:
            rag.close()

    # --- worker side -----------------------------------------------------
    def init_worker(self) -> None:
        super().init_worker()
        self.source = affinity_source(self.config)
        self.fragments = open_fragments(self.config)

    def process_block(self, block) -> None:
        vs = self.fragments.voxel_size
        frags = read(self.fragments, block.read_roi, fill_value=0)
        begin = (block.write_roi.begin - block.read_roi.begin) / vs
        shape = block.write_roi.shape / vs
        inner = frags[tuple(slice(int(b), int(b) + int(s)) for b, s in zip(begin, shape))]
        owned = unique(inner)
        owned = owned[owned != 0]
        if owned.size == 0:
            return
        affs = self.source.read(block.read_roi)
        u, v, score = W.agglomerate_edges(affs, frags, self.function)
        keep = np.isin(u, owned)
        u, v, score = u[keep], v[keep], score[keep]
        if u.size == 0:
            return
        self.rag.write_edges(u, v, merge_score=score, agglomerated=np.ones(u.size, dtype=bool))
        maybe_die_for_test(self.name)  # edges written, block not yet marked done
