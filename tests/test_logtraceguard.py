"""logtraceguard: its graphs, one-class and PU scoring, the ablation switches, TorchScript export
and ``melt traces --detector logtraceguard``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from detectors.traces.client_calls import fold_calls, server_tree
from detectors.traces.logtraceguard import LogTraceGuardDetector, truth_traces
from detectors.traces.ltg_graphs import CALL_COLUMNS, LOG_COLUMNS, NUMERIC
from detectors.traces.ltg_model import nn_pu_loss
from detectors.traces.ltg_one_class import (
    COMPONENT_WEIGHTS,
    COMPONENTS,
    FAILED,
    INPUTS,
    SIZE_SHAPE,
    input_rarity,
    one_class_statistics,
    shrunk_shares,
)
from melt.cli import cli
from melt.core.bundle import MeltBundle
from melt.core.errors import PluginError
from melt.pipeline.fitting import training_split

FAST = {"epochs": 3, "seed": 0}


@pytest.fixture(scope="module")
def split(tiny_bundle: MeltBundle) -> tuple[MeltBundle, MeltBundle]:
    return training_split(tiny_bundle, 0.5), tiny_bundle


@pytest.fixture(scope="module")
def fitted(split) -> LogTraceGuardDetector:
    return LogTraceGuardDetector(**FAST).fit_calibrated(split[0])


def _call() -> pd.DataFrame:
    """A root in service a, its client span calling b (10 ms, failed), b's server span (7 ms)."""
    return pd.DataFrame({
        "trace_id": ["t"] * 3, "span_id": ["r", "c", "s"], "parent_span_id": [None, "r", "c"],
        "service_name": ["a", "a", "b"], "span_name": ["GET /", "call b", "GET /b"],
        "start_time": pd.to_datetime(["2026-01-01 00:00:00"] * 3, utc=True), "duration": [12.0, 10.0, 7.0],
        "status_code": [200, 503, 200], "span_kind": ["server", "client", "server"],
    })


def test_folding_a_call_keeps_its_gap_and_client_failure_on_the_server_span() -> None:
    tree, gap, failed = fold_calls(_call())
    assert tree["span_id"].tolist() == ["r", "s"]
    assert pd.isna(tree["parent_span_id"].iloc[0]) and tree["parent_span_id"].iloc[1] == "r"
    assert np.isnan(gap[0]) and gap[1] == pytest.approx(3.0)
    assert failed.tolist() == [False, True]
    pd.testing.assert_frame_equal(server_tree(_call()), tree)


def test_one_slow_span_moves_its_own_self_time_and_not_its_parents(fitted, split) -> None:
    spans = split[1].traces
    trace = spans["trace_id"].iloc[0]
    tree = server_tree(spans[spans["trace_id"] == trace]).reset_index(drop=True)
    leaf = tree.index[~tree["span_id"].isin(tree["parent_span_id"])][-1]
    slow = tree.copy()
    extra = slow.loc[leaf, "duration"] * 9
    slow.loc[leaf, "duration"] += extra
    ids, up = slow["span_id"].tolist(), slow.loc[leaf, "parent_span_id"]
    while isinstance(up, str) and up in ids:  # the time adds up the tree, as a real slow call's does
        slow.loc[ids.index(up), "duration"] += extra
        up = slow.loc[ids.index(up), "parent_span_id"]
    logs = split[1].logs[split[1].logs["trace_id"] == trace]  # the same lines both times: only the time moves
    before = fitted._graphs(MeltBundle(traces=tree, logs=logs, validate=False))
    after = fitted._graphs(MeltBundle(traces=slow, logs=logs, validate=False))
    self_z = NUMERIC.index("self_z")
    moved = np.flatnonzero(np.abs(after.x[:, self_z] - before.x[:, self_z]) > 1e-6)
    assert len(moved) == 1 and after.x[moved[0], self_z] > before.x[moved[0], self_z] + 0.5
    rows = [fitted.trace_scores(MeltBundle(traces=t, logs=logs, validate=False))[0].iloc[0] for t in (tree, slow)]
    assert rows[1]["score"] > rows[0]["score"]
    assert rows[1]["reason"] == "timing" and rows[1]["timing_nats"] > rows[0]["timing_nats"]


def test_a_trace_scores_its_largest_weighted_component_and_says_which(fitted, split) -> None:
    table = fitted.trace_scores(split[1])[0]
    nats = table[[f"{name}_nats" for name in COMPONENTS]].to_numpy()
    weighted = nats * np.array([COMPONENT_WEIGHTS[name] for name in COMPONENTS])
    np.testing.assert_allclose(table["score"].to_numpy(), weighted.max(axis=1), rtol=1e-9, atol=1e-9)
    assert (table["reason"].to_numpy() == np.asarray(COMPONENTS)[weighted.argmax(axis=1)]).all()
    evidence = fitted.score(split[1])["evidence"].iloc[int(table["score"].idxmax())]
    assert evidence["reason"] == table.loc[table["score"].idxmax(), "reason"]
    assert list(evidence["rarity_nats"]) == COMPONENTS


def test_a_rare_move_scores_its_share_and_a_lomax_size_not_a_normal_tail() -> None:
    """An input that moved in 5 of 1,000 training calls, by 1 each time: a move of 1 scores about
    -log(5.5 / 1001) + 2 log 2 nats, and one ten times larger only 2 log(11 / 2) more."""
    features = np.zeros((1000, len(INPUTS)))
    features[:5, INPUTS.index("children_delta")] = 1.0
    median, scale, move_nats = input_rarity(features, np.zeros(1000, dtype=np.int64), 1, np.array([False]))
    column = INPUTS.index("children_delta")
    assert median[0, column] == 0.0 and scale[0, column] == pytest.approx(1.0)
    assert move_nats[0, column] == pytest.approx(-np.log(5.5 / 1001))
    nats = move_nats[0, column] + SIZE_SHAPE * np.log1p(np.array([1.0, 10.0]) / scale[0, column])
    assert nats[1] - nats[0] == pytest.approx(SIZE_SHAPE * np.log(11 / 2))
    assert nats[1] < 10.0**2 / 2  # a normal tail would put a 10-sigma move at 50 nats


def test_move_shares_shrink_to_the_fleet_where_operations_differ_by_chance_only() -> None:
    """Fifty operations that all fail at 0.4%: one that happened not to fail in training is not
    scored as rarer than one that failed four times. Operations that really differ keep their own
    shares."""
    rng = np.random.default_rng(0)
    calls = np.full(50, 1000.0)
    moves = rng.binomial(1000, 0.004, size=(50, 1)).astype(float)
    moves[0, 0] = 0.0
    share = shrunk_shares(moves, calls, np.ones(50, dtype=bool))
    assert np.ptp(share) < 0.5 * np.ptp(moves / 1000)  # pulled together
    assert share[0, 0] > 0.003  # near the fleet's 0.4%, not 0.5 / 1001
    apart = np.vstack([np.full((25, 1), 2.0), np.full((25, 1), 200.0)])  # 0.2% against 20%
    shares = shrunk_shares(apart, calls, np.ones(50, dtype=bool))
    assert shares[0, 0] < 0.004 and shares[-1, 0] > 0.19


def test_a_failed_node_reads_its_log_lines_against_failed_training_nodes(fitted, split) -> None:
    """The same error line weighs less on a span that failed (failures usually log one) than on one
    that did not."""
    import torch

    graphs = fitted._graphs(split[1])
    scorer = fitted.network_.double().eval()
    failed_row = scorer.feature_median.shape[0] - 2
    error, error_lines = NUMERIC.index("error"), NUMERIC.index("error_lines")
    assert scorer.feature_median[failed_row, error_lines] > 0  # the tiny bundle's failed training spans log errors
    x, edges, attr, batch = fitted._tensors(graphs, np.array([0]), torch.float64)
    depth = x[:, NUMERIC.index("log_depth")]
    leaf = int(torch.argmax(depth))  # the deepest node: no callee to pass an error on
    x[:, error] = 0.0
    x[leaf, error_lines] = scorer.feature_median[failed_row, error_lines]
    column = 1 + COMPONENTS[1:-1].index("logs")

    def logs(failed: float) -> float:
        changed = x.clone()
        changed[leaf, error] = failed
        with torch.no_grad():
            return float(scorer.parts(changed, edges, attr, batch, 1)[2][0, column])

    assert scorer.status_known.tolist() == [1.0, 1.0]
    assert logs(1.0) < logs(0.0)
    scorer.status_known.zero_()  # as if training had seen no failures: the operation's statistics
    assert logs(1.0) == pytest.approx(logs(0.0))


def test_a_failure_state_training_never_saw_is_not_read() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(size=(40, len(INPUTS))), np.ones(40)])
    nodes, pooled = rng.normal(size=(40, 4)), rng.normal(size=(8, 8))
    status = np.zeros(40, dtype=np.int64)
    status[:6] = FAILED
    stats = one_class_statistics(nodes, pooled, x, 2, True, status)
    assert stats.status_known.tolist() == [1.0, 0.0]
    assert stats.feature_median.shape == (2 + 2, len(INPUTS))
    assert np.isfinite(stats.feature_median).all() and np.isfinite(stats.feature_move_nats).all()


def test_errors_that_began_apart_add_up_and_a_chain_counts_at_its_origin(fitted, split) -> None:
    """Two failed leaves under different callers outrank one failed leaf whose caller failed too;
    the caller only passed the error on, so the chain scores as its failed leaf alone."""
    import torch

    graphs = fitted._graphs(split[1])
    sizes = np.diff(graphs.trace_ptr)
    scorer = fitted.network_.double().eval()
    error, depth = NUMERIC.index("error"), NUMERIC.index("log_depth")
    for trace in np.flatnonzero(sizes >= 4):
        x, edges, attr, batch = fitted._tensors(graphs, np.array([trace]), torch.float64)
        x[:, error] = 0.0
        parent = {int(b): int(a) for a, b in edges.T.tolist() if x[b, depth] > x[a, depth]}
        leaves = [node for node in parent if node not in parent.values()]
        apart = [(a, b) for a in leaves for b in leaves if a < b and parent[a] != parent[b]]
        if apart:
            break
    else:
        pytest.skip("no trace with two leaves under different callers")
    first, second = apart[0]
    column = 1 + COMPONENTS[1:-1].index("errors")

    def errors(failed: list[int]) -> float:
        changed = x.clone()
        changed[failed, error] = 1.0
        with torch.no_grad():
            return float(scorer.parts(changed, edges, attr, batch, 1)[2][0, column])

    one = errors([first])
    assert one > 0 and errors([parent[first]]) > 0
    assert errors([first, parent[first]]) == pytest.approx(one)
    assert errors([first, second]) == pytest.approx(one + errors([second]))
    assert errors([first, second]) > errors([first, parent[first]])


def test_ablation_switches_zero_their_inputs(split) -> None:
    without = LogTraceGuardDetector(**FAST, use_logs=False, use_edges=False).fit_calibrated(split[0])
    graphs = without._graphs(split[1])
    assert without.miner_ is None
    assert not graphs.x[:, LOG_COLUMNS].any() and not graphs.x[:, len(NUMERIC):-1].any()
    assert not graphs.x[:, CALL_COLUMNS].any() and not graphs.edge_attr.any()
    with_logs = LogTraceGuardDetector(**FAST).fit_calibrated(split[0])._graphs(split[1])
    assert with_logs.x[:, LOG_COLUMNS].any() and with_logs.x[:, len(NUMERIC):-1].any()
    untrained = LogTraceGuardDetector(**FAST, contrastive_levels="").fit_calibrated(split[0])
    assert untrained.history_ == [] and np.isfinite(untrained.score(split[1])["score"]).all()
    with pytest.raises(PluginError, match="contrastive_levels takes any of node, edge, graph"):
        LogTraceGuardDetector(**FAST, contrastive_levels="node,trace").fit(split[0])


def test_pu_loss_is_non_negative_and_rewards_ranking_positives_first() -> None:
    import torch

    good = nn_pu_loss(torch.tensor([3.0, 4.0]), torch.tensor([-3.0, -2.0, -4.0]), 0.1)
    bad = nn_pu_loss(torch.tensor([-3.0, -4.0]), torch.tensor([3.0, 2.0, 4.0]), 0.1)
    assert 0 <= float(good) < float(bad)
    clamped = nn_pu_loss(torch.tensor([-5.0]), torch.tensor([-9.0]), 0.9)  # negative risk below zero
    assert float(clamped) == pytest.approx(0.9 * float(torch.nn.functional.softplus(torch.tensor(5.0))))


def test_labels_train_a_pu_head_that_ranks_the_labelled_kind_of_trace_first(split) -> None:
    train, every = split
    faulty = truth_traces(every)
    assert len(faulty) > 10
    rng = np.random.default_rng(0)
    labelled = rng.choice(faulty, len(faulty) // 2, replace=False)
    spans = every.traces
    later = spans[spans["trace_id"].isin(labelled)]
    bundle = MeltBundle(traces=pd.concat([train.traces, later], ignore_index=True), logs=every.logs, validate=False)
    pu = LogTraceGuardDetector(**FAST).fit_calibrated(bundle, labels=list(labelled))
    one_class = LogTraceGuardDetector(**FAST).fit_calibrated(train)
    assert pu.pu_fitted_ and not one_class.pu_fitted_
    held_out = np.setdiff1d(faulty, labelled)
    test = MeltBundle(traces=spans[spans["trace_id"].isin(held_out) | ~spans["trace_id"].isin(faulty)
                                   & (spans["start_time"] > train.traces["start_time"].max())],
                      logs=every.logs, validate=False)
    table = pu.trace_scores(test)[0]
    positive = table["trace_id"].isin(held_out)
    assert table.loc[positive, "score"].median() > table.loc[~positive, "score"].quantile(0.9)
    with pytest.raises(PluginError, match="labels must be trace ids or 'truth'"):
        LogTraceGuardDetector(**FAST).fit(train, labels="faulty.txt")


def test_truth_labels_take_the_fault_windows_traces_through_the_root_cause(split) -> None:
    every = split[1]
    ids = truth_traces(every)
    spans = every.traces[every.traces["trace_id"].isin(ids)]
    fault = every.truth["faults"][0]
    assert set(spans["service_name"]) >= {fault["root_cause_service"]}
    assert truth_traces(MeltBundle(traces=every.traces, validate=False)).size == 0  # no truth, no labels


def test_torchscript_export_scores_like_the_python_model_without_melt(fitted, split, tmp_path) -> None:
    import torch

    path = fitted.export(tmp_path / "model.ts")
    graphs = fitted._graphs(split[1])
    traces = np.arange(graphs.n_traces)
    x, edges, attr, batch = fitted._tensors(graphs, traces, torch.float64)
    torch.save({"x": x, "edge_index": edges, "edge_attr": attr, "batch": batch}, tmp_path / "inputs.pt")
    expected = fitted.trace_scores(split[1])[0]["score"].to_numpy()
    blocker = ("import sys\nfor name in ('melt', 'detectors', 'torch_geometric'):\n    sys.modules[name] = None\n")
    script = blocker + (
        "import torch, numpy\n"
        f"model = torch.jit.load({str(path)!r})\n"
        f"inputs = torch.load({str(tmp_path / 'inputs.pt')!r})\n"
        "scores, nodes = model(inputs['x'], inputs['edge_index'], inputs['edge_attr'], inputs['batch'],"
        " int(inputs['batch'].max()) + 1)\n"
        f"numpy.save({str(tmp_path / 'scores.npy')!r}, scores.numpy())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert np.abs(np.load(tmp_path / "scores.npy") - expected).max() < 1e-5


def test_melt_traces_train_with_labels_predict_evaluate_export(split, tiny_dir, tmp_path) -> None:
    runner = CliRunner()
    config = tmp_path / "config.yaml"
    config.write_text("detectors:\n  logtraceguard:\n    epochs: 2\n")
    model = tmp_path / "model"
    result = runner.invoke(cli, ["--config", str(config), "traces", "train", "--detector", "logtraceguard", "--data",
                                 str(tiny_dir), "--labels", "truth", "--output", str(model), "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((model / "manifest.json").read_text())["detector"] == "logtraceguard"
    result = runner.invoke(cli, ["traces", "predict", "--model", str(model), "--data", str(tiny_dir),
                                 "--output", str(tmp_path / "scores.csv")])
    assert result.exit_code == 0, result.output
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert scores["trace_id"].nunique() == split[1].traces["trace_id"].nunique()
    spans = split[1].traces
    label = spans.groupby("trace_id")["label"].transform("max")
    spans[label == 0].to_parquet(tmp_path / "normal.parquet")
    spans[label == 1].to_parquet(tmp_path / "abnormal.parquet")
    result = runner.invoke(cli, ["traces", "evaluate", "--model", str(model), "--normal-data", str(tmp_path / "normal.parquet"),
                                 "--anomaly-data", str(tmp_path / "abnormal.parquet"), "--output", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    evaluation = json.loads((tmp_path / "eval" / "evaluation_results.json").read_text())
    assert evaluation["detector"] == "logtraceguard" and evaluation["aggregation"] is None
    result = runner.invoke(cli, ["traces", "export", "--model", str(model), "--output", str(tmp_path / "model.ts")])
    assert result.exit_code == 0 and (tmp_path / "model.ts").stat().st_size > 0, result.output


@pytest.mark.parametrize(("args", "message"), [
    (["train", "--detector", "gat_gae", "--labels", "truth"], "takes no --labels"),
    (["train", "--detector", "logtraceguard", "--latent-dim", "4"], "--latent-dim does not apply to logtraceguard"),
    (["train", "--detector", "logtraceguard", "--labels", "no-such-file.txt"], "labels file not found"),
    (["train", "--detector", "zscore"], "does not score whole traces"),
])
def test_melt_traces_bad_arguments_exit_2_with_one_line(args, message, tiny_dir, tmp_path) -> None:
    result = CliRunner().invoke(cli, ["traces", *args, "--data", str(tiny_dir), "--output", str(tmp_path / "m")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_exporting_a_model_without_torchscript_exits_2(split, tmp_path) -> None:
    from detectors.traces.gat_gae import GATGraphAutoencoderDetector

    GATGraphAutoencoderDetector(epochs=1).fit_calibrated(split[0]).save(tmp_path / "gat")
    result = CliRunner().invoke(cli, ["traces", "export", "--model", str(tmp_path / "gat"), "--output", str(tmp_path / "m.ts")])
    assert result.exit_code == 2 and "has no TorchScript export" in result.output
