"""The container end to end (scripts/e2e.sh): both images built with podman from the local base image,
the smoke tuning run exports into a volume, the serving container answers a Predict from the host and a
real Prometheus scrapes it. Marker ``e2e`` (``pytest -m e2e``); needs root, podman and debootstrap."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.support import REPO

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(3600)  # cold builds download TensorFlow twice; warm runs take a few minutes
def test_e2e_script_passes() -> None:
    missing = [
        t for t in ("podman", "debootstrap", "prometheus", "prometheus-pushgateway") if not shutil.which(t)
    ]
    assert not missing, f"e2e needs {missing}: run scripts/setup.sh e2e (as root)"
    result = subprocess.run(
        [str(REPO / "scripts" / "e2e.sh")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3500,
        check=False,
    )
    output = result.stdout + result.stderr
    print(output[-6000:])
    assert result.returncode == 0, output[-4000:]
    assert re.search(r"E2E PASSED in \d+s", output.strip().splitlines()[-1])
    # serving.client classified the MNIST test images through the container.
    accuracy = re.search(r"# accuracy ([0-9.]+)", output)
    assert accuracy and float(accuracy.group(1)) > 0.5, "the smoke model should beat chance clearly"
    for name in ("mnist-serve", "mnist-tune"):
        assert re.search(rf"image {name}\s+\d+ MB", output), f"no size printed for {name}"
    assert "tune success pushed" in output and "requests scraped" in output
