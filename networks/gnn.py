"""GNN actor and critic of the stateless actor-critic on a region adjacency graph.

Message passing follows eq. 1 of Hilt et al.: ``f_i <- gamma(f_i, mean_j phi(f_i, f_j))``
over the neighbours ``j`` of node ``i`` (``gamma`` adds a residual so deeper stacks train).
It is written with torch's own ``index_add_``: torch-geometric's ``MessagePassing`` would do
the same mean aggregation but importing it costs ~9 s (it pulls in ``torch._dynamo``) in
every process that loads this module. Edges are read symmetrically,
``(f_u + f_v, |f_u - f_v|, edge features)``, so an edge's output does not depend on which end
is ``u``.

- :class:`GnnActor`: per edge a normal distribution (mean, std) of a logit; a sigmoid of a
  sample is the edge weight in ``[0, 1]`` (:class:`SigmoidNormal`).
- :class:`GnnCritic`: the same node GNN, then rounds of message passing whose messages carry
  the actions (eq. 3; whether an edge's objects end up merged and how large they get depends
  on the actions around it, several hops out), an edge embedding, then one MLP per
  sub-graph size reading the concatenated embeddings of a sub-graph's ``k`` edges (in the
  sub-graph's growth order) to one Q value per sub-graph, plus the mean of a per-edge value
  over the sub-graph (the reward is a mean of edge rewards: this shared term learns from
  every sub-graph at once, the per-size MLP learns what the mean misses). The per-edge value
  can also be fitted to the edge rewards themselves (an auxiliary loss of the trainer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MeanConv", "NodeGnn", "GnnActor", "GnnCritic", "SigmoidNormal", "mlp"]


def mlp(n_in: int, n_hidden: int, n_out: int, depth: int = 2, norm: bool = False) -> nn.Sequential:
    """``depth`` linear layers with leaky ReLUs between (and LayerNorm with ``norm``)."""
    layers: list[nn.Module] = []
    n = n_in
    for _ in range(depth - 1):
        layers.append(nn.Linear(n, n_hidden))
        if norm:
            layers.append(nn.LayerNorm(n_hidden))
        layers.append(nn.LeakyReLU(0.1))
        n = n_hidden
    layers.append(nn.Linear(n, n_out))
    return nn.Sequential(*layers)


def scatter_mean(values: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of ``values`` rows per ``index`` (0 where nothing arrives): ``values`` is
    ``(M, D)`` or ``(B, M, D)`` (a batch of action sets over the same graph)."""
    count = torch.zeros(n, dtype=values.dtype, device=values.device)
    count.index_add_(0, index, torch.ones_like(index, dtype=values.dtype))
    inv = 1.0 / count.clamp(min=1)[:, None]
    if values.dim() == 2:
        out = values.new_zeros((n, values.shape[-1]))
        return out.index_add_(0, index, values) * inv
    b, m, d = values.shape
    # one flat index_add over the batch (faster than index_add_ along a middle axis)
    flat = (index[None, :] + n * torch.arange(b, device=index.device)[:, None]).reshape(-1)
    out = values.new_zeros((b * n, d)).index_add_(0, flat, values.reshape(b * m, d))
    return out.reshape(b, n, d) * inv


class MeanConv(nn.Module):
    """``f_i + gamma([f_i, mean_j phi([f_i, f_j])])`` (eq. 1, residual)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.phi = mlp(2 * dim, hidden, dim)
        self.gamma = mlp(2 * dim, hidden, dim, norm=True)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        src, dst = edge_index
        msg = self.phi(torch.cat([x[dst], x[src]], dim=-1))
        m = scatter_mean(msg, dst, x.shape[0])
        return x + self.gamma(torch.cat([x, m], dim=-1))


def both_directions(edges: torch.Tensor) -> torch.Tensor:
    """(E, 2) undirected edges -> (2, 2E) directed ``edge_index`` for message passing."""
    return torch.cat([edges.t(), edges.flip(1).t()], dim=1)


class NodeGnn(nn.Module):
    """Node features -> embeddings after ``layers`` rounds of mean message passing."""

    def __init__(self, n_node_features: int, hidden: int, layers: int):
        super().__init__()
        self.embed = mlp(n_node_features, hidden, hidden, norm=True)
        self.convs = nn.ModuleList(MeanConv(hidden, hidden) for _ in range(layers))

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for conv in self.convs:
            h = conv(h, edge_index)
        return h


def _edge_input(h: torch.Tensor, edges: torch.Tensor, edge_features: torch.Tensor | None):
    hu, hv = h[edges[:, 0]], h[edges[:, 1]]
    parts = [hu + hv, (hu - hv).abs()]
    if edge_features is not None and edge_features.shape[-1]:
        parts.append(edge_features)
    return torch.cat(parts, dim=-1)


class SigmoidNormal(torch.distributions.TransformedDistribution):
    """``sigmoid(x)``, ``x ~ Normal(loc, scale)``: weights in ``(0, 1)`` with a density."""

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor):
        self.loc, self.scale = loc, scale
        super().__init__(
            torch.distributions.Normal(loc, scale), [torch.distributions.SigmoidTransform()]
        )

    def log_prob_logit(self, x: torch.Tensor) -> torch.Tensor:
        """Log density of ``sigmoid(x)`` from the logit ``x`` (stable where the weight
        saturates at 0 or 1, unlike inverting the sigmoid)."""
        base = -((x - self.loc) ** 2) / (2 * self.scale**2) - self.scale.log()
        base = base - 0.5 * math.log(2 * math.pi)
        return base - (F.logsigmoid(x) + F.logsigmoid(-x))

    def rsample_logit(self) -> torch.Tensor:
        return self.loc + self.scale * torch.randn_like(self.loc)


class GnnActor(nn.Module):
    """Edge weight policy: a :class:`SigmoidNormal` per edge.

    With ``base`` logits (e.g. of an existing edge score) the network learns a bounded
    correction to them: the policy starts from that score instead of from 0.5 everywhere.
    """

    def __init__(
        self,
        n_node_features: int,
        n_edge_features: int,
        hidden: int = 32,
        layers: int = 3,
        loc_bound: float = 6.0,
        scale_bounds: tuple[float, float] = (0.05, 2.0),
        init_scale: float = 1.0,
    ):
        super().__init__()
        lo, hi = scale_bounds
        if not lo < init_scale < hi:
            raise ValueError(f"init_scale {init_scale} must lie in {scale_bounds}")
        self.gnn = NodeGnn(n_node_features, hidden, layers)
        self.head = mlp(2 * hidden + n_edge_features, hidden, 2, depth=3, norm=True)
        # a linear path from the (standardised) edge inputs: its gradient is the part of the
        # critic's signal that differs between edges, so it learns even while a shared push
        # (merge more / split more) dominates the deep head's gradient
        self.skip = nn.Linear(2 * hidden + n_edge_features, 2)
        # start at the base (or 0.5) with the same spread on every edge
        for layer in (self.head[-1], self.skip):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        with torch.no_grad():
            self.head[-1].bias[1] = math.log((init_scale - lo) / (hi - init_scale))
        self.loc_bound = loc_bound
        self.scale_bounds = scale_bounds

    def forward(
        self,
        x: torch.Tensor,
        edges: torch.Tensor,
        edge_features: torch.Tensor | None = None,
        base: torch.Tensor | None = None,
    ) -> SigmoidNormal:
        h = self.gnn(x, both_directions(edges))
        inp = _edge_input(h, edges, edge_features)
        out = self.head(inp) + self.skip(inp)
        loc = self.loc_bound * torch.tanh(out[:, 0] / self.loc_bound)
        if base is not None:
            loc = loc + base
        lo, hi = self.scale_bounds
        scale = lo + (hi - lo) * torch.sigmoid(out[:, 1])
        return SigmoidNormal(loc, scale)


class ActionConv(nn.Module):
    """Message passing that reads each edge's action (and features) in every message:
    ``f_i + gamma([f_i, mean_j phi([f_i, f_j, a_ij, e_ij])])`` for a batch of action sets.
    Stacked, it lets a node sense which neighbours its edges (would) merge it with, several
    hops out: what an object-level reward depends on."""

    def __init__(self, dim: int, hidden: int, n_edge_in: int):
        super().__init__()
        self.phi = mlp(2 * dim + n_edge_in, hidden, dim)
        self.gamma = mlp(2 * dim, hidden, dim, norm=True)

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """``h``: (B, N, D); ``e``: (B, 2E, n_edge_in) per directed edge."""
        src, dst = edge_index
        msg = self.phi(torch.cat([h[:, dst], h[:, src], e], dim=-1))
        m = scatter_mean(msg, dst, h.shape[1])
        return h + self.gamma(torch.cat([h, m], dim=-1))


class GnnCritic(nn.Module):
    """Q per sub-graph (eq. 3): a node GNN over the features, then ``action_layers`` rounds of
    message passing whose messages carry the actions, action-aware edge embeddings, one MLP
    per sub-graph size plus a shared per-edge value."""

    def __init__(
        self,
        n_node_features: int,
        n_edge_features: int,
        subgraph_sizes: Sequence[int],
        hidden: int = 32,
        layers: int = 3,
        edge_dim: int = 8,
        action_layers: int = 4,
    ):
        super().__init__()
        self.gnn = NodeGnn(n_node_features, hidden, layers)
        n_edge_in = n_edge_features + 1
        self.action_convs = nn.ModuleList(
            ActionConv(hidden, hidden, n_edge_in) for _ in range(action_layers)
        )
        self.edge_embed = mlp(2 * hidden + n_edge_in, hidden, edge_dim, norm=True)
        self.edge_value = mlp(edge_dim, hidden, 1)
        self.sizes = [int(k) for k in subgraph_sizes]
        self.values = nn.ModuleDict(
            {str(k): mlp(k * edge_dim, hidden, 1, depth=3) for k in self.sizes}
        )
        # start at Q = 0 (rewards are in [0, 1]): a random deep residual stack would start far
        # off and spend its first updates unlearning that
        for head in (self.edge_value, *self.values.values()):
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)

    def forward(
        self,
        x: torch.Tensor,
        edges: torch.Tensor,
        edge_features: torch.Tensor | None,
        actions: torch.Tensor,
        subgraphs: dict[int, torch.Tensor],
        return_edge_values: bool = False,
    ) -> dict[int, torch.Tensor] | tuple[dict[int, torch.Tensor], torch.Tensor]:
        """``actions``: (E,) or (B, E) weights in [0, 1]; returns ``{k: (S_k,) or (B, S_k)}``
        (and the per-edge values, (E,) or (B, E), with ``return_edge_values``)."""
        edge_index = both_directions(edges)
        batched = actions.dim() == 2
        a = actions if batched else actions[None]
        b, n_e = a.shape
        # centre the action so an untrained critic sees it on the scale of the other inputs
        e_in = ((a - 0.5) * 2)[..., None]
        if edge_features is not None and edge_features.shape[-1]:
            e_in = torch.cat([e_in, edge_features.expand(b, -1, -1)], dim=-1)
        h = self.gnn(x, edge_index).expand(b, -1, -1)
        e_dir = torch.cat([e_in, e_in], dim=1)
        for conv in self.action_convs:
            h = conv(h, edge_index, e_dir)
        hu, hv = h[:, edges[:, 0]], h[:, edges[:, 1]]
        emb = self.edge_embed(torch.cat([hu + hv, (hu - hv).abs(), e_in], dim=-1))
        per_edge = self.edge_value(emb).squeeze(-1)  # (B, E)
        out = {}
        for k, sg in subgraphs.items():
            flat = sg.reshape(-1)
            feats = emb[:, flat].reshape(b, sg.shape[0], -1)
            mean_v = per_edge[:, flat].reshape(b, sg.shape[0], k).mean(-1)
            q = mean_v + self.values[str(k)](feats).squeeze(-1)
            out[k] = q if batched else q[0]
        if return_edge_values:
            return out, per_edge if batched else per_edge[0]
        return out
