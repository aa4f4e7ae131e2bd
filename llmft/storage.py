"""Where runs read and write: a local folder, a shared filesystem, or an object store URI.

Every path a run writes (checkpoints, metrics, the exported model, eval results) may be a local
path or a URI that pyarrow.fs and Ray Train accept: `s3://bucket/prefix`, `gs://bucket/prefix`,
and `s3://bucket/prefix?endpoint_override=http://host:port` for S3-compatible stores (MinIO,
Ceph, moto). pyarrow.fs does all the I/O; credentials come from the environment in the usual
way (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance role; Google's
application default credentials) and are never printed.

An object store has no rename, so writes are made safe differently than on disk: one object is
written in a single PUT (or a multipart upload that appears only when complete), and a folder
is uploaded with its marker file last (readers check for it) and removed again on failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from llmft.errors import LlmftError
from llmft.files import atomic_folder, write_atomic

SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs")
_SECRET_WORDS = ("key", "secret", "token", "password", "sas")


def is_uri(path: str | os.PathLike) -> bool:
    """True for an object-store URI (s3://, gs://, ...), false for a local or shared-filesystem path."""
    return str(path).partition("://")[0] in SCHEMES and "://" in str(path)


def join(base: str, *names: str) -> str:
    """`base/name/...` for a folder or a URI; a URI's query (e.g. endpoint_override) stays at the end."""
    if not is_uri(base):
        return str(Path(base, *names))
    parts = urlsplit(base)
    path = "/".join([parts.path.rstrip("/"), *(n.strip("/") for n in names)])
    return urlunsplit(parts._replace(path=path))


def parent(uri: str) -> str:
    """The folder holding `uri` (a path or a URI; a URI keeps its query)."""
    if not is_uri(uri):
        return str(Path(uri).parent)
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/").rsplit("/", 1)[0]))


def with_suffix(uri: str, suffix: str) -> str:
    """`uri` with its file suffix replaced, as Path.with_suffix (a URI keeps its query)."""
    if not is_uri(uri):
        return str(Path(uri).with_suffix(suffix))
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path=str(Path(parts.path).with_suffix(suffix))))


def basename(uri: str | os.PathLike) -> str:
    """The last name in a path or URI (`s3://b/runs/r1?endpoint_override=...` -> `r1`)."""
    return Path(urlsplit(str(uri)).path if is_uri(uri) else str(uri)).name


def shown(uri: str) -> str:
    """`uri` for messages: query values that could be secrets are replaced by ***."""
    if not is_uri(uri):
        return str(uri)
    parts = urlsplit(uri)
    query = [(k, "***" if any(w in k.lower() for w in _SECRET_WORDS) else v) for k, v in parse_qsl(parts.query)]
    return urlunsplit(parts._replace(query=urlencode(query, safe=":/")))


def resolve(uri: str | os.PathLike):
    """The pyarrow filesystem and the path inside it for a local path or a URI."""
    import pyarrow.fs as pafs

    if not is_uri(uri):
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().absolute())
    try:
        return pafs.FileSystem.from_uri(str(uri))
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError or ValueError for a bad URI
        raise LlmftError(f"{shown(uri)} is not a storage URI pyarrow can open ({_reason(exc)}). Use "
                         "s3://bucket/prefix, gs://bucket/prefix or a local path; for an S3-compatible "
                         "store add ?endpoint_override=http://host:port.") from None


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    return _call(uri, fs.get_file_info, path).type != pafs.FileType.NotFound


def read_text(uri: str) -> str:
    """The text of a file; LlmftError if it does not exist."""
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read().decode("utf-8")
    except FileNotFoundError:
        raise LlmftError(f"{shown(uri)} does not exist.") from None
    except OSError as exc:
        raise _storage_error(uri, exc) from None


def write_text(uri: str, text: str) -> None:
    """Write a text file whole: on disk through a rename, in an object store as one object."""
    write_bytes(uri, text.encode("utf-8"))


def write_bytes(uri: str, data: bytes) -> None:
    """Write a file whole: on disk through a rename, in an object store as one object."""
    if not is_uri(uri):
        write_atomic(uri, lambda tmp: Path(tmp).write_bytes(data))
        return
    fs, path = resolve(uri)
    _call(uri, _write_bytes, fs, path, data)


def upload_file(local: str | os.PathLike, uri: str) -> None:
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    _call(uri, pafs.copy_files, str(local), path, destination_filesystem=fs)


def list_folders(uri: str, prefix: str = "") -> list[str]:
    """URIs of the sub-folders of `uri` whose name starts with `prefix` (none if `uri` is missing)."""
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    infos = _call(uri, fs.get_file_info, pafs.FileSelector(path, allow_not_found=True))
    return [join(uri, info.base_name) for info in infos
            if info.type == pafs.FileType.Directory and info.base_name.startswith(prefix)]


def list_files(uri: str) -> set[str]:
    """Paths of all files under `uri`, relative to it (empty if it does not exist)."""
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    infos = _call(uri, fs.get_file_info, pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return {info.path[len(path.rstrip("/")) + 1:] for info in infos if info.type == pafs.FileType.File}


@contextlib.contextmanager
def local_folder(uri: str) -> Iterator[Path]:
    """A local folder holding `uri`'s files: the folder itself, or a temporary download of a URI."""
    if not is_uri(uri):
        yield Path(uri)
        return
    tmp = Path(tempfile.mkdtemp(prefix="llmft-download-"))
    try:
        _download(uri, tmp)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def output_folder(uri: str, *, last: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield an empty local folder; on success it becomes `uri`, on error nothing is left there.

    Locally the folder is renamed into place. A URI gets the files uploaded, the names in `last`
    after all others (a reader that finds them knows the rest is there), and files of an earlier
    upload that the new one lacks removed; a failed upload is deleted again.
    """
    if not is_uri(uri):
        with atomic_folder(uri) as tmp:
            yield tmp
        return
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    before = list_files(uri)
    with tempfile.TemporaryDirectory(prefix="llmft-upload-") as tmp:
        yield Path(tmp)
        files = sorted(p.relative_to(tmp).as_posix() for p in Path(tmp).rglob("*") if p.is_file())
        ordered = [f for f in files if f not in last] + [f for f in files if f in last]
        try:
            for name in ordered:
                _call(uri, pafs.copy_files, str(Path(tmp, name)), f"{path}/{name}", destination_filesystem=fs)
        except BaseException:
            for name in set(ordered) - before:
                with contextlib.suppress(OSError):
                    fs.delete_file(f"{path}/{name}")
            raise
        for name in before - set(files):
            with contextlib.suppress(OSError):
                fs.delete_file(f"{path}/{name}")


def cached_copy(uri: str, cache_dir: str | os.PathLike) -> Path:
    """A node-local copy of the folder at `uri`, downloaded once per node and reused.

    The cache key covers the URI and every file's size and modification time, so a changed
    folder is downloaded again. Processes on one node share the download through a file lock.
    """
    import pyarrow.fs as pafs
    from filelock import FileLock

    fs, path = resolve(uri)
    infos = _call(uri, fs.get_file_info, pafs.FileSelector(path, recursive=True, allow_not_found=True))
    files = sorted((i.path, i.size, i.mtime_ns) for i in infos if i.type == pafs.FileType.File)
    if not files:
        raise LlmftError(f"{shown(uri)} holds no files. Give the URI of a model folder (config.json, "
                         "weights and tokenizer files), e.g. the `model` folder of an llmft run.")
    key = hashlib.sha256(repr((urlsplit(uri)._replace(query="").geturl(), files)).encode()).hexdigest()[:16]
    root = Path(cache_dir).expanduser() / "remote"
    target = root / f"{Path(path).name}-{key}"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not target.is_dir():
            with atomic_folder(target) as tmp:
                _download(uri, tmp)
    return target


def check_reachable(uri: str, key: str) -> None:
    """Fail in seconds, before anything is written, when `uri` cannot be used: no credentials,
    an endpoint that does not answer, a bucket that does not exist. Local paths pass."""
    import pyarrow.fs as pafs

    if not is_uri(uri):
        return
    scheme = urlsplit(uri).scheme
    if scheme == "s3" and not _has_aws_credentials():
        raise LlmftError(f"{key} = {shown(uri)}: no AWS credentials found. Set AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or give the machines an instance role) "
                         "in the environment of the driver and of every Ray node.")
    fs, path = resolve(uri)
    bucket = path.split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
    except OSError as exc:
        raise _storage_error(uri, exc, key) from None
    if info.type == pafs.FileType.NotFound:
        raise LlmftError(f"{key} = {shown(uri)}: the bucket {bucket!r} does not exist (or these credentials "
                         "cannot see it). Create it first, or fix the bucket name.")


def check_every_node_reaches(folder: str, key: str) -> None:
    """On a multi-node Ray cluster, a local `folder` must be one shared filesystem: write a probe
    file here and have a task on every node read it back."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    if is_uri(folder) or len(nodes) < 2:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    token = os.urandom(8).hex()
    probe = Path(folder) / f".llmft-probe-{token}"
    probe.write_text(token)

    @ray.remote(num_cpus=0)
    def sees_probe() -> bool:
        return probe.is_file() and probe.read_text() == token

    try:
        seen = ray.get([sees_probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
                        for node in nodes], timeout=60)
    finally:
        probe.unlink(missing_ok=True)
    blind = [node[:12] for node, ok in zip(nodes, seen) if not ok]
    if blind:
        raise LlmftError(f"{key} = {folder} is a local folder that {len(blind)} of the cluster's {len(nodes)} "
                         f"nodes do not see (node {', '.join(blind)}); every node must reach {key}. Use a "
                         "shared filesystem mounted at the same path on every node, or a bucket "
                         "(s3://bucket/prefix, gs://bucket/prefix).")


# ---------------------------------------------------------------- helpers


def _download(uri: str, local: Path) -> None:
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    info = _call(uri, fs.get_file_info, path)
    if info.type != pafs.FileType.Directory:
        raise LlmftError(f"{shown(uri)} does not exist (or is not a folder).")
    _call(uri, pafs.copy_files, path, str(local), source_filesystem=fs)


def _write_bytes(fs, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as stream:
        stream.write(data)


def _call(uri: str, func, *args, **kwargs):
    try:
        return func(*args, **kwargs)
    except OSError as exc:
        raise _storage_error(uri, exc) from None


def _storage_error(uri: str, exc: BaseException, key: str | None = None) -> LlmftError:
    text = str(exc)
    where = f"{key} = {shown(uri)}" if key else shown(uri)
    if "NETWORK_CONNECTION" in text or "curlCode" in text or "Could not resolve" in text:
        hint = ("cannot reach the storage endpoint. Check the host and port of endpoint_override, "
                "and that the store is running and reachable from this machine")
    elif "NO_SUCH_BUCKET" in text:
        hint = "the bucket does not exist. Create it first, or fix the bucket name"
    elif "ACCESS_DENIED" in text or "INVALID_ACCESS_KEY" in text or "SIGNATURE" in text or "403" in text:
        hint = "access denied. Check the credentials in the environment and their permissions on this bucket"
    else:
        hint = "the storage request failed"
    return LlmftError(f"{where}: {hint} ({_reason(exc)}).")


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__


def _has_aws_credentials() -> bool:
    """Whether the standard AWS chain (environment, profile files, SSO, container or instance
    role) yields credentials; the same chain pyarrow's S3 client follows."""
    import botocore.session

    return botocore.session.get_session().get_credentials() is not None
