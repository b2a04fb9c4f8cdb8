"""``07_learn_edge_weights.py``: learn RAG edge weights with a stateless actor-critic.

Reads the run's RAG from MongoDB (nodes of ``02``, edges of ``03`` with their ``merge_score``),
pools per-fragment features from the volumes, trains the actor-critic of
:mod:`marlseg.edge_rl` against the priors of ``edge_rl.priors`` (no ground truth is read), and
writes the learned weight of every edge as the edge attribute ``edge_rl.weight_attr``
(``rl_weight``).

Convention: like ``merge_score``, **low = merge**: a weight is the probability that the edge
is a boundary. ``04_find_segments.py`` with ``segments.edge_score: rl_weight`` partitions it
with the partitioner it was rewarded for (``edge_rl.partitioner``, ``segments.method: null``;
:mod:`marlseg.segment_methods`): at ``t = edge_rl.partition_threshold`` its LUT is the very
partition the policy's reward was computed on.

Outputs under ``run.dir/edge_rl/``: ``model.pt`` (the best actor and critic, by the reward of
their deterministic weights), ``history.json``, ``rewards.png`` (reward curves, losses,
temperature) and ``summary.json``. Re-running with the same ``edge_rl`` settings reuses
``model.pt`` (only predicting and writing the weights again); ``--restart`` trains afresh.
With ``edge_rl.model`` set, nothing is trained: that model (trained by 07 on another RAG) is
applied to this RAG's edges. Features are standardised per RAG (no labels needed), so a model
carries over to a volume of other contrast.

Memory: the graph, its features and the networks are held in memory (tens of bytes per node
and edge plus the GNN activations: fine to ~10^6 edges on one machine; set
``edge_rl.crop_nodes`` to train on crops). Features are pooled by streaming z-slabs of
``edge_rl.slab_sections`` sections (the full y-x extent) through the fragments, raw and
boundary volumes, so one slab is in memory at a time, not the volume.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from marlseg.config import Config, DatasetRef
from marlseg.errors import ConfigError, MarlsegError
from marlseg.stage import Stage
from marlseg.volumes import dataset_exists, open_volume


def boundary_source(config: Config) -> tuple[DatasetRef, str, bool]:
    """Where the boundary evidence comes from: ``(dataset, config field, is_affinities)``:
    ``fragments.boundary`` if set, else the fragments' affinities."""
    if config.fragments.boundary is not None:
        return config.fragments.boundary, "fragments.boundary", False
    field = "fragments.affs" if config.fragments.affs else "predict.affs"
    return config.fragment_affs, field, True


def _needs_boundary(config: Config) -> bool:
    e = config.edge_rl
    membrane = e.priors.membrane
    return (
        "boundary" in e.node_features
        or "contacts" in e.edge_features
        or (membrane is not None and membrane.evidence == "contacts")
    )


def _needed_edge_attrs(config: Config) -> list[str]:
    e = config.edge_rl
    attrs = []
    if "merge_score" in e.edge_features:
        attrs.append("merge_score")
    if e.priors.membrane is not None and e.priors.membrane.evidence == "merge_score":
        attrs.append("merge_score")
    if e.init_from is not None:
        attrs.append(e.init_from)
    return sorted(set(attrs))


class EdgeRlStage(Stage):
    """Learn RAG edge weights with a stateless actor-critic from high-level priors."""

    name = "edge_rl"
    description = "Learn RAG edge weights (rl_weight) with a stateless actor-critic from priors."

    @property
    def out_dir(self) -> Path:
        return self.run_dir / "edge_rl"

    # ------------------------------------------------------------------ check
    def check(self) -> None:
        super().check()
        from marlseg.rag import check_graph_db

        cfg = self.config
        e = cfg.edge_rl
        frag_ref = cfg.fragments_ds
        if not dataset_exists(frag_ref):
            raise ConfigError(
                "fragments.fragments",
                f"no fragments at {frag_ref}: run 02_extract_fragments.py first",
            )
        frags = open_volume(frag_ref, field="fragments.fragments")
        if frags.channel_dims:
            raise ConfigError("fragments.fragments", "fragments must have no channel axis")
        vs = list(frags.voxel_size)
        if "raw" in e.node_features:
            if cfg.raw is None:
                raise ConfigError(
                    "raw", "edge_rl.node_features has 'raw' but no raw volume is configured"
                )
            raw = open_volume(cfg.raw, field="raw")
            if list(raw.voxel_size) != vs:
                raise ConfigError(
                    "raw",
                    f"voxel size {list(raw.voxel_size)} differs from the fragments' {vs}; "
                    "drop 'raw' from edge_rl.node_features",
                )
        if _needs_boundary(cfg):
            ref, field, _ = boundary_source(cfg)
            if not dataset_exists(ref):
                raise ConfigError(
                    field,
                    f"no boundary/affinities at {ref} (needed by edge_rl for 'boundary' node "
                    "features, 'contacts' edge features or contact evidence)",
                )
            b = open_volume(ref, field=field)
            if list(b.voxel_size) != vs:
                raise ConfigError(
                    field, f"voxel size {list(b.voxel_size)} differs from the fragments' {vs}"
                )
        if e.model is not None and not Path(e.model).is_file():
            raise ConfigError("edge_rl.model", f"no model at {e.model}")
        if e.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("edge_rl.device", "cuda requested but no GPU is available")
        check_graph_db(cfg)

    # ------------------------------------------------------------------ run
    def run(self, restart: bool = False) -> dict[str, Any]:
        import torch

        from marlseg.edge_rl import EdgeRlTrainer, plot_history, priors_from_config
        from marlseg.rag import graph_service, open_rag

        cfg = self.config
        e = cfg.edge_rl
        t0 = time.perf_counter()
        torch.set_num_threads(max(1, min(torch.get_num_threads(), cfg.workers.cpus)))
        device = e.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model_path = self.out_dir / "model.pt"
        settings = e.model_dump(mode="json")

        with graph_service(cfg) as uri:
            rag = open_rag(cfg, uri)
            try:
                graph, node_ids, u_ids, v_ids = self._load_graph(rag)
                t_load = time.perf_counter() - t0
                priors = priors_from_config(e.priors)
                trainer = EdgeRlTrainer(graph, priors, e, device=device)
                reused = False
                if e.model is not None:
                    _apply(trainer, e.model)
                    reused = True
                    print(f"edge_rl: applying {e.model} (trained on another RAG)")
                elif model_path.exists() and not restart:
                    saved = torch.load(model_path, map_location="cpu", weights_only=False)
                    if saved.get("settings") != settings:
                        raise ConfigError(
                            "edge_rl",
                            f"{model_path} was trained with other edge_rl settings: rerun with "
                            "--restart to train afresh",
                        )
                    trainer.load(model_path)
                    reused = True
                    print(f"edge_rl: reusing {model_path} (--restart trains afresh)")
                else:
                    print(
                        f"edge_rl: {graph.n_nodes} fragments, {graph.n_edges} edges, "
                        f"{e.iterations} iterations on {device}",
                        flush=True,
                    )
                    trainer.train(callback=_progress(e.iterations))
                    self.out_dir.mkdir(parents=True, exist_ok=True)
                    trainer.save(model_path)
                    (self.out_dir / "history.json").write_text(
                        json.dumps({"train": trainer.history.train, "evals": trainer.history.evals})
                    )
                    plot_history(trainer.history, self.out_dir / "rewards.png", title=cfg.db.name)
                weights = trainer.predict()
                final = trainer.eval_env.step(weights, diagnostics=True)
                matched = rag.write_edge_attrs(u_ids, v_ids, e.weight_attr, weights)
            finally:
                rag.close()
        summary = {
            "fragments": int(graph.n_nodes),
            "edges": int(graph.n_edges),
            "edges_written": int(matched),
            "weight_attr": e.weight_attr,
            "reused_model": reused,
            "best_reward": float(trainer.best_reward),
            "best_iteration": int(trainer.best_iteration),
            "final_reward": final.reward,
            "final_objects": len(final.object_rewards),
            "prior_means": final.prior_means,
            "weights_mean": float(weights.mean()) if len(weights) else None,
            "weights_below_0.5": float((weights < 0.5).mean()) if len(weights) else None,
            "load_s": round(t_load, 2),
            "wall_s": round(time.perf_counter() - t0, 2),
            "device": device,
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print(
            f"edge_rl: wrote {e.weight_attr} to {matched} edges (low = merge); reward of the "
            f"learned weights {final.reward:.4f} ({len(final.object_rewards)} objects); "
            f"{summary['wall_s']:.1f} s; curves in {self.out_dir / 'rewards.png'}",
            flush=True,
        )
        return summary

    # ------------------------------------------------------------------ inputs
    def _load_graph(self, rag: Any):
        """RAG + pooled features -> (RagGraph, node ids, edge u ids, edge v ids)."""
        from marlseg.fragment_features import pool_fragment_features, shape_features
        from marlseg.priors import RagGraph

        cfg = self.config
        e = cfg.edge_rl
        nodes = rag.read_nodes_in_roi(None)
        node_ids = np.asarray(nodes["id"], dtype=np.uint64)
        if node_ids.size == 0:
            raise ConfigError(
                "db", f"the RAG in {cfg.db.name!r} has no nodes: run 02_extract_fragments.py first"
            )
        order = np.argsort(node_ids)
        node_ids = node_ids[order]
        centers = np.stack([nodes[f"center_{a}"] for a in "zyx"], axis=1)[order]
        sizes = np.asarray(nodes.get("size", np.ones(node_ids.size)), dtype=np.float64)[order]

        attrs = _needed_edge_attrs(cfg)
        us, vs_, cols = [], [], {a: [] for a in attrs}
        for batch in rag.iter_edges(attrs=attrs):
            us.append(batch["u"])
            vs_.append(batch["v"])
            for a in attrs:
                cols[a].append(np.asarray(batch[a], dtype=np.float64))
        u_ids = np.concatenate(us) if us else np.zeros(0, np.uint64)
        v_ids = np.concatenate(vs_) if vs_ else np.zeros(0, np.uint64)
        edge_attrs = {a: np.concatenate(c) if c else np.zeros(0) for a, c in cols.items()}
        if u_ids.size == 0:
            raise ConfigError(
                "db", f"the RAG in {cfg.db.name!r} has no edges: run 03_agglomerate.py first"
            )
        iu, iv = np.searchsorted(node_ids, u_ids), np.searchsorted(node_ids, v_ids)
        iu, iv = np.minimum(iu, node_ids.size - 1), np.minimum(iv, node_ids.size - 1)
        known = (node_ids[iu] == u_ids) & (node_ids[iv] == v_ids)
        if not known.all():
            raise MarlsegError(
                "db",
                f"the RAG {cfg.db.name!r} is inconsistent: {int((~known).sum())} edges name "
                "fragments without a node; rerun 02 and 03 with --restart",
            )
        edges = np.stack([iu, iv], axis=1)
        for a, values in edge_attrs.items():
            if np.isnan(values).all():
                field = "edge_rl.init_from" if a == e.init_from else "edge_rl"
                raise ConfigError(
                    field, f"no edge has the attribute {a!r}: run the stage that writes it (03)"
                )

        frags = open_volume(cfg.fragments_ds, field="fragments.fragments")
        raw = open_volume(cfg.raw, field="raw") if "raw" in e.node_features else None
        boundary, from_affs = None, False
        if _needs_boundary(cfg):
            ref, field, from_affs = boundary_source(cfg)
            boundary = open_volume(ref, field=field)
        stats = pool_fragment_features(
            frags, node_ids, edges, raw, boundary, from_affs, e.slab_sections
        )
        found = stats.counts > 0
        sizes = np.where(found, stats.counts, sizes)
        centers = np.where(found[:, None], stats.centers, centers)
        graph = RagGraph(
            node_ids=node_ids,
            edges=edges,
            sizes=sizes,
            centers=centers,
            voxel_size=tuple(float(v) for v in frags.voxel_size),
            at_border=stats.at_border,
        )
        # fragments the volume lacks (none, normally): balls of their stored size
        graph.moments = np.where(found[:, None], stats.moments, graph.ball_moments())

        feats = []
        if "raw" in e.node_features:
            feats += [stats.features["raw_mean"], stats.features["raw_std"]]
        if "boundary" in e.node_features:
            feats += [stats.features["boundary_mean"], stats.features["boundary_std"]]
        if "shape" in e.node_features:
            feats.append(shape_features(graph))
        if "position" in e.node_features:
            feats.append(centers)
        graph.node_features = np.column_stack(feats).astype(np.float64)

        contact_b = np.nan_to_num(stats.contact_boundary, nan=0.5)
        efeats = []
        if "merge_score" in e.edge_features:
            efeats.append(np.nan_to_num(edge_attrs["merge_score"], nan=0.5))
        if "contacts" in e.edge_features:
            efeats += [np.log1p(stats.contact_area), contact_b]
        graph.edge_features = np.column_stack(efeats) if efeats else None
        membrane = e.priors.membrane
        if membrane is not None:
            ev = edge_attrs["merge_score"] if membrane.evidence == "merge_score" else contact_b
            graph.evidence = np.clip(np.nan_to_num(ev, nan=0.5), 0.0, 1.0)
        if e.init_from is not None:
            graph.base_weights = np.clip(np.nan_to_num(edge_attrs[e.init_from], nan=0.5), 0, 1)
        return graph, node_ids, u_ids, v_ids


def _apply(trainer: Any, path: Path) -> None:
    """Load a model trained elsewhere into ``trainer`` (same features and networks)."""
    try:
        trainer.load(path)
    except (RuntimeError, KeyError) as err:  # a state dict of other shapes
        first = str(err).strip().splitlines()[0]
        raise ConfigError(
            "edge_rl.model",
            f"{path} does not fit these edge_rl settings (features, hidden, layers, "
            f"subgraph_sizes must match its training): {first}",
        ) from None


def _progress(total: int):
    """A callback printing one line per tenth of the iterations."""
    step = max(1, total // 10)
    t0 = time.perf_counter()

    def cb(trainer: Any) -> None:
        it = trainer.iteration
        if it % step and it != total:
            return
        tr = trainer.history.train
        ev = trainer.history.evals
        recent = np.mean(tr["reward"][-step:]) if tr.get("reward") else float("nan")
        last = ev["reward"][-1] if ev.get("reward") else float("nan")
        print(
            f"  iteration {it:>6}/{total}: sampled reward {recent:.4f}, mean-policy reward "
            f"{last:.4f}, best {trainer.best_reward:.4f}, {time.perf_counter() - t0:.0f} s",
            flush=True,
        )

    return cb
