"""gat_gae: unseen names, batched = one graph at a time, the seed-style API and `melt traces`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from detectors.traces.gat_gae import GATGraphAutoencoderDetector, negative_pairs
from detectors.traces.trace_anomaly_api import TraceAnomalyDetector
from melt.cli import cli
from melt.core.bundle import MeltBundle
from melt.core.errors import ConfigError, PluginError
from melt.pipeline.fitting import training_split

FAST = {"epochs": 3, "seed": 0}


@pytest.fixture(scope="module")
def split(tiny_bundle: MeltBundle) -> tuple[MeltBundle, MeltBundle]:
    return training_split(tiny_bundle, 0.5), tiny_bundle


@pytest.fixture(scope="module")
def fitted(split) -> GATGraphAutoencoderDetector:
    return GATGraphAutoencoderDetector(**FAST).fit_calibrated(split[0])


def test_unseen_services_and_operations_get_a_score(fitted, split) -> None:
    spans = split[1].traces.copy()
    first = spans["trace_id"] == spans["trace_id"].iloc[0]
    spans.loc[first, "service_name"] = "never-seen-service"
    spans.loc[first, "span_name"] = "GET /never/seen"
    table, _, _ = fitted.trace_scores(MeltBundle(traces=spans))
    assert np.isfinite(table["score"]).all()
    known = table["score"][table["trace_id"] != spans["trace_id"].iloc[0]]
    assert table["score"].iloc[0] > np.median(known)  # an unknown operation reconstructs badly


def test_batched_scores_equal_one_graph_at_a_time(fitted, split) -> None:
    graphs = fitted._graphs(split[1].traces[split[1].traces["trace_id"].isin(split[1].traces["trace_id"].unique()[:40])])
    batched = fitted.span_scores(graphs)
    single = np.concatenate([fitted.span_scores(graphs, np.array([t]), batch_size=1) for t in range(graphs.n_traces)])
    assert np.abs(batched - single).max() < 1e-5


def test_aggregations_and_a_bad_one(fitted, split) -> None:
    scores = {how: fitted.trace_scores(split[1], aggregation=how)[0]["score"].to_numpy()
              for how in ("max", "mean", "percentile_95")}
    assert (scores["max"] >= scores["percentile_95"] - 1e-9).all() and (scores["max"] >= scores["mean"] - 1e-9).all()
    with pytest.raises(PluginError, match="aggregation must be one of"):
        fitted.trace_scores(split[1], aggregation="median")


def test_negative_pairs_stay_inside_their_trace_and_avoid_self() -> None:
    edges = np.array([[0, 1, 3, 4], [1, 0, 4, 3]])
    batch = np.array([0, 0, 0, 1, 1])
    pairs = negative_pairs(edges, batch, np.random.default_rng(0))
    assert (batch[pairs[0]] == batch[pairs[1]]).all() and (pairs[0] != pairs[1]).all()


def test_seed_style_api_round_trip(split, tmp_path) -> None:
    model = TraceAnomalyDetector({"epochs": 2, "latent_dim": 8}).fit(split[0].traces)
    scores = model.predict_score(split[1].traces)
    assert list(scores.columns) == ["trace_id", "anomaly_score", "calibrated_score", "service", "start_time", "span_count"]
    assert scores["trace_id"].nunique() == split[1].traces["trace_id"].nunique()
    model.save(tmp_path / "m")
    again = TraceAnomalyDetector.load(tmp_path / "m")
    pd.testing.assert_frame_equal(again.predict_score(split[1].traces), scores)
    info = again.get_model_info()
    assert info["fitted"] and info["config"]["latent_dim"] == 8 and info["epochs_run"] == len(info["history"])
    with pytest.raises(ConfigError, match="unknown key 'latnet_dim'"):
        TraceAnomalyDetector({"latnet_dim": 4})


def test_melt_traces_train_predict_evaluate(split, tmp_path) -> None:
    train_spans, every = split[0].traces, split[1].traces
    train_spans.to_parquet(tmp_path / "train.parquet")
    label = every.groupby("trace_id")["label"].transform("max")
    for i in (1, 2):
        folder = tmp_path / "tests" / f"dataset{i}"
        folder.mkdir(parents=True)
        every[label == 0].to_parquet(folder / "normal_traces.parquet")
        every[label == 1].to_parquet(folder / "abnormal_traces.parquet")
    runner = CliRunner()
    result = runner.invoke(cli, ["traces", "train", "--data", str(tmp_path / "train.parquet"), "--output",
                                 str(tmp_path / "model"), "--epochs", "2", "--latent-dim", "8", "--quiet"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["traces", "predict", "--model", str(tmp_path / "model"), "--data",
                                 str(tmp_path / "tests" / "dataset1" / "abnormal_traces.parquet"),
                                 "--output", str(tmp_path / "results.csv")])
    assert result.exit_code == 0, result.output
    assert {"trace_id", "anomaly_score", "is_anomaly"} <= set(pd.read_csv(tmp_path / "results.csv").columns)
    result = runner.invoke(cli, ["traces", "evaluate", "--model", str(tmp_path / "model"), "--test-dir",
                                 str(tmp_path / "tests"), "--aggregation", "mean", "--output", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "eval" / "evaluation_results.json").read_text())
    overall = results["overall"]
    for key in ("roc_auc", "precision", "recall", "f1", "specificity", "separation_ratio", "scores"):
        assert key in overall
    assert 0.0 <= overall["roc_auc"] <= 1.0 and results["aggregation"] == "mean"
    for name in ("roc_curve.png", "pr_curve.png", "confusion_matrix.png", "score_distribution.png"):
        assert (tmp_path / "eval" / name).read_bytes()[:4] == b"\x89PNG"
        assert (tmp_path / "eval" / "dataset1" / name).is_file()
    missing = runner.invoke(cli, ["traces", "evaluate", "--model", str(tmp_path / "model")])
    assert missing.exit_code == 2 and "--normal-data and --anomaly-data, or --test-dir" in missing.output
    bad = runner.invoke(cli, ["traces", "predict", "--model", str(tmp_path / "nope"), "--data", "x", "--output", "y"])
    assert bad.exit_code == 2 and "not a saved trace model" in bad.output
