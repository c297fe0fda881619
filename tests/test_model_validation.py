"""What is validated before a model version serves, and what the server does with one that fails.

Bad versions are copies of the shipped model with one thing broken (a field of ``meta.json`` or one
tensor of ``model.safetensors``). The registry watcher is driven through `DecisionService.poll_registry`
and its loop through a poll stand-in, never by sleeping.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file

from abr_server import registry as registry_module
from abr_server.inference import (
    NONFINITE,
    FlaggedActor,
    LoadedModel,
    MicroBatcher,
    ModelSlot,
    NoModel,
    NonFiniteOutput,
    flag_nonfinite,
    forward_levels,
)
from abr_server.main import create_app
from abr_server.metrics import Metrics
from abr_server.registry import ModelRegistry, RefusedVersion
from abr_server.schemas import ChunkReport
from abr_server.service import DecisionService
from abr_server.settings import Settings
from policy.learned import DEFAULT_MODEL_DIR
from policy.learning.checkpoint import MODEL_FILE, CheckpointError, load_checkpoint, probe_states
from simulator.observation import HistoryPadding, ObservationBuilder, ObservationSpec
from simulator.video import Video

VIDEO = Video.builtin()
TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
Tensors = dict[str, torch.Tensor]


def report(index: int = 0, quality: int = 1) -> dict[str, object]:
    return {"index": index, "quality": quality, "bytes": int(VIDEO.chunk_bytes[quality, index]),
            "request_start_ms": 1000.0 * index, "end_ms": 1000.0 * index + 800.0, "buffer_s": 4.0 + index}  # fmt: skip


def publish(
    root: Path, version: str, meta: dict[str, Any] | None = None, tensors: Callable[[Tensors], None] | None = None
) -> Path:
    """A copy of the shipped model as ``root/version`` (written hidden, then renamed into place, as a
    publisher does), with ``meta`` merged into ``meta.json``'s sections and ``tensors`` editing the weights."""
    hidden = root / f".{version}"
    shutil.copytree(DEFAULT_MODEL_DIR, hidden)
    if meta:
        content = json.loads((hidden / "meta.json").read_text())
        for section, fields in meta.items():
            content[section] = {**content[section], **fields} if isinstance(fields, dict) else fields
        (hidden / "meta.json").write_text(json.dumps(content))
    if tensors is not None:
        weights = load_file(hidden / MODEL_FILE)
        tensors(weights)
        save_file(weights, hidden / MODEL_FILE)
    hidden.rename(root / version)
    return root / version


def set_entry(name: str, value: float) -> Callable[[Tensors], None]:
    def edit(weights: Tensors) -> None:
        weights[name].view(-1)[3] = value

    return edit


def reshape(weights: Tensors) -> None:
    weights["actor_head.weight"] = weights["actor_head.weight"][:5].clone()


def drop(weights: Tensors) -> None:
    del weights["critic_head.bias"]


def huge_head(weights: Tensors) -> None:
    weights["actor_head.weight"].fill_(3e38)  # every weight finite, the logits are not


BAD_VERSIONS: dict[str, tuple[dict[str, Any] | None, Callable[[Tensors], None] | None, str]] = {
    "kernel7": ({"network": {"kernel": 7}}, None, "network.kernel=7 is wider than"),
    "hidden2e6": ({"network": {"hidden": 2_000_000}}, None, "network.hidden=2000000 is out of range"),
    "too_many_params": ({"network": {"hidden": 4096, "filters": 4096}}, None, "parameters (at most"),
    "unknown_field": ({"network": {"dropout": 0.5}}, None, "network.dropout: Extra inputs"),
    "ladder": ({"video": {"bitrates_kbps": [300, 200, 100, 50, 20, 10]}}, None, "strictly increasing"),
    "shape": (None, reshape, "tensor actor_head.weight has shape [5, 64], the network needs [6, 64]"),
    "missing": (None, drop, "missing ['critic_head.bias']"),
    "nan": (None, set_entry("actor_trunk.hidden.weight", float("nan")), "actor_trunk.hidden.weight holds 1 non"),
    "inf": (None, set_entry("critic_head.weight", float("inf")), "critic_head.weight holds 1 non-finite"),
    "overflow": (None, huge_head, "non-finite logits on"),
}


@pytest.mark.parametrize("name", sorted(BAD_VERSIONS))
def test_a_bad_checkpoint_is_refused_with_one_line_naming_the_problem(tmp_path: Path, name: str) -> None:
    meta, tensors, expected = BAD_VERSIONS[name]
    folder = publish(tmp_path, name, meta, tensors)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(folder, VIDEO)
    message = str(caught.value)
    assert expected in message
    assert str(folder) in message
    assert "\n" not in message
    registry = ModelRegistry(tmp_path, VIDEO, torch.device("cpu"))
    with pytest.raises(RefusedVersion) as refused:
        registry.load(name)
    assert str(refused.value).startswith(f"model version {name!r} refused: ")
    assert expected in str(refused.value)


def test_the_shipped_model_passes_and_the_probes_are_finite_states() -> None:
    states = probe_states(VIDEO, ObservationSpec())
    assert states.shape == (5, 6, ObservationSpec().width(VIDEO))
    assert np.isfinite(states).all()
    assert not states[0].any()  # the zero state
    assert load_checkpoint(DEFAULT_MODEL_DIR, VIDEO).model.n_levels == VIDEO.n_levels


def test_a_version_trained_on_another_history_length_is_refused(tmp_path: Path) -> None:
    publish(tmp_path, "v1", {"observation": {"spec": {**ObservationSpec().model_dump(), "history_len": 4}}})
    with pytest.raises(RefusedVersion, match=r"observation.shape \[6, 8\] does not match the spec \(6 x 6\)"):
        ModelRegistry(tmp_path, VIDEO, torch.device("cpu")).load("v1")


def test_a_version_is_served_states_in_its_own_observation_spec(tmp_path: Path) -> None:
    spec = ObservationSpec(history_padding=HistoryPadding.oldest, buffer_norm_s=20.0)
    publish(tmp_path, "v1", {"observation": {"spec": spec.model_dump(mode="json")}})
    settings = Settings(telemetry_db=None, models_dir=tmp_path)  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as client:
        service: DecisionService = client.app.state.service  # type: ignore[attr-defined]
        assert isinstance(service.slot.current, LoadedModel)
        assert service.slot.current.spec == spec
        submitted: list[np.ndarray] = []
        submit = service.batcher.submit
        service.batcher.submit = lambda state: (submitted.append(state), submit(state))[1]  # type: ignore[method-assign]
        assert client.post("/v1/sessions/a/decision", json=report()).json()["model_version"] == "v1"
    builder = ObservationBuilder(1, VIDEO, spec)
    builder.push(slice(None), quality=[1], buffer_s=[4.0], chunk_bytes=[int(VIDEO.chunk_bytes[1, 0])],
                 delay_ms=[800.0], chunk_index=[0], chunks_remaining=[VIDEO.n_chunks - 1],
                 next_chunk_bytes=[VIDEO.chunk_bytes[:, 1]])  # fmt: skip
    [state] = submitted
    np.testing.assert_allclose(state, builder.state()[0], rtol=1e-6)
    assert np.all(state[2] == state[2, -1])  # one chunk seen, repeated in every history column
    assert state[1, -1] == pytest.approx(4.0 / 20.0)  # the version's own buffer normalisation


def test_admin_activation_of_a_bad_version_answers_409_with_the_line(tmp_path: Path) -> None:
    publish(tmp_path, "v1")
    publish(tmp_path, "v2", {"network": {"kernel": 7}})
    publish(tmp_path, "v3", None, set_entry("actor_head.bias", float("nan")))
    (tmp_path / "ACTIVE").write_text("v1\n")
    settings = Settings(telemetry_db=None, admin_token=TOKEN, models_dir=tmp_path)  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as client:
        for version, problem in (("v2", "network.kernel=7"), ("v3", "actor_head.bias holds 1 non-finite")):
            reply = client.post(f"/admin/models/{version}/activate", headers=AUTH)
            assert reply.status_code == 409, reply.text
            detail = reply.json()["detail"]
            assert detail.startswith(f"model version {version!r} refused: ")
            assert problem in detail
        assert client.get("/admin/models", headers=AUTH).json()["serving"] == "v1"
        assert client.post("/v1/sessions/a/decision", json=report()).json()["model_version"] == "v1"
        assert "abr_registry_refused_total 2.0" in client.get("/metrics").text
        assert client.post("/admin/models/v9/activate", headers=AUTH).status_code == 404
    assert (tmp_path / "ACTIVE").read_text() == "v1\n"


def test_an_activation_that_cannot_be_recorded_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    publish(tmp_path, "v1")
    publish(tmp_path, "v2")
    (tmp_path / "ACTIVE").write_text("v1\n")
    settings = Settings(telemetry_db=None, admin_token=TOKEN, models_dir=tmp_path)  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as client:

        def disk_full(path: Path, data: bytes) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(registry_module, "write_atomic", disk_full)
        for url in ("/admin/models/v2/activate", "/admin/models/rollback"):
            reply = client.post(url, headers=AUTH)
            assert reply.status_code in (503, 409), reply.text
        reply = client.post("/admin/models/v2/activate", headers=AUTH)
        assert reply.status_code == 503
        assert "cannot record model version 'v2' as active" in reply.json()["detail"]
        assert client.get("/admin/models", headers=AUTH).json()["serving"] == "v1"
        assert client.post("/v1/sessions/a/decision", json=report()).json()["model_version"] == "v1"
        monkeypatch.undo()
        assert client.post("/admin/models/v2/activate", headers=AUTH).status_code == 200
        assert client.get("/admin/models", headers=AUTH).json()["serving"] == "v2"
    assert (tmp_path / "ACTIVE").read_text() == "v2\n"


@pytest.mark.parametrize("bad", ["kernel7", "hidden2e6", "nan"])
def test_start_up_with_active_naming_a_bad_version_serves_the_newest_good_one(
    tmp_path: Path, bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    publish(tmp_path, "v1")
    publish(tmp_path, "v2")
    meta, tensors, _ = BAD_VERSIONS[bad]
    publish(tmp_path, "v3", meta, tensors)
    (tmp_path / "ACTIVE").write_text("v3\n")
    settings = Settings(telemetry_db=None, models_dir=tmp_path)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="abr_server"), TestClient(create_app(settings)) as client:
        assert client.post("/v1/sessions/a/decision", json=report()).json()["model_version"] == "v2"
        assert client.get("/readyz").json()["model_version"] == "v2"
        assert "abr_registry_refused_total 1.0" in client.get("/metrics").text
    lines = [r.getMessage() for r in caplog.records if r.name == "abr_server"]
    assert len(lines) == 1  # one line: what was refused, why, and what serves instead
    assert lines[0].startswith("model version 'v3' refused: ")
    assert lines[0].endswith("; serving version 'v2' instead")
    assert (tmp_path / "ACTIVE").read_text() == "v3\n"  # the operator's choice is not rewritten


def test_without_any_good_version_the_fallback_rule_answers_until_one_is_activated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    publish(tmp_path, "v1", None, set_entry("actor_head.weight", float("nan")))
    publish(tmp_path, "v2", {"network": {"hidden": 2_000_000}})
    settings = Settings(telemetry_db=None, admin_token=TOKEN, models_dir=tmp_path)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="abr_server"), TestClient(create_app(settings)) as client:
        lines = [r.getMessage() for r in caplog.records if r.name == "abr_server"]
        assert [line.split(":")[0] for line in lines] == ["model version 'v2' refused", "model version 'v1' refused"]
        assert lines[-1].endswith("; no version can be served, the fallback rule answers every decision")
        decision = client.post("/v1/sessions/a/decision", json=report()).json()
        assert decision["policy"] == "fallback:bba"
        assert decision["model_version"] is None
        assert client.get("/readyz").json()["model_version"] is None
        assert client.get("/admin/models", headers=AUTH).json()["serving"] is None
        metrics = client.get("/metrics").text
        assert 'abr_fallbacks_total{reason="no_model"} 1.0' in metrics
        assert "abr_registry_refused_total 2.0" in metrics
        publish(tmp_path, "v3")
        assert client.post("/admin/models/v3/activate", headers=AUTH).json()["serving"] == "v3"
        assert client.post("/v1/sessions/b/decision", json=report()).json()["model_version"] == "v3"
        assert client.post("/admin/models/rollback", headers=AUTH).status_code == 409  # nothing served before


def service_on(root: Path) -> DecisionService:
    settings = Settings(telemetry_db=None, models_dir=root)  # type: ignore[arg-type]
    return DecisionService(settings, VIDEO, ModelRegistry(root, VIDEO, torch.device("cpu")), Metrics())


def counter(service: DecisionService, name: str) -> float:
    value = service.metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


def test_the_watcher_skips_a_bad_version_once_then_serves_a_good_one_published_after_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    publish(tmp_path, "v1")
    service = service_on(tmp_path)

    async def scenario() -> list[str | None]:
        served = [await service.poll_registry()]  # nothing new
        publish(tmp_path, "v2", {"network": {"kernel": 7}})
        served.append(await service.poll_registry())
        served.append(await service.poll_registry())  # v2 is not tried (nor logged) again
        publish(tmp_path, "v3", None, set_entry("critic_trunk.hidden.bias", float("inf")))
        publish(tmp_path, "v4")
        served.append(await service.poll_registry())  # v4, the newest new one, validates
        publish(tmp_path, "v5")
        publish(tmp_path, "v6", None, reshape)
        served.append(await service.poll_registry())  # v6 refused, then v5 served
        return served

    with caplog.at_level(logging.WARNING, logger="abr_server"):
        served = asyncio.run(scenario())
    assert served == [None, None, None, "v4", "v5"]
    assert service.slot.current.version == "v5"
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert [line.split(":")[0] for line in refusals] == ["model version 'v2' refused", "model version 'v6' refused"]
    assert counter(service, "abr_registry_refused_total") == 2.0
    assert (tmp_path / "ACTIVE").read_text() == "v5\n"


def test_the_watcher_survives_errors_counts_them_and_logs_each_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    publish(tmp_path, "v1")
    service = service_on(tmp_path)
    service.settings.watch_interval_s = 0.0  # the loop's sleep only yields; its polls are the stand-in below
    outcomes: list[BaseException | None] = [OSError("registry unreadable"), OSError("registry unreadable"),
                                            RuntimeError("unexpected"), None]  # fmt: skip

    async def scenario() -> None:
        done = asyncio.Event()
        polls = 0

        async def poll() -> str | None:
            nonlocal polls
            outcome = outcomes[min(polls, len(outcomes) - 1)]
            polls += 1
            if polls == len(outcomes):
                done.set()
            if outcome is not None:
                raise outcome
            return None

        service.poll_registry = poll  # type: ignore[method-assign]
        watcher = asyncio.create_task(service._watch())
        await done.wait()
        assert not watcher.done()  # still polling after three failures
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher

    with caplog.at_level(logging.ERROR, logger="abr_server"):
        asyncio.run(scenario())
    assert counter(service, "abr_registry_watch_errors_total") == 3.0
    lines = [r.getMessage() for r in caplog.records if "registry watch" in r.getMessage()]
    assert len(lines) == 2  # the same error twice in a row is logged once
    assert "OSError: registry unreadable" in lines[0]
    assert "RuntimeError: unexpected" in lines[1]


def test_a_failed_background_task_does_not_fail_the_shutdown(tmp_path: Path) -> None:
    publish(tmp_path, "v1")
    service = service_on(tmp_path)

    async def scenario() -> None:
        await service.start()

        async def dies() -> None:
            raise RuntimeError("boom")

        service._watcher = asyncio.create_task(dies())
        await asyncio.sleep(0)
        await service.stop()

    asyncio.run(scenario())


def nan_model() -> LoadedModel:
    """The shipped model served with NaN logits for every state (a broken bias past validation)."""
    broken = LoadedModel(load_checkpoint(DEFAULT_MODEL_DIR, VIDEO).model, "broken", torch.device("cpu"))
    broken.actor.c_bias[2] = float("nan")
    return broken


def test_non_finite_logits_fall_back_and_are_counted(tmp_path: Path) -> None:
    settings = Settings(telemetry_db=None)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        service: DecisionService = client.app.state.service  # type: ignore[attr-defined]
        service.slot.swap(nan_model())
        for index in range(2):
            decision = client.post("/v1/sessions/n/decision", json=report(index)).json()
            assert decision["policy"] == "fallback:bba"
            assert decision["model_version"] is None
        metrics = client.get("/metrics").text
        assert "abr_nonfinite_outputs_total 2.0" in metrics
        assert 'abr_fallbacks_total{reason="nonfinite_output"} 2.0' in metrics
        service.slot.swap(service.slot.previous)  # type: ignore[arg-type]
        assert client.post("/v1/sessions/m/decision", json=report()).json()["policy"] == "learned"


def test_only_the_non_finite_states_of_a_batch_fall_back() -> None:
    loaded = ModelRegistry(None, VIDEO, torch.device("cpu")).load_servable()
    states = probe_states(VIDEO, ObservationSpec())
    states[2, 1, -1] = np.inf  # a buffer the model cannot read
    levels = forward_levels(loaded, states)
    assert levels[2] == NONFINITE
    np.testing.assert_array_equal(np.delete(levels, 2), forward_levels(loaded, np.delete(states, 2, axis=0)))
    counted: list[int] = []

    async def scenario() -> list[object]:
        batcher = MicroBatcher(ModelSlot(loaded), max_batch=8, max_wait_s=0.0, inline=True,
                               on_nonfinite=counted.append)  # fmt: skip
        await batcher.start()
        futures = [batcher.submit(state) for state in states]
        results = await asyncio.gather(*futures, return_exceptions=True)
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    assert isinstance(results[2], NonFiniteOutput)
    assert [r for i, r in enumerate(results) if i != 2] == [(int(v), "default") for v in np.delete(levels, 2)]
    assert counted == [1]


def test_the_flag_column_wins_exactly_in_non_finite_rows() -> None:
    nan, inf = float("nan"), float("inf")
    logits = torch.tensor([[0.1, 2.0, -1.0], [nan, 0.0, 1.0], [0.0, inf, 0.0], [-5.0, -6.0, -4.0], [3e38, 0.0, 3e38],
                           [-inf, -inf, -inf], [1e30, 2e30, -1e30]])  # fmt: skip
    assert flag_nonfinite(logits).argmax(dim=-1).tolist() == [1, 3, 3, 2, 0, 3, 1]


def test_the_flagged_actor_the_cuda_graphs_capture_shares_weights_and_levels() -> None:
    loaded = ModelRegistry(None, VIDEO, torch.device("cpu")).load_servable()
    flagged = FlaggedActor(loaded.actor)
    assert flagged.a_weight.data_ptr() == loaded.actor.a_weight.data_ptr()  # no second copy of the weights
    states = probe_states(VIDEO, ObservationSpec())
    states[3, 0, 0] = np.nan
    with torch.inference_mode():
        levels = flagged(torch.from_numpy(states)).argmax(dim=-1).numpy()
    expected = forward_levels(loaded, states)
    assert expected[3] == NONFINITE
    np.testing.assert_array_equal(np.where(levels == VIDEO.n_levels, NONFINITE, levels), expected)


def test_no_model_answers_every_state_with_an_error_for_the_fallback() -> None:
    async def scenario() -> BaseException | tuple[int, str]:
        batcher = MicroBatcher(ModelSlot(NoModel(torch.device("cpu"))), max_batch=4, max_wait_s=0.0, inline=True)
        await batcher.start()
        [result] = await asyncio.gather(batcher.submit(probe_states(VIDEO, ObservationSpec())[1]),
                                        return_exceptions=True)  # fmt: skip
        await batcher.stop()
        return result

    result = asyncio.run(scenario())
    assert isinstance(result, Exception)
    assert getattr(result, "reason", None) == "no_model"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")
def test_cuda_graphs_flag_non_finite_rows() -> None:
    registry = ModelRegistry(None, VIDEO, torch.device("cuda"), max_batch=8)
    loaded = registry.load_servable()
    assert loaded.graphs is not None
    states = probe_states(VIDEO, ObservationSpec())
    good = forward_levels(loaded, states)
    assert (good >= 0).all()
    states[1, 2, -1] = np.nan
    levels = forward_levels(loaded, states)
    assert levels[1] == NONFINITE
    np.testing.assert_array_equal(np.delete(levels, 1), np.delete(good, 1))
    broken = LoadedModel(loaded.model, "broken", torch.device("cuda"))
    broken.actor.c_bias[0] = float("inf")
    broken.prepare(8)
    assert (forward_levels(broken, states) == NONFINITE).all()


def test_decide_with_a_report_goes_through_the_non_finite_fallback(tmp_path: Path) -> None:
    publish(tmp_path, "v1")
    service = service_on(tmp_path)
    service.slot.swap(nan_model())

    async def scenario() -> tuple[str, str | None]:
        await service.start()
        decision = await service.decide("s", ChunkReport(**report()), api="v1")  # type: ignore[arg-type]
        await service.stop()
        return decision.policy, decision.model_version

    assert asyncio.run(scenario()) == ("fallback:bba", None)
    assert counter(service, "abr_nonfinite_outputs_total") == 1.0


def test_a_layer_normed_version_is_served_the_levels_of_its_eager_actor(tmp_path: Path) -> None:
    from policy.learning.checkpoint import save_checkpoint
    from policy.learning.config import NetworkConfig
    from policy.learning.network import ActorCritic

    spec = ObservationSpec()
    torch.manual_seed(3)
    model = ActorCritic(spec.width(VIDEO), VIDEO.n_levels, NetworkConfig(hidden=16, filters=8, layer_norm=True))
    with torch.no_grad():  # LayerNorm scales and shifts away from 1 and 0
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn(p.shape))
    save_checkpoint(tmp_path / "v1", model, VIDEO, spec, qoe_kind="lin", train_config={}, progress={})
    loaded = ModelRegistry(tmp_path, VIDEO, torch.device("cpu")).load("v1")
    states = probe_states(VIDEO, spec)
    with torch.no_grad():
        eager = model.eval().logits(torch.as_tensor(states)).argmax(dim=-1).numpy()
    np.testing.assert_array_equal(forward_levels(loaded, states), eager)
