"""Trace-event graphs scored by a gated graph network trained as a one-class model (DeepTraLog,
Zhang et al., ICSE 2022: GGNN + Deep SVDD, Ruff et al., ICML 2018).

Each trace becomes a graph of its spans and log events (``teg_graphs``). A gated graph convolution
(Li et al., ICLR 2016) embeds the nodes; mean and max pooling give the graph's embedding; training
pulls normal graphs towards a fixed centre c (the mean initial embedding), and a graph's distance is
its squared distance to c. Layers have no bias terms, as Deep SVDD requires, so the network cannot
map every graph onto c. A node's own anomaly is its distance to the mean embedding of nodes with the
same operation or template in training.

A trace scores the rarer of its graph distance and its worst node's distance as a robust z-score
against the training nodes of the node's key, each calibrated on the held-out traces (as
``logtraceguard``'s scorer takes the largest of its components): one failing span among many normal
ones moves the pooled embedding little, and its node a lot. The trace is attributed to the service
of its farthest node. Training and scoring run on batches of many graphs (one block-diagonal edge
list per step).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from detectors.logs.templates import UNMATCHED, SavedMinerMixin, TemplateMiner
from detectors.robust import robust_baseline
from detectors.torch_model import (
    EarlyStopping,
    HeldOutCalibrationMixin,
    TorchNetworkMixin,
    torch_device,
)
from detectors.trace_sample import TraceSampleMixin
from detectors.traces.client_calls import server_tree
from detectors.traces.graph_batch import gather
from detectors.traces.teg_graphs import TraceGraphs, build_graphs
from melt.core.bundle import MeltBundle
from melt.core.calibration import ScoreCalibrator
from melt.core.detector import Detector, empty_scores

MIN_NODES = 5  # a node key with fewer training nodes takes the spread of every training node


class TraceEventGraphDetector(TraceSampleMixin, HeldOutCalibrationMixin, TorchNetworkMixin, SavedMinerMixin, Detector):
    """One-class GGNN over trace-event graphs.

    Args:
        hidden: node embedding size; ``steps`` gated message-passing steps.
        epochs, patience, batch_traces, learning_rate: training (early stopping on held-out traces).
        max_train_traces: traces sampled for training (:mod:`detectors.trace_sample`).
        validation_fraction: trailing share of training traces held out (early stopping, calibration).
        top_nodes: worst nodes listed in the evidence.
        device: "auto" (GPU if present), "cpu" or "cuda".
        seed: seed of initialisation, sampling and shuffling.
    """

    name = "teg"
    signal = "traces"
    partition = "trace"
    reads = ("logs",)

    def __init__(self, hidden: int = 32, steps: int = 3, epochs: int = 12, patience: int = 3, batch_traces: int = 256,
                 learning_rate: float = 3e-3, max_train_traces: int = 2000, validation_fraction: float = 0.2,
                 top_nodes: int = 3, device: str = "auto", seed: int = 0) -> None:
        self.hidden = hidden
        self.steps = steps
        self.epochs = epochs
        self.patience = patience
        self.batch_traces = batch_traces
        self.learning_rate = learning_rate
        self.max_train_traces = max_train_traces
        self.validation_fraction = validation_fraction
        self.top_nodes = top_nodes
        self.device = device
        self.seed = seed

    # ------------------------------------------------------------------ graphs
    def _graphs(self, bundle: MeltBundle, learn: bool) -> TraceGraphs:
        spans = server_tree(self.require(bundle))  # a call is one node: its server span
        logs = bundle.logs
        usable = logs is not None and {"trace_id", "span_id"} <= set(logs.columns)
        if usable and (learn or getattr(self, "miner_", None) is not None):  # a model fitted without logs ignores them
            logs = logs[logs["trace_id"].notna() & logs["span_id"].notna()]
        else:
            logs = None
        log_keys = log_unseen = None
        if logs is not None and len(logs):
            if learn:
                self.miner_ = TemplateMiner()
                ids = self.miner_.fit(logs["message"])
                masked = None
            else:
                ids, masked = self.miner_.match(logs["message"])
            text = self.miner_.marked_templates()  # the values' kinds are tokens of the bag, as in masked lines
            log_keys = pd.Series(ids).map(text).to_numpy(dtype=object)
            log_unseen = ids == UNMATCHED
            if masked is not None:
                log_keys = np.where(log_unseen, masked, log_keys)
        logs = logs if log_keys is not None else None
        operation = [spans["service_name"].astype(str).rename("service"), spans["span_name"].astype(str).rename("op")]
        log_ms = pd.Series(np.log1p(spans["duration"].clip(lower=0).to_numpy(dtype=float)))
        if learn:
            self.duration_ = robust_baseline(log_ms, operation, rel_floor=0.02, tail_quantile=0.99)
        stats = self.duration_.reindex(pd.MultiIndex.from_arrays([o.to_numpy() for o in operation]))
        duration_z = np.nan_to_num((log_ms.to_numpy() - stats["median"].to_numpy()) / stats["sigma"].to_numpy())
        return build_graphs(spans, logs, log_keys, log_unseen, duration_z)

    # ------------------------------------------------------------------ network
    def _input_size(self) -> int:
        return self.in_dim_

    def _build(self, in_dim: int):
        import torch
        from torch import nn
        from torch_geometric.nn import GatedGraphConv, global_max_pool, global_mean_pool

        class Network(nn.Module):
            def __init__(self, features: int, hidden: int, steps: int) -> None:
                super().__init__()
                self.embed = nn.Linear(features, hidden, bias=False)
                self.ggnn = GatedGraphConv(hidden, steps, bias=False)
                self.project = nn.Linear(hidden, hidden, bias=False)

            def nodes(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
                return self.project(self.ggnn(torch.tanh(self.embed(x)), edge_index))

            def forward(self, x: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor, size: int):
                h = self.nodes(x, edge_index)
                return torch.cat([global_mean_pool(h, batch, size), global_max_pool(h, batch, size)], dim=1), h

        torch.manual_seed(self.seed)
        # float64 throughout: float32 sums round differently with the number of threads, and a node's
        # z-score (its distance over a small spread) turned that into a different third decimal on a
        # one-thread Dask worker
        return Network(in_dim, self.hidden, self.steps).double()

    def _run(self, graphs: TraceGraphs, traces: np.ndarray, network, device):
        """Graph embeddings and node embeddings of ``traces`` (sorted positions), batch by batch.

        In float64: a float32 matrix product rounds differently with the batch's size, so a trace
        scored among other traces (a Dask worker's shard) would move in the 7th digit.
        """
        import copy

        import torch

        graph_out, node_out = [], []
        network = copy.deepcopy(network).eval()
        with torch.no_grad():
            for start in range(0, traces.size, self.batch_traces):
                chosen = traces[start:start + self.batch_traces]
                x, edges, batch = gather(graphs, chosen)
                z, h = network(torch.from_numpy(x).double().to(device), torch.from_numpy(edges).to(device),
                               torch.from_numpy(batch).to(device), chosen.size)
                graph_out.append(z.cpu().numpy())
                node_out.append(h.cpu().numpy())
        return np.concatenate(graph_out), np.concatenate(node_out)

    # ------------------------------------------------------------------ contract
    def fit_sample(self, sample: MeltBundle) -> None:
        """Learn from the sampled traces (:mod:`detectors.trace_sample`): templates, duration baselines, the network."""
        import torch

        graphs = self._graphs(sample, learn=True)
        train, validation = self.sample_split(graphs.trace_id)
        device = torch_device(self.device)
        network = self._build(graphs.x.shape[1]).to(device)
        initial, _ = self._run(graphs, train, network, device)
        centre = initial.mean(axis=0)
        centre[np.abs(centre) < 0.1] = np.where(centre[np.abs(centre) < 0.1] < 0, -0.1, 0.1)  # Ruff et al.: avoid a trivial c
        c = torch.from_numpy(centre).to(device)
        optimiser = torch.optim.Adam(network.parameters(), lr=self.learning_rate, weight_decay=1e-6)
        generator = np.random.default_rng(self.seed)
        stopper = EarlyStopping(self.patience, min_gain=0.01)
        self.history_: list[tuple[float, float]] = []
        for _ in range(self.epochs):
            network.train()
            shuffled = generator.permutation(train)
            total = 0.0
            for start in range(0, shuffled.size, self.batch_traces):
                chosen = np.sort(shuffled[start:start + self.batch_traces])
                x, edges, batch = gather(graphs, chosen)
                optimiser.zero_grad()
                z, _ = network(torch.from_numpy(x).double().to(device), torch.from_numpy(edges).to(device),
                               torch.from_numpy(batch).to(device), chosen.size)
                loss = torch.mean(torch.sum((z - c) ** 2, dim=1))
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * chosen.size
            val_z, _ = self._run(graphs, validation, network, device)
            val = float(np.mean(np.sum((val_z - centre) ** 2, axis=1)))
            self.history_.append((total / max(train.size, 1), val))
            if stopper.should_stop(val, network):
                break
        stopper.restore(network)
        self.network_ = network.cpu()
        self.centre_ = centre
        self.in_dim_ = int(graphs.x.shape[1])
        _, nodes = self._run(graphs, train, self.network_, torch.device("cpu"))
        keys = graphs.node_key[np.isin(graphs.node_trace, train)]  # _run returns nodes in this (sorted) order
        self.node_centres_ = pd.DataFrame(nodes).groupby(pd.Series(keys, dtype=object).to_numpy()).mean()
        self.node_centre_ = nodes.mean(axis=0)
        distance = pd.Series(self._node_distance(nodes, keys))
        spread = robust_baseline(distance, pd.Series(keys, dtype=object, name="key"), rel_floor=0.05, tail_quantile=0.99)
        self.node_spread_ = spread[spread["count"] >= MIN_NODES][["median", "sigma"]]
        everyone = robust_baseline(distance, pd.Series(np.zeros(distance.size), name="all"), rel_floor=0.05, tail_quantile=0.99)
        self.all_nodes_spread_ = everyone[["median", "sigma"]].to_numpy()[0]
        graph_distance, worst_z = self._components(graphs, validation)
        self.graph_calibrator_ = ScoreCalibrator().fit(graph_distance)
        self.node_calibrator_ = ScoreCalibrator().fit(worst_z)
        self.expected_high_ = float(np.quantile(self._combined(graph_distance, worst_z), 0.99))

    def _distances(self, graphs: TraceGraphs, traces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Graph distances of ``traces`` (sorted positions), their nodes' distances to their keys'
        training centres, and those nodes' keys."""
        import torch

        z, nodes = self._run(graphs, traces, self.network_, torch.device("cpu"))
        keys = graphs.node_key[np.isin(graphs.node_trace, traces)]
        return np.sum((z - self.centre_) ** 2, axis=1), self._node_distance(nodes, keys), keys

    def _node_distance(self, nodes: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Each node's distance to the training centre of its key (or of all nodes, for a new key)."""
        centres = self.node_centres_.reindex(pd.Index(keys, dtype=object)).to_numpy()
        centres = np.where(np.isnan(centres), self.node_centre_, centres)
        return np.sqrt(np.sum((nodes - centres) ** 2, axis=1))

    def _node_z(self, distance: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Node distances as robust z-scores against the training nodes of the same key (or of all
        keys, for a key seen fewer than ``MIN_NODES`` times)."""
        spread = self.node_spread_.reindex(pd.Index(keys, dtype=object)).to_numpy()
        spread = np.where(np.isnan(spread), self.all_nodes_spread_, spread)
        return (distance - spread[:, 0]) / spread[:, 1]

    def _worst_z(self, node_distance: np.ndarray, keys: np.ndarray, trace_of_node: np.ndarray,
                 traces: np.ndarray) -> np.ndarray:
        """Each trace's worst node z-score, in the order of ``traces``."""
        worst = pd.Series(self._node_z(node_distance, keys)).groupby(trace_of_node).max()
        return worst.reindex(traces).to_numpy()

    def _components(self, graphs: TraceGraphs, traces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per trace of ``traces``: its graph distance and its worst node's z-score."""
        graph_distance, node_distance, keys = self._distances(graphs, traces)
        trace_of_node = graphs.node_trace[np.isin(graphs.node_trace, traces)]
        return graph_distance, self._worst_z(node_distance, keys, trace_of_node, traces)

    def _combined(self, graph_distance: np.ndarray, worst_z: np.ndarray) -> np.ndarray:
        """The rarer of the two components on held-out traces: the larger calibrated score."""
        return np.maximum(self.graph_calibrator_.transform(graph_distance), self.node_calibrator_.transform(worst_z))

    def score(self, bundle: MeltBundle) -> pd.DataFrame:
        spans = self.require(bundle)
        if spans.empty:
            return empty_scores()
        graphs = self._graphs(bundle, learn=False)
        traces = np.arange(graphs.n_traces)
        graph_distance, node_distance, keys = self._distances(graphs, traces)
        score = self._combined(graph_distance, self._worst_z(node_distance, keys, graphs.node_trace, traces))
        # attribution and evidence by the nodes' distances: on Nezha and the synthetic exceptions the
        # farthest node named the root cause (or its caller) more often than the node of largest z
        node_score = node_distance
        worst = pd.Series(node_score).groupby(graphs.node_trace).idxmax().to_numpy()
        # the top nodes of every trace at once: sort by (trace, -score), keep the first few of each trace
        order = np.lexsort((-node_score, graphs.node_trace))
        rank = np.arange(order.size) - graphs.trace_ptr[graphs.node_trace[order]]
        top = order[rank < self.top_nodes]
        nodes_frame = pd.DataFrame({"service": graphs.node_service[top].astype(str),
                                    "event": pd.Series(graphs.node_key[top]).astype(str).str.slice(0, 200).to_numpy(),
                                    "score": np.round(node_score[top].astype(np.float64), 3)})
        worst_nodes = pd.Series(nodes_frame.to_dict("records")).groupby(graphs.node_trace[top]).agg(list)
        evidence = pd.DataFrame({
            "value": np.round(score, 6), "expected_range": [[0.0, round(self.expected_high_, 6)]] * graphs.n_traces,
            "anomaly_type": "trace_anomaly", "trace_id": graphs.trace_id.astype(str),
            "worst_nodes": worst_nodes.reindex(traces).to_numpy(),
        }).to_dict("records")
        return pd.DataFrame({
            "timestamp": graphs.trace_start,
            "service": graphs.node_service[worst].astype(str),
            "detector": self.name,
            "entity": pd.Series(graphs.node_key[worst]).astype(str).str.slice(0, 200).to_numpy(),
            "score": score,
            "evidence": evidence,
        })
