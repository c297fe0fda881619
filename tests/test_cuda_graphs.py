"""CUDA-graph inference: buckets, and (where a GPU exists) the same levels as the eager paths."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from abr_server.cuda_graphs import MAX_GRAPH_BATCH, GraphedActor, bucket, bucket_sizes
from abr_server.inference import LoadedModel, forward_levels
from abr_server.main import create_app
from abr_server.registry import ModelRegistry
from abr_server.settings import Settings
from policy.learning.dense import DenseActor
from policy.learning.network import ActorCritic
from simulator.observation import ObservationSpec
from simulator.video import Video

VIDEO = Video.builtin()
WIDTH = ObservationSpec().width(VIDEO)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")


def test_buckets_are_the_next_power_of_two_up_to_the_cap() -> None:
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 255, 256, 257)] == [1, 2, 4, 4, 8, 256, 256, 512]
    assert bucket(MAX_GRAPH_BATCH + 1) == MAX_GRAPH_BATCH
    assert bucket_sizes(1) == [1]
    assert bucket_sizes(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert bucket_sizes(300) == [*bucket_sizes(256), 512]  # every batch of at most 300 has its bucket
    with pytest.raises(ValueError, match="at least 1"):
        bucket(0)


def test_cpu_models_have_no_graphs() -> None:
    loaded = ModelRegistry(None, VIDEO, torch.device("cpu"), max_batch=8).load_servable()
    assert loaded.graphs is None
    with pytest.raises(ValueError, match="CUDA device"):
        GraphedActor(DenseActor(ActorCritic(WIDTH, VIDEO.n_levels)), WIDTH)


def _states(n: int, seed: int) -> np.ndarray:
    # Wide, varied inputs, so that argmax ties (where float rounding could differ) are vanishingly rare.
    return (4.0 * np.random.default_rng(seed).random((n, 6, WIDTH)) - 1.0).astype(np.float32)


@pytest.fixture(scope="module")
def cuda_model() -> LoadedModel:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (none here)")
    return ModelRegistry(None, VIDEO, torch.device("cuda"), max_batch=64).load_servable()


@needs_cuda
def test_graphed_levels_match_eager_and_the_cpu(cuda_model: LoadedModel) -> None:
    assert cuda_model.graphs is not None
    assert cuda_model.graphs.captured == bucket_sizes(64)  # prepared at load
    cpu_model = ModelRegistry(None, VIDEO, torch.device("cpu")).load_servable()
    for n in (1, 3, 64, 65, 300, MAX_GRAPH_BATCH + 5):
        states = _states(n, seed=n)
        graphed = forward_levels(cuda_model, states)
        with torch.inference_mode():
            eager = cuda_model.model.logits(torch.from_numpy(states).cuda()).argmax(-1).cpu().numpy()
        assert graphed.shape == (n,)
        assert graphed.dtype == np.int64
        np.testing.assert_array_equal(graphed, eager)
        np.testing.assert_array_equal(graphed, forward_levels(cpu_model, states))
    assert forward_levels(cuda_model, states[:0]).shape == (0,)


@needs_cuda
def test_a_model_prepared_on_another_thread_while_one_serves(cuda_model: LoadedModel) -> None:
    states = _states(48, seed=7)
    expected = forward_levels(cuda_model, states)
    stop, failures = threading.Event(), []

    def serve() -> None:
        while not stop.is_set():
            if not np.array_equal(forward_levels(cuda_model, states), expected):
                failures.append("levels changed")

    server = threading.Thread(target=serve)
    server.start()
    try:
        fresh = LoadedModel(cuda_model.model, "v2", torch.device("cuda"))
        fresh.prepare(512)  # a hot swap's capture, while the other thread replays
    finally:
        stop.set()
        server.join()
    assert not failures
    np.testing.assert_array_equal(forward_levels(fresh, states), expected)


@pytest.fixture
def cuda_client(tmp_path: Path) -> Iterator[TestClient]:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (none here)")
    settings = Settings(device="cuda", telemetry_db=None, max_batch=32)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        yield client


@needs_cuda
def test_the_server_decides_on_cuda_as_on_the_cpu(cuda_client: TestClient) -> None:
    with TestClient(create_app(Settings(device="cpu", telemetry_db=None))) as cpu_client:  # type: ignore[call-arg]
        for index in range(5):
            body = {"index": index, "quality": index % VIDEO.n_levels,
                    "bytes": int(VIDEO.chunk_bytes[index % VIDEO.n_levels, index]),
                    "request_start_ms": 1000.0 * index, "end_ms": 1000.0 * index + 300.0 * (index + 1),
                    "buffer_s": 2.0 + 3 * index}  # fmt: skip
            on_gpu = cuda_client.post("/v1/sessions/g/decision", json=body)
            on_cpu = cpu_client.post("/v1/sessions/g/decision", json=body)
            assert on_gpu.status_code == on_cpu.status_code == 200
            assert on_gpu.json()["policy"] == "learned"  # the model answered, not the fallback
            assert on_gpu.json() == on_cpu.json()


def test_bench_serve_inference_only_times_each_path(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from abr_cli.main import app

    out = tmp_path / "infer.json"
    args = ["bench", "serve", "--no-load", "--path", "served", "--path", "module", "--path", "resident",
            "--batch", "1", "--batch", "8", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["load"] == []
    assert doc["server_device"] is None
    assert [(r["path"], r["batch"]) for r in doc["inference"]] == [
        (p, b) for p in ("served", "module", "resident") for b in (1, 8)
    ]
    assert all(r["decisions_per_s"] > 0 for r in doc["inference"])
    result = CliRunner().invoke(app, ["bench", "serve", "--no-load", "--path", "onnx"])
    assert result.exit_code != 0
    assert "--path must be one of" in result.output
