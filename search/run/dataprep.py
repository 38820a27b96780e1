"""Data prepared once, by the cluster: one Ray job reads the released files (a local path or
object storage), audits and preprocesses them, and writes shards plus a manifest to shared
storage; each node pulls the shards to local disk once and trials map them (docs/dataprep.md).

    python -m search.run.dataprep --dataset fairvision --data-root "s3://bucket/fv?region=..." \
        --out "s3://bucket/prepared?region=..."   # or the search does it (--data-root s3://...)

- The job: one Ray task per shard (trainer/data/shards.py SHARD_SAMPLES consecutive files of a
  split), 1 CPU each, spread over every node. A task downloads each npz whole (one GET; the next
  file is fetched while this one is processed), then the trainer's own per-file step
  (trainer.data.cache.preprocess_file: the audit's checks and hashes, the same preprocessing),
  and writes its shard's .npy files. The driver then checks duplicates across every split (as
  the local cache does), writes the per-split labels / codes / hashes and, last, manifest.json.
  Any defective file fails the job before a manifest exists, naming the file and key.
- Idempotent: the output folder is named by a key over the raw listing (split, name, size,
  mtime of every npz), the source and the preprocessing parameters; a manifest there means the
  work is done ("data: prepared at <uri> (manifest <hash>), reused").
- On a node: `pull` copies the shards to <trainer cache>/prepared/<manifest hash>/ once, under a
  file lock (other trials of the node wait at most MULTIFAIR_PULL_TIMEOUT_S, then fail naming
  the lock file), checking every file's sha256 against the manifest. Raw files are never read
  there.

URIs: a local path, or anything pyarrow.fs.FileSystem.from_uri opens (s3://bucket/prefix with
options in the query, e.g. ?endpoint_override=host:port&scheme=http&region=us-east-1; AWS
credentials from the environment or the instance profile, on every node).
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.fs
import ray
from filelock import FileLock, Timeout

from search.run.embedded_ray import init_local_ray
from trainer.config import make_config
from trainer.data import LAYOUTS, audit, prepare, shards
from trainer.data.cache import cache_root, preprocess_file, tokenize
from trainer.data.common import MODALITY_KEYS, SPLITS, DataError

PULL_TIMEOUT_VAR = "MULTIFAIR_PULL_TIMEOUT_S"
PULL_TIMEOUT_S = 1800.0   # a node pulling ~11 GB of paper-size shards at >= 10 MB/s
CHUNK = 8 << 20


# ----------------------------------------------------------------------------- storage

def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def filesystem(uri: str):
    """(pyarrow filesystem, path inside it) of a local path or a URI."""
    if not is_remote(uri):
        local = str(uri).removeprefix("file://")
        return pyarrow.fs.LocalFileSystem(), str(Path(local).expanduser().resolve())
    return pyarrow.fs.FileSystem.from_uri(str(uri))


def join(uri: str, *names: str) -> str:
    """`uri`/names, keeping a query string (s3 options) at the end."""
    base, sep, query = str(uri).partition("?")
    return "/".join([base.rstrip("/"), *names]) + sep + query


def shown(uri: str) -> str:
    """A URI for messages: without its query options."""
    return str(uri).partition("?")[0]


def _read(fs, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def _write(fs, path: str, data: bytes) -> None:
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def _exists(fs, path: str) -> bool:
    return fs.get_file_info(path).type == pyarrow.fs.FileType.File


# ----------------------------------------------------------------------------- raw listing

def list_raw(root: str, layout) -> dict[str, tuple[str, list[tuple[str, int, int]]]]:
    """{split: (folder URI, [(npz name, size, mtime ns)] sorted)} of a data root, local or
    remote, found as trainer.data.common.Layout finds them (subdir, split folder spellings)."""
    try:
        return _list_raw(root, layout)
    except OSError as exc:   # unreachable endpoint, no credentials, no such bucket: one line
        raise DataError(f"data root {shown(root)}: cannot list it (key: data_root): "
                        f"{str(exc).strip().splitlines()[0]}") from None


def _list_raw(root: str, layout) -> dict:
    fs, top = filesystem(root)
    base = top
    if fs.get_file_info(base).type != pyarrow.fs.FileType.Directory:
        raise DataError(f"data root {shown(root)} does not exist (key: data_root)")

    def entries(path):
        return fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))

    folders = {i.base_name for i in entries(base) if i.type == pyarrow.fs.FileType.Directory}
    if layout.subdir and layout.subdir in folders:
        base = f"{base}/{layout.subdir}"
        folders = {i.base_name for i in entries(base) if i.type == pyarrow.fs.FileType.Directory}
    subpath = base[len(top):].lstrip("/")
    out = {}
    for split in SPLITS:
        name = next((n for n in layout.split_folders[split] if n in folders), None)
        if name is None:
            tried = ", ".join(layout.split_folders[split])
            raise DataError(f"{shown(join(root, subpath))}: no folder for split {split!r} (key: "
                            f"split; tried {tried})")
        files = sorted((i.base_name, i.size, i.mtime_ns or 0) for i in entries(f"{base}/{name}")
                       if i.type == pyarrow.fs.FileType.File
                       and fnmatch.fnmatch(i.base_name, "data_*.npz"))
        folder = join(root, *filter(None, [subpath, name]))
        if not files:
            raise DataError(f"{shown(folder)}: split {split!r} holds no data_*.npz files "
                            f"(key: split)")
        out[split] = (folder, files)
    return out


def prep_key(root: str, listing: dict, params: dict) -> str:
    """The output folder's name: changes with any raw file, the source or a parameter."""
    parts = {"source": shown(root), "params": params,
             "files": {split: files for split, (_folder, files) in listing.items()}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


# ----------------------------------------------------------------------------- the job

def _prepare_shard(cfg, folder: str, names: list[str], split: str, index: int, target: str) -> dict:
    """One Ray task: download, audit and preprocess `names` (consecutive files of one split),
    write the shard's .npy files under `target`. Returns their manifest entries and the small
    per-sample arrays, or {"defects": [...]} (nothing written) when a file is defective."""
    cpu = time.process_time()   # this worker's CPU seconds: the per-core cost, whatever the load
    layout, modalities = LAYOUTS[cfg.dataset], list(cfg.resolved_modalities())
    images = [m for m in modalities if m in shards.IMAGE_MODALITIES]
    note_key = cfg.note_source if "note" in modalities else None
    fs, path = filesystem(folder)
    rows, defects = [], []

    def fetch(name):
        try:
            return _read(fs, f"{path}/{name}")
        except OSError as exc:
            return DataError(f"{shown(folder)}/{name}: cannot read (key: <archive>): "
                             f"{type(exc).__name__}")

    with ThreadPoolExecutor(1) as pool:   # the next file downloads while this one is decoded
        pending = pool.submit(fetch, names[0])
        for i, name in enumerate(names):
            data = pending.result()
            if i + 1 < len(names):
                pending = pool.submit(fetch, names[i + 1])
            try:
                if isinstance(data, DataError):
                    raise data
                rows.append(preprocess_file(cfg, layout, f"{shown(folder)}/{name}",
                                            ["meta", *images], note_key, io.BytesIO(data)))
            except DataError as exc:
                defects.append(str(exc))
    if defects:
        return {"defects": defects}
    out_fs, out = filesystem(target)
    parts = {}
    for m in modalities:
        if m == "note":   # the local cache's tokenisation, per shard (each row is its own)
            # transformers loads only for a note modality (the tokenizer), as in the trainer
            from trainer.data.tokenizer import note_tokenizer

            array = tokenize([r["note"] for r in rows], note_tokenizer(cfg), cfg.note_max_length)
        else:
            array = np.stack([r[m] for r in rows])
        name = shards.shard_name(split, index, m)
        data = shards.npy_bytes(array)
        _write(out_fs, f"{out}/{name}", data)
        parts[m] = shards.describe(name, data, array)
    small = shards.small_parts(rows, names, modalities)   # + present-<m>: the local cache's flags
    return {"defects": [], "index": index, "parts": parts, "small": small,
            "cpu_s": time.process_time() - cpu}


def prepare_on_cluster(cfg, out: str, log=print,
                       shard_samples: int = shards.SHARD_SAMPLES) -> dict:
    """Run (or reuse) the preparation job for cfg's data root and parameters on the Ray this
    process is connected to. Returns {"uri": manifest URI, "sha256": manifest hash, "reused",
    "samples", "seconds", "cpus", "task_cpu_s"}; raises trainer.data.DataError or
    audit.AuditError on bad data."""
    started = time.perf_counter()
    layout = LAYOUTS[cfg.dataset]
    params = shards.params(cfg, layout.name, shard_samples)
    listing = list_raw(cfg.data_root, layout)
    target = join(out, prep_key(cfg.data_root, listing, params))
    fs, path = filesystem(target)
    manifest_uri = join(target, shards.MANIFEST)
    samples = sum(len(files) for _f, files in listing.values())
    if _exists(fs, f"{path}/{shards.MANIFEST}"):
        digest = shards.manifest_hash(_read(fs, f"{path}/{shards.MANIFEST}"))
        log(f"data: prepared at {shown(target)} (manifest {digest}), reused", flush=True)
        return {"uri": manifest_uri, "sha256": digest, "reused": True, "samples": samples,
                "seconds": time.perf_counter() - started, "cpus": 0, "task_cpu_s": 0.0}
    cpus = int(ray.cluster_resources().get("CPU", 1))
    task = ray.remote(_prepare_shard).options(num_cpus=1, scheduling_strategy="SPREAD",
                                              max_retries=2)
    size = params["shard_samples"]
    refs = {split: [task.remote(cfg, folder, [f[0] for f in files[k:k + size]], split, k // size,
                                target) for k in range(0, len(files), size)]
            for split, (folder, files) in listing.items()}
    log(f"data: preparing {samples} samples of {shown(cfg.data_root)} in "
        f"{sum(map(len, refs.values()))} shard tasks on {cpus} CPUs -> {shown(target)}", flush=True)
    results = {split: ray.get(r) for split, r in refs.items()}
    defects = [d for res in results.values() for r in res for d in r["defects"]]
    if defects:
        _remove(fs, path)
        raise audit.AuditError(defects)
    manifest = _assemble(cfg, fs, path, listing, results, params)
    data = shards.manifest_bytes(manifest)
    _write(fs, f"{path}/{shards.MANIFEST}", data)   # last: its presence means complete
    digest, seconds = shards.manifest_hash(data), time.perf_counter() - started
    log(f"data: prepared at {shown(target)} (manifest {digest}): {samples} samples in "
        f"{seconds:.1f} s on {cpus} CPUs ({samples / seconds:.1f} samples/s)", flush=True)
    return {"uri": manifest_uri, "sha256": digest, "reused": False, "samples": samples,
            "seconds": seconds, "cpus": cpus,
            "task_cpu_s": sum(r["cpu_s"] for res in results.values() for r in res)}


def _assemble(cfg, fs, path: str, listing: dict, results: dict, params: dict) -> dict:
    """Per-split meta files written; duplicates refused as the local cache does; the manifest."""
    splits, metas, hashes, rgb = {}, {}, {}, 0
    for split, res in results.items():
        small = {k: np.concatenate([r["small"][k] for r in res]) for k in res[0]["small"]}
        folder = shards.SourceFolder(shown(listing[split][0]))
        metas[split] = {"labels": small["labels"], "codes": small["codes"],   # card: missing counts
                        **{f"present:{m}": small[f"present-{m}"] for m in params["modalities"]}}
        hashes[split] = ([folder / str(n) for n in small["files"]],
                         {MODALITY_KEYS[m]: small[f"hash-{m}"] for m in params["modalities"]
                          if m in shards.IMAGE_MODALITIES})
        rgb += int(small["rgb"].sum()) if "slo" in params["modalities"] else 0
        meta = {}
        for part, array in small.items():
            name = shards.split_name(split, part)
            data = shards.npy_bytes(array)
            _write(fs, f"{path}/{name}", data)
            meta[part] = shards.describe(name, data, array)
        splits[split] = {"source": str(folder), "n": int(len(small["labels"])),
                         "positives": int(small["labels"].sum()), "meta": meta,
                         "shards": [{"index": r["index"], "parts": r["parts"]} for r in res]}
    found = audit.duplicates(hashes)
    warnings = audit.check_duplicates(found, cfg.allow_duplicates)
    card = audit.dataset_card(params["layout"], metas, rgb, len(found))
    return {"version": shards.FORMAT_VERSION, "params": params, "source": shown(cfg.data_root),
            "splits": splits, "card": card, "warnings": warnings}


def _remove(fs, path: str) -> None:
    try:
        fs.delete_dir(path)
    except OSError:
        pass   # nothing written yet, or not removable: no manifest, so never used


# ----------------------------------------------------------------------------- on a node

def pull(manifest_uri: str, dest_root, images: bool = True, timeout_s: float | None = None) -> Path:
    """The prepared data at `manifest_uri` in a local folder under dest_root/prepared/, copied
    once per node (the image shards only if `images`; the driver needs only the meta files),
    every file checked against the manifest's sha256. Concurrent callers wait on a file lock."""
    fs, path = filesystem(manifest_uri)
    try:
        data = _read(fs, path)
    except OSError as exc:
        raise DataError(f"{shown(manifest_uri)}: cannot read the prepared data's manifest (key: "
                        f"prepared): {exc}") from None
    digest = shards.manifest_hash(data)
    local = Path(dest_root).expanduser() / "prepared" / (digest if images else f"{digest}-meta")
    if (local / shards.MANIFEST).is_file():
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    wait = timeout_s if timeout_s is not None else \
        float(os.environ.get(PULL_TIMEOUT_VAR, PULL_TIMEOUT_S))
    lock = FileLock(f"{local}.lock", timeout=wait)
    try:
        with lock:
            if not (local / shards.MANIFEST).is_file():
                _download(fs, path.rsplit("/", 1)[0], json.loads(data), data, local, images)
    except Timeout:
        raise TimeoutError(f"waited {wait:.0f} s for the lock {lock.lock_file}: another process "
                           f"on this node is still pulling the prepared data ({PULL_TIMEOUT_VAR} "
                           f"sets the wait)") from None
    return local


def _download(fs, base: str, manifest: dict, data: bytes, local: Path, images: bool) -> None:
    tmp = local.with_name(f"{local.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)

    def copy(entry):
        target = tmp / entry["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with fs.open_input_stream(f"{base}/{entry['file']}") as src, open(target, "wb") as dst:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                dst.write(chunk)
        if digest.hexdigest() != entry["sha256"]:
            raise DataError(f"{base}/{entry['file']}: sha256 {digest.hexdigest()[:16]}... differs "
                            f"from the manifest's {entry['sha256'][:16]}... (key: sha256); "
                            f"prepare the data again")

    try:
        with ThreadPoolExecutor(8) as pool:   # object stores serve parallel GETs faster
            list(pool.map(copy, shards.files_of(manifest, images)))
        (tmp / shards.MANIFEST).write_bytes(data)
        os.replace(tmp, local)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- the search

def wanted(scfg) -> bool:
    """Prepare on the cluster: a remote data root always; a local one with --prepare-on-cluster
    (then every node must see that path, e.g. a shared file system)."""
    return is_remote(scfg.data_root) or bool(getattr(scfg, "prepare_on_cluster", False))


def for_search(scfg, cfg) -> dict:
    """The search driver's step (Ray running): the job (or its reuse) writing under
    <storage path>/prepared-data, then the trainer's checks and the dataset card from the meta
    files alone (the driver pulls no image). Returns trainer.data.prepare's summary plus
    "prepared": {"uri", "sha256"} for the trials' setup."""
    job = prepare_on_cluster(cfg, join(scfg.storage_path, "prepared-data"))
    summary = prepare(cfg, prepared=pull(job["uri"], cache_root(cfg), images=False))
    return {**summary, "prepared": {"uri": job["uri"], "sha256": job["sha256"]}}


def local_folder(cfg, prepared: dict) -> Path:
    """A trial's step: this node's copy of the prepared data (pulled by the first trial)."""
    return pull(prepared["uri"], cache_root(cfg))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Prepare a released dataset once, on the Ray cluster")
    p.add_argument("--dataset", required=True, choices=["fairvision", "fairvlmed"])
    p.add_argument("--data-root", required=True, help="local path or s3://bucket/prefix?options")
    p.add_argument("--out", required=True, help="shared folder or s3:// URI for the shards")
    p.add_argument("--preset", default="paper", choices=["paper", "tiny"])
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="trainer config override (image_size, oct_slices, modalities, ...)")
    p.add_argument("--local", type=int, default=0, metavar="CPUS",
                   help="an embedded one-machine Ray with this many CPUs instead of the cluster")
    a = p.parse_args(argv)
    try:
        cfg = make_config(a.dataset, "gender", preset=a.preset, sets=a.sets, data_root=a.data_root)
        if a.local:
            init_local_ray(a.local)
        else:
            ray.init()
        job = prepare_on_cluster(cfg, a.out)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(job))
    return 0


if __name__ == "__main__":
    sys.exit(main())
