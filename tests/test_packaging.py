"""The Dockerfile installs exactly as the README's set-up does (no Docker engine here to build it)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_dockerfile_uses_the_readme_set_up() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    readme = (ROOT / "README.md").read_text()
    make_lines = [line for line in dockerfile.splitlines() if line.startswith("RUN make ")]
    assert len(make_lines) == 1
    assert make_lines[0].startswith("RUN make PYTHON=python3 ")
    assert make_lines[0].endswith(" install")
    docker_torch = re.search(r'^ARG TORCH_SPEC="([^"]+)"', dockerfile, flags=re.M)
    make_torch = re.search(r"^TORCH_SPEC \?= (.+)$", makefile, flags=re.M)
    assert docker_torch is not None
    assert make_torch is not None
    assert docker_torch.group(1) == make_torch.group(1).strip()
    assert "make demo" in readme
    assert "make test" in readme
    assert "USER abr" in dockerfile
    assert "HEALTHCHECK" in dockerfile
    assert '"abr", "serve"' in dockerfile


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".venv", "runs", ".git"):
        assert path in ignored
