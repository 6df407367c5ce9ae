"""The draw-a-digit page in a real browser: Debian's chromium driven by Selenium replays pen strokes.

Needs ``chromium``, ``chromium-driver`` and ``curl`` (scripts/setup.sh dev installs them); fails when they
are missing. The default tests train a small model on the same strokes rendered with PIL
(``tests/support/drawing.py``); one of them also has Triton's gRPC client and curl call the same running
service. The ``slow`` one serves a model trained on the official MNIST files (``MNIST_DATA_DIR``), which
checks that the page's preprocessing matches the way MNIST was made.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import modelrepo
from tests.support import REPO, wait_for
from tests.support.drawing import CANVAS, jittered, training_set
from tests.support.serving import metadata, publish_copy, triton_client_answer, wait_serving
from tests.support.tools import require_tools

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOT = REPO / "docs" / "images" / "draw-page.png"


@pytest.fixture(scope="module")
def browser() -> Iterator:
    require_tools("chromium", "chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=900,720"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def export(model, root: Path) -> Path:
    from jobs.export import export_model

    return export_model(model, root, metadata(val_accuracy=0.99))[1]


@pytest.fixture(scope="module")
def stroke_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An exported MLP trained on rendered strokes, the kind of digits the page's test draws."""
    images, labels = training_set(150, seed=1)
    model = mlp(128)
    model.fit(images, labels, epochs=15, batch_size=64, verbose=0)
    return export(model, tmp_path_factory.mktemp("stroke-model"))


def serve_strokes(start_server, stroke_model: Path, tmp_path: Path):
    root = tmp_path / "models"
    publish_copy(stroke_model, root)
    server = start_server(model_root=root)
    wait_serving(server.target)
    return server


def mlp(units: int):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input(modelrepo.IMAGE_SHAPE),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Flatten(),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def draw(driver, strokes) -> None:
    """Replay strokes (canvas pixels) as real pointer input: press, move in small steps, release."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    pad = driver.find_element(By.ID, "pad")
    actions = ActionChains(driver, duration=5)

    def offset(x: float, y: float) -> tuple[int, int]:  # from the element's centre
        return round(x - CANVAS / 2), round(y - CANVAS / 2)

    for stroke in strokes:
        actions.move_to_element_with_offset(pad, *offset(*stroke[0])).click_and_hold()
        for x, y in stroke[1:]:
            actions.move_to_element_with_offset(pad, *offset(x, y))
        actions.release()
    actions.perform()


def answer(driver) -> dict:
    """Wait until the page shows the answer for the current drawing, then read it from the page."""
    state = (
        "return document.getElementById('pad').dataset.drawn"
        " === document.getElementById('digit').dataset.answered;"
    )
    wait_for(lambda: driver.execute_script(state), 20, "the page's answer")
    return driver.execute_script(
        """
        const seen = document.getElementById('seen').getContext('2d').getImageData(0, 0, 28, 28).data;
        let ink = 0;
        for (let i = 0; i < seen.length; i += 4) ink += seen[i];
        return {
          digit: document.getElementById('digit').textContent,
          bars: [...document.querySelectorAll('#bars li')].map(li => Number(li.dataset.p)),
          widths: [...document.querySelectorAll('#bars .fill')].map(f => f.style.width),
          model: document.getElementById('model-name').textContent,
          version: document.getElementById('model-version').textContent,
          ink: ink,
        };
        """
    )


def replay_digits(driver, url: str, variants: int, seed: int) -> list[tuple[int, dict]]:
    from selenium.webdriver.common.by import By

    driver.get(url)
    wait_for(lambda: driver.find_element(By.ID, "model-version").text not in ("", "\u2013"), 20, "model info")
    rng = np.random.default_rng(seed)
    results = []
    for variant in range(variants):
        for digit in range(10):
            driver.find_element(By.ID, "clear").click()
            draw(driver, jittered(digit, rng, strength=0.7 if variant == 0 else 1.0))
            results.append((digit, answer(driver)))
    return results


def check_page(driver, url: str, results: list[tuple[int, dict]], least: float) -> None:
    recognised = [digit for digit, shown in results if shown["digit"] == str(digit)]
    misses = [(digit, shown["digit"]) for digit, shown in results if shown["digit"] != str(digit)]
    assert len(recognised) >= least * len(results), f"recognised {len(recognised)}/{len(results)}: {misses}"
    for _, shown in results:
        assert sum(shown["bars"]) == pytest.approx(1, abs=1e-4)
        assert all(width.endswith("%") for width in shown["widths"])
        assert (shown["model"], shown["version"]) == ("mnist", "1")
        assert shown["ink"] > 0  # the 28x28 image the model saw is drawn
    calls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    infer = [call for call in calls if call.endswith("/v2/models/mnist/infer")]
    assert len(infer) >= len(results), calls[-5:]
    others = [call for call in calls if not call.startswith(url)]
    assert not others, f"the page called another origin: {others}"


def test_drawn_digits_are_recognised_in_chromium(browser, start_server, stroke_model, tmp_path):
    server = serve_strokes(start_server, stroke_model, tmp_path)
    url = f"{server.base_url}/"
    results = replay_digits(browser, url, variants=2, seed=7)
    check_page(browser, url, results, least=0.8)
    # The served model answered every call over HTTP, through the same metrics as gRPC.
    registry = server.server.metrics.registry
    assert registry.get_sample_value(
        "digits_requests_total", {"protocol": "http", "method": "v2.ModelInfer", "code": "OK"}
    ) >= len(results)
    # Clear empties the page.
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, "clear").click()
    assert browser.find_element(By.ID, "digit").text == "\u2013"
    draw(browser, jittered(3, np.random.default_rng(3), strength=0.5))
    answer(browser)
    time.sleep(0.5)  # the bars' width transition
    widest = browser.execute_script(
        "return Math.max(...[...document.querySelectorAll('#bars .fill')]"
        ".map(f => f.getBoundingClientRect().width));"
    )
    assert widest > 100  # the most likely digit's bar is drawn (pixels)
    shot = Path(os.environ.get("DIGITS_PAGE_SCREENSHOT", tmp_path / "draw-page.png"))
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot))


def curl(*args: str) -> tuple[int, dict]:
    """The real curl binary: (HTTP status, JSON body)."""
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "30", "-w", "\\n%{http_code}", *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    body, _, status = result.stdout.rpartition("\n")
    return int(status), json.loads(body)


def test_tritonclient_curl_and_chromium_get_answers_from_one_service(
    browser, start_server, stroke_model, tmp_path
):
    """Issue 10's "done when": a Triton/KServe client, curl and a headless browser on one running server."""
    require_tools("curl")
    server = serve_strokes(start_server, stroke_model, tmp_path)
    images, labels = training_set(3, seed=2)  # strokes the model did not see
    images = np.clip(np.rint(images), 0, 255).astype(np.uint8)

    # Triton's own gRPC client, in its own process (tests/support/triton_client.py).
    by_triton = triton_client_answer(server.target, images, tmp_path)
    assert by_triton["model_ready"] and by_triton["fp32"]["model_version"] == "1"
    triton_classes = np.asarray(by_triton["fp32"]["classes"])
    assert np.mean(triton_classes == labels) >= 0.8, (triton_classes, labels)

    # curl: v2 REST and TF Serving REST give the same classes; a bad shape is a 400 naming it.
    (tmp_path / "v2.json").write_text(
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "images",
                        "datatype": "UINT8",
                        "shape": [len(images), 28, 28],
                        "data": images.ravel().tolist(),
                    }
                ]
            }
        )
    )
    json_post = ("-H", "Content-Type: application/json", "--data-binary")
    status, v2 = curl(*json_post, f"@{tmp_path / 'v2.json'}", f"{server.base_url}/v2/models/mnist/infer")
    assert status == 200, v2
    outputs = {output["name"]: output["data"] for output in v2["outputs"]}
    np.testing.assert_array_equal(outputs["classes"], triton_classes)
    (tmp_path / "tfs.json").write_text(json.dumps({"instances": images.tolist()}))
    status, tfs = curl(*json_post, f"@{tmp_path / 'tfs.json'}", f"{server.base_url}/v1/models/mnist:predict")
    assert status == 200, tfs
    np.testing.assert_array_equal([p["classes"] for p in tfs["predictions"]], triton_classes)
    bad = json.dumps({"instances": [[0.0] * 27]})
    status, error = curl(*json_post, bad, f"{server.base_url}/v1/models/mnist:predict")
    assert status == 400 and "shape" in error["error"], error
    assert curl(f"{server.base_url}/v2/models/mnist/ready")[0] == 200

    # Chromium: the page, on the same server.
    url = f"{server.base_url}/"
    check_page(browser, url, replay_digits(browser, url, variants=1, seed=5), least=0.8)

    # One service answered all three: its metrics count both protocols.
    registry = server.server.metrics.registry
    count = registry.get_sample_value
    assert count("digits_requests_total", {"protocol": "grpc", "method": "v2.ModelInfer", "code": "OK"}) >= 3
    assert count("digits_requests_total", {"protocol": "http", "method": "v2.ModelInfer", "code": "OK"}) >= 11


@pytest.mark.slow
def test_drawn_digits_are_recognised_by_a_model_trained_on_mnist(browser, start_server, tmp_path):
    """The page's preprocessing matches MNIST's: a model that saw only the official images reads strokes."""
    from serving.client import read_idx

    data = Path(os.environ.get("MNIST_DATA_DIR", ""))
    if not (data / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(
            f"no MNIST files in {str(data)!r}: set MNIST_DATA_DIR to the official files", pytrace=False
        )
    images = read_idx(data / "train-images-idx3-ubyte.gz").astype(np.float32)
    labels = read_idx(data / "train-labels-idx1-ubyte.gz")
    model = mlp(256)
    model.fit(images, labels, epochs=3, batch_size=128, verbose=0)
    root = tmp_path / "models"
    export(model, root)
    server = start_server(model_root=root)
    wait_serving(server.target)
    url = f"{server.base_url}/"
    check_page(browser, url, replay_digits(browser, url, variants=2, seed=11), least=0.8)
