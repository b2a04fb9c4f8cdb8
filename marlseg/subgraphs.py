"""Fixed-size, connected, overlapping sub-graphs that cover a graph (the critic's unit).

The stateless actor-critic scores a whole partition, but its critic cannot: a graph has any
number of edges and a Q-value of the whole graph gives one number for thousands of actions.
Instead the critic predicts one Q per *sub-graph* of exactly ``k`` edges, with one small
network per ``k``; the reward of a sub-graph is the mean of its edges' rewards. For that the
sub-graphs must be (Algorithm 1 of Hilt et al., "Stateless actor-critic for instance
segmentation with high-level priors"):

- **exactly k edges**, so a fixed-input network can read them;
- **connected**, so a sub-graph is a local neighbourhood whose reward its edges explain;
- **dense**, so it contains the cycles that make a partition consistent;
- **covering** every edge (every action gets a gradient), and **overlapping** where coverage
  needs it.

Our growth: seed with a random edge nobody covers yet; repeatedly add, in this order, an edge
that closes a cycle among the nodes already taken (density), an uncovered edge to a new node,
then an already covered edge to a new node (overlap); within a class the oldest frontier edge
goes first, so sub-graphs grow as compact balls. Every sub-graph covers at least its seed, so
the loop ends after at most ``E`` sub-graphs.

A connected component with fewer than ``k`` edges cannot hold a connected sub-graph of ``k``
distinct edges; it becomes one sub-graph that lists its edges cyclically until there are ``k``
slots (still connected and exactly ``k`` long; a real RAG has such islands, e.g. a fragment
pair alone at the volume border).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["extract_subgraphs", "subgraph_sets", "edge_components"]


def edge_components(n_nodes: int, edges: np.ndarray) -> tuple[int, np.ndarray]:
    """Connected components of the graph: ``(count, label per node)``."""
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    a = coo_matrix(
        (np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(n_nodes, n_nodes)
    )
    return connected_components(a, directed=False)


def _incidence(n_nodes: int, edges: np.ndarray) -> list[list[tuple[int, int]]]:
    inc: list[list[tuple[int, int]]] = [[] for _ in range(n_nodes)]
    for e, (u, v) in enumerate(edges.tolist()):
        inc[u].append((v, e))
        inc[v].append((u, e))
    return inc


def extract_subgraphs(
    n_nodes: int, edges: np.ndarray, k: int, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """Sub-graphs of exactly ``k`` edges covering every edge of ``edges`` (``(E, 2)`` node
    indices in ``[0, n_nodes)``). Returns ``(S, k)`` edge indices, each row in growth order
    (a stable order the critic's per-size network reads). Empty ``(0, k)`` if no edges."""
    if k < 1:
        raise ValueError(f"sub-graph size must be >= 1, got {k}")
    rng = np.random.default_rng(rng)
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    n_edges = len(edges)
    if n_edges == 0:
        return np.zeros((0, k), dtype=np.int64)
    inc = _incidence(n_nodes, edges)
    _, comp = edge_components(n_nodes, edges)
    edge_comp = comp[edges[:, 0]]
    covered = np.zeros(n_edges, dtype=bool)
    out: list[list[int]] = []

    # components too small for k distinct edges: one cyclically padded sub-graph each
    order = np.argsort(edge_comp, kind="stable")
    bounds = np.flatnonzero(np.diff(edge_comp[order])) + 1
    for members in np.split(order, bounds):
        if len(members) <= k:
            reps = -(-k // len(members))
            out.append(np.tile(members, reps)[:k].tolist())
            covered[members] = True

    while not covered.all():
        uncovered = np.flatnonzero(~covered)
        seed = int(uncovered[rng.integers(len(uncovered))])
        out.append(_grow(seed, k, edges, inc, covered))
        covered[out[-1]] = True
    return np.asarray(out, dtype=np.int64).reshape(-1, k)


def _grow(
    seed: int, k: int, edges: np.ndarray, inc: list[list[tuple[int, int]]], covered: np.ndarray
) -> list[int]:
    taken: list[int] = [seed]
    in_sg = {seed}
    nodes: set[int] = set()
    # ordered sets (dicts) so the oldest frontier edge goes first: compact, ball-like growth
    closing: dict[int, None] = {}
    open_new: dict[int, None] = {}
    open_old: dict[int, None] = {}

    def add_node(w: int) -> None:
        nodes.add(w)
        for x, e in inc[w]:
            if e in in_sg:
                continue
            if x in nodes:
                open_new.pop(e, None)
                open_old.pop(e, None)
                closing[e] = None
            elif e not in open_new and e not in open_old:
                (open_old if covered[e] else open_new)[e] = None

    u, v = edges[seed]
    add_node(int(u))
    add_node(int(v))
    while len(taken) < k:
        for frontier in (closing, open_new, open_old):
            if frontier:
                e = next(iter(frontier))
                del frontier[e]
                break
        else:  # cannot happen: the component has more than k edges
            raise RuntimeError("sub-graph growth ran out of edges")
        taken.append(e)
        in_sg.add(e)
        a, b = edges[e]
        for w in (int(a), int(b)):
            if w not in nodes:
                add_node(w)
    return taken


def subgraph_sets(
    n_nodes: int,
    edges: np.ndarray,
    sizes: Sequence[int],
    rng: np.random.Generator | int | None = None,
) -> dict[int, np.ndarray]:
    """:func:`extract_subgraphs` for each size: ``{k: (S_k, k) edge indices}``."""
    rng = np.random.default_rng(rng)
    return {int(k): extract_subgraphs(n_nodes, edges, int(k), rng) for k in sizes}
