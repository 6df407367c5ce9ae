"""The model-repository contract: version listing, atomic publish, metadata round trip."""

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import modelrepo
from tests.support import REPO


def _metadata(name="mnist"):
    return modelrepo.ModelMetadata(
        model_name=name, tuner="random", final_model="retrain", hyperparameters={"units_0": 64}
    )


def _payload(staging):
    (staging / modelrepo.SAVED_MODEL_FILE).write_bytes(b"pb")


def test_publish_assigns_increasing_versions_and_stamps_metadata(tmp_path):
    assert modelrepo.list_versions(tmp_path, "mnist") == []
    v1, p1 = modelrepo.publish(tmp_path, _metadata(), _payload)
    v2, p2 = modelrepo.publish(tmp_path, _metadata(), _payload)
    assert (v1, v2) == (1, 2)
    assert p2 == tmp_path / "mnist" / "2"
    assert modelrepo.read_metadata(p2).version == 2
    assert modelrepo.list_versions(tmp_path, "mnist") == [1, 2]
    assert modelrepo.list_models(tmp_path) == ["mnist"]
    assert p2.stat().st_mode & 0o777 == 0o755  # readable by a serving process of another user


def test_listing_ignores_staging_and_non_numeric_entries(tmp_path):
    model = tmp_path / "mnist"
    for name in ("3", "10", "0", "007", ".staging-abc", "latest"):
        (model / name).mkdir(parents=True)
    (model / "11").write_text("a file, not a version")
    assert modelrepo.list_versions(tmp_path, "mnist") == [3, 10]


def test_failed_payload_leaves_no_version_and_no_staging(tmp_path):
    def crash(staging):
        _payload(staging)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        modelrepo.publish(tmp_path, _metadata(), crash)
    assert modelrepo.list_versions(tmp_path, "mnist") == []
    assert list((tmp_path / "mnist").iterdir()) == []


def test_payload_without_saved_model_is_rejected(tmp_path):
    with pytest.raises(modelrepo.ModelRepositoryError, match="saved_model.pb"):
        modelrepo.publish(tmp_path, _metadata(), lambda staging: None)
    assert modelrepo.list_versions(tmp_path, "mnist") == []


def test_concurrent_publishers_get_distinct_versions(tmp_path):
    versions = []
    threads = [
        threading.Thread(
            target=lambda: versions.append(modelrepo.publish(tmp_path, _metadata(), _payload)[0])
        )
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(versions) == list(range(1, 9))
    for version in versions:
        assert modelrepo.read_metadata(tmp_path / "mnist" / str(version)).version == version


def test_bad_model_name_and_bad_metadata_are_named(tmp_path):
    with pytest.raises(modelrepo.ModelRepositoryError, match="not a valid folder name"):
        modelrepo.model_dir(tmp_path, "../escape")
    version = tmp_path / "mnist" / "1"
    version.mkdir(parents=True)
    with pytest.raises(modelrepo.ModelRepositoryError, match="missing"):
        modelrepo.read_metadata(version)
    (version / modelrepo.METADATA_FILE).write_text('{"model_name": "mnist"}')
    with pytest.raises(modelrepo.ModelRepositoryError, match="schema"):
        modelrepo.read_metadata(version)


def _crash_mid_publish(root):
    """A writer killed while it writes its payload (no ``finally`` runs): its staging folder stays."""
    code = textwrap.dedent(
        f"""
        import os, modelrepo
        def payload(staging):
            (staging / "variables").mkdir()
            os._exit(9)
        modelrepo.publish({str(root)!r}, modelrepo.ModelMetadata(model_name="mnist", tuner="random",
                          final_model="retrain", hyperparameters={{}}), payload)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60, check=False)
    assert result.returncode == 9
    (left,) = (root / "mnist").glob(f"{modelrepo.STAGING_PREFIX}*")
    return left


def test_a_publish_removes_a_crashed_writers_staging_but_not_a_concurrent_ones(tmp_path):
    crashed = _crash_mid_publish(tmp_path)
    hours_ago = time.time() - 2 * 3600
    os.utime(crashed, (hours_ago, hours_ago))  # older than STALE_STAGING_SECONDS (one hour)
    concurrent = tmp_path / "mnist" / f"{modelrepo.STAGING_PREFIX}writing-now"  # another writer's, fresh
    concurrent.mkdir()
    version, _ = modelrepo.publish(tmp_path, _metadata(), _payload)
    assert version == 1
    assert not crashed.exists()
    assert concurrent.is_dir()
    assert sorted(entry.name for entry in (tmp_path / "mnist").iterdir()) == sorted(["1", concurrent.name])
