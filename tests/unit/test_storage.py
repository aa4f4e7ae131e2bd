"""Storage URIs through pyarrow.fs, against a real S3 API (moto's server on 127.0.0.1)."""

from __future__ import annotations

import json

import pytest

from llmft import storage
from llmft.errors import LlmftError
from tests.support import closed_port
from tests.support.s3 import s3_server  # noqa: F401  (fixture)


def test_uri_paths_keep_the_query_at_the_end():
    uri = "s3://bucket/runs?endpoint_override=http://127.0.0.1:9000"
    assert storage.is_uri(uri) and storage.is_uri("gs://b") and not storage.is_uri("/tmp/x")
    assert not storage.is_uri("s3-notes/x")
    assert storage.join(uri, "r1", "metrics.jsonl") == "s3://bucket/runs/r1/metrics.jsonl?endpoint_override=http://127.0.0.1:9000"
    assert storage.join("s3://bucket/runs/", "r1") == "s3://bucket/runs/r1"
    assert storage.join("outputs", "r1") == "outputs/r1"
    assert storage.parent(storage.join(uri, "r1")) == uri
    assert storage.basename(storage.join(uri, "r1")) == "r1"
    assert storage.with_suffix(storage.join(uri, "a.json"), ".predictions.jsonl") == \
        storage.join(uri, "a.predictions.jsonl")
    assert "hunter2" not in storage.shown("s3://b/p?endpoint_override=http://h:1&secret_key=hunter2")


def test_files_round_trip_and_list(s3_server):  # noqa: F811
    bucket = s3_server.new_bucket()
    run = s3_server.uri(bucket, "runs/r1")
    storage.write_text(storage.join(run, "metrics.jsonl"), "a\n")
    storage.write_text(storage.join(run, "checkpoint_1", "x.json"), "{}")
    assert storage.read_text(storage.join(run, "metrics.jsonl")) == "a\n"
    assert storage.exists(run) and not storage.exists(storage.join(run, "nothing"))
    assert [storage.basename(f) for f in storage.list_folders(run, prefix="checkpoint_")] == ["checkpoint_1"]
    assert storage.list_files(run) == {"metrics.jsonl", "checkpoint_1/x.json"}
    with pytest.raises(LlmftError, match="does not exist"):
        storage.read_text(storage.join(run, "nothing"))


def test_output_folder_uploads_whole_or_not_at_all(s3_server, monkeypatch):  # noqa: F811
    bucket = s3_server.new_bucket()
    out = s3_server.uri(bucket, "model")
    with storage.output_folder(out, last=("done.json",)) as tmp:
        (tmp / "weights.bin").write_bytes(b"w" * 10)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.txt").write_text("a")
        (tmp / "done.json").write_text("{}")
    assert s3_server.keys(bucket) == ["model/done.json", "model/sub/a.txt", "model/weights.bin"]

    # An error inside the block: nothing is uploaded.
    with pytest.raises(RuntimeError), storage.output_folder(s3_server.uri(bucket, "failed")) as tmp:
        (tmp / "weights.bin").write_bytes(b"w")
        raise RuntimeError("export failed")
    assert not any(k.startswith("failed/") for k in s3_server.keys(bucket))

    # The upload breaks on the marker (uploaded last): the files already uploaded are removed.
    import pyarrow.fs as pafs

    real_copy = pafs.copy_files

    def copy_breaking_on_marker(source, destination, **kwargs):
        if source.endswith("done.json"):
            raise OSError("connection reset")
        return real_copy(source, destination, **kwargs)

    monkeypatch.setattr(pafs, "copy_files", copy_breaking_on_marker)
    with pytest.raises(LlmftError), storage.output_folder(s3_server.uri(bucket, "broken"), last=("done.json",)) as tmp:
        (tmp / "weights.bin").write_bytes(b"w")
        (tmp / "done.json").write_text("{}")
    assert not any(k.startswith("broken/") for k in s3_server.keys(bucket))
    monkeypatch.undo()

    # A second export over the first replaces it: files it lacks are removed.
    with storage.output_folder(out, last=("done.json",)) as tmp:
        (tmp / "weights.bin").write_bytes(b"v")
        (tmp / "done.json").write_text("{}")
    assert [k for k in s3_server.keys(bucket) if k.startswith("model/")] == ["model/done.json", "model/weights.bin"]


def test_cached_copy_downloads_once_and_again_when_the_folder_changes(s3_server, tmp_path, monkeypatch):  # noqa: F811
    bucket = s3_server.new_bucket()
    model = s3_server.uri(bucket, "run/model")
    storage.write_text(storage.join(model, "config.json"), json.dumps({"a": 1}))
    downloads = []
    real_download = storage._download
    monkeypatch.setattr(storage, "_download", lambda uri, local: (downloads.append(uri), real_download(uri, local)))
    first = storage.cached_copy(model, tmp_path)
    assert json.loads((first / "config.json").read_text()) == {"a": 1}
    assert storage.cached_copy(model, tmp_path) == first and len(downloads) == 1
    storage.write_text(storage.join(model, "config.json"), json.dumps({"a": 22}))
    second = storage.cached_copy(model, tmp_path)
    assert second != first and json.loads((second / "config.json").read_text()) == {"a": 22}
    with pytest.raises(LlmftError, match="holds no files"):
        storage.cached_copy(s3_server.uri(bucket, "nothing"), tmp_path)


def test_unusable_storage_is_refused_in_seconds(s3_server, monkeypatch, tmp_path):  # noqa: F811
    bucket = s3_server.new_bucket()
    storage.check_reachable(s3_server.uri(bucket, "runs"), "output.dir")
    storage.check_reachable(str(tmp_path), "output.dir")  # local paths pass
    with pytest.raises(LlmftError, match="bucket 'no-such-bucket' does not exist"):
        storage.check_reachable(s3_server.uri("no-such-bucket", "runs"), "output.dir")
    unreachable = f"s3://{bucket}/runs?endpoint_override=http://127.0.0.1:{closed_port()}"
    with pytest.raises(LlmftError, match="cannot reach the storage endpoint"):
        storage.check_reachable(unreachable, "output.dir")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(LlmftError, match="no AWS credentials"):
        storage.check_reachable(s3_server.uri(bucket, "runs"), "output.dir")
