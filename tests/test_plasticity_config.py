"""Per-method plasticity configs: the union on ``method``, flat records from before the split, clear errors."""

from __future__ import annotations

import pytest

from abr_server.retrain.loop import RetrainConfig
from plasticity.bench import BenchConfig
from plasticity.config import (
    FLAT_DEFAULTS,
    CbpConfig,
    NoneConfig,
    ResetConfig,
    ResinConfig,
    method_fields,
    parse_plasticity,
)
from plasticity.names import METHODS

OLD_METHODS = ("none", "reset", "redo", "shrink-perturb", "cbp", "resin", "fresh")


@pytest.mark.parametrize("method", OLD_METHODS)
def test_a_flat_record_at_its_defaults_loads_as_its_method(method: str) -> None:
    config = parse_plasticity({**FLAT_DEFAULTS, "method": method})
    assert config.method == method
    assert set(config.model_dump()) == method_fields(method)
    assert parse_plasticity(config.model_dump()) == config  # a new record reads back as itself


def test_a_flat_record_keeps_its_methods_own_settings() -> None:
    old = {**FLAT_DEFAULTS, "method": "reset", "reset_every_updates": 40, "tau_forward": 0.1, "seed": 3}
    assert parse_plasticity(old) == ResetConfig(reset_every_updates=40, tau_forward=0.1, seed=3)


def test_another_methods_field_set_on_purpose_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"field rule='both' does not apply to method 'reset' \(used by: resin\)"):
        parse_plasticity({**FLAT_DEFAULTS, "method": "reset", "rule": "both"})


def test_unknown_fields_and_methods_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown field 'tau' for method 'cbp'") as err:
        parse_plasticity({"method": "cbp", "tau": 0.1})
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unknown plasticity method 'magic'"):
        parse_plasticity({"method": "magic"})
    with pytest.raises(ValueError, match="'method' is needed"):
        parse_plasticity({"tau_forward": 0.1})
    with pytest.raises(ValueError, match="reset_every_updates"):
        parse_plasticity({"method": "reset", "reset_every_updates": 0})


def test_every_method_has_a_config() -> None:
    assert {parse_plasticity({"method": m}).method for m in METHODS} == set(METHODS)


def test_a_retrain_config_written_with_the_flat_plasticity_config_still_loads() -> None:
    old = RetrainConfig().model_dump(mode="json")
    old["plasticity"] = {**FLAT_DEFAULTS, "method": "resin", "every_updates": 1}
    assert RetrainConfig.model_validate(old).plasticity == ResinConfig(every_updates=1)
    assert RetrainConfig().plasticity == ResinConfig()


def test_the_bench_gives_each_method_the_shared_fields_it_has() -> None:
    bench = BenchConfig(plasticity={"every_updates": 2, "batch_size": 64}, method_overrides={"cbp": {"cbp_decay": 0.5}})
    assert bench.method_config("none", 3) == NoneConfig(batch_size=64, seed=3)
    assert bench.method_config("resin", 3) == ResinConfig(every_updates=2, batch_size=64, seed=3)
    assert bench.method_config("cbp", 1) == CbpConfig(batch_size=64, seed=1, cbp_decay=0.5)
    with pytest.raises(ValueError, match="no plasticity method has the field"):
        BenchConfig(plasticity={"every_update": 2})
    with pytest.raises(ValueError, match=r"field shrink=0\.5 does not apply to method 'cbp'"):
        BenchConfig(method_overrides={"cbp": {"shrink": 0.5}}).method_config("cbp", 1)


def test_the_bench_runs_every_method_with_shared_settings() -> None:
    bench = BenchConfig(methods=list(METHODS), plasticity={"every_updates": 1, "diagnose_every_updates": 1})
    for method in METHODS:
        config = bench.method_config(method, 2)
        assert (config.method, config.seed, config.diagnose_every_updates) == (method, 2, 1)


def test_trac_discounts_must_lie_in_the_unit_interval() -> None:
    assert parse_plasticity({"method": "trac", "betas": [0.9, 0.99]}).betas == (0.9, 0.99)  # type: ignore[union-attr]
    with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\]"):
        parse_plasticity({"method": "trac", "betas": [0.9, 1.5]})
