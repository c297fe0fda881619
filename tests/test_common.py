"""The shared primitives: atomic writes, the 95% interval and its t quantile, the unit factors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from abr_common.files import write_atomic
from abr_common.stats import mean_ci95, student_t_quantile
from abr_common.units import BITS_PER_BYTE, BITS_PER_KBIT, BITS_PER_MBIT, BYTES_PER_MB, KBIT_PER_MBIT, MS_PER_S


def test_t_quantile_closed_forms() -> None:
    # df = 1 is the Cauchy distribution, df = 2 has t = (2p - 1) sqrt(2 / (1 - (2p - 1)^2)).
    assert student_t_quantile(0.975, 1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-13)
    assert student_t_quantile(0.975, 2) == pytest.approx(0.95 * math.sqrt(2 / (1 - 0.95**2)), rel=1e-13)
    assert student_t_quantile(0.9, 1) == pytest.approx(math.tan(math.pi * 0.4), rel=1e-13)


def test_t_quantile_tables_and_limit() -> None:
    # Printed two-sided 95% values (df 4, 10, 30), and the normal 1.959964 plus (z^3 + z) / (4 df) for large df.
    assert student_t_quantile(0.975, 4) == pytest.approx(2.776445, abs=1e-6)
    assert student_t_quantile(0.975, 10) == pytest.approx(2.228139, abs=1e-6)
    assert student_t_quantile(0.975, 30) == pytest.approx(2.042272, abs=1e-6)
    assert student_t_quantile(0.975, 1e6) == pytest.approx(1.959964 + 2.4e-6, abs=1e-7)
    assert student_t_quantile(0.025, 7) == -student_t_quantile(0.975, 7)
    assert student_t_quantile(0.5, 3) == 0.0
    with pytest.raises(ValueError, match="probability"):
        student_t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="df"):
        student_t_quantile(0.975, 0)


def test_mean_ci95_by_hand() -> None:
    # [1, 2, 3]: mean 2, s = 1, n = 3, so the half-width is t_{2, 0.975} / sqrt(3) = 4.302653 / 1.732051.
    mean, half = mean_ci95([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(2.484138, abs=1e-6)
    mean, half = mean_ci95(np.array([4.0, 4.0]))
    assert (mean, half) == (4.0, 0.0)
    assert math.isnan(mean_ci95([1.0])[1])
    assert math.isnan(mean_ci95([1.0, math.inf])[1])


def test_write_atomic_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.json"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]
    with pytest.raises(IsADirectoryError):
        write_atomic(tmp_path, b"x")


def test_unit_factors() -> None:
    assert BYTES_PER_MB * BITS_PER_BYTE == 8 * BITS_PER_MBIT
    assert KBIT_PER_MBIT * BITS_PER_KBIT == BITS_PER_MBIT
    assert MS_PER_S == 1000.0
