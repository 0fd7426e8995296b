"""Push time and peak memory of the pusher, beside s3transfer uploading the same files.

    python benchmarks/push_bench.py [--size 1GiB] [--small-size 64MiB] [--rounds 3]

The run writes two OCI layouts of random (incompressible) layers, about `--size` and
`--small-size` bytes in `--layers` layers of unequal sizes, and starts a plain moto S3
server on a loopback port. Each round pushes each layout twice, into fresh buckets:

  stratus      push_oci_layout() with `--concurrency` part worker processes and
               `--part-size` parts. It checks which blobs exist, sends multipart
               uploads, checks every blob's SHA-256 before completing it, and
               writes index.json.
  s3transfer   boto3's transfer manager (what `upload_file` runs) with the same
               concurrency, threshold and part size, uploading the same blob files
               with no digest check

Each push runs in a child process of its own, so startup costs and memory are counted
alike. Time is measured inside the child from opening the S3 client to the end of the
upload, and also as the child's whole run. Memory is each child's peak resident set:
ru_maxrss of the pushing process and the largest of its workers (RUSAGE_CHILDREN), and,
when psutil is installed, the peak of the summed RSS of the process and its workers
sampled every 50 ms. The two tools alternate, first one then the other, from round to
round. Buckets are deleted after each push, since moto keeps every object. Raw figures
go to benchmarks/out/push-<time>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common

REPOSITORY = "bench/app"
TAG = "1.0"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
# Share of the layout's size in each layer, largest first. In a small layout the smallest
# layers are below the multipart threshold, so they go up in one PUT.
LAYER_WEIGHTS = (0.40, 0.22, 0.15, 0.10, 0.07, 0.04, 0.02)
WRITE_CHUNK = 8 * common.MIB
SAMPLE_INTERVAL = 0.05
PUSH_TIMEOUT = 1800.0
STRATUS = "stratus"
S3TRANSFER = "s3transfer"

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMG]i?B?|B)?", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1024, "M": common.MIB, "G": common.GIB}


@dataclass(frozen=True)
class GeneratedLayout:
    """A layout directory written by write_layout, with its image digest and blob list."""

    name: str
    path: Path
    digest: str
    total_bytes: int
    layer_sizes: tuple[int, ...]
    blobs: tuple[tuple[str, int], ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "digest": self.digest, "total_bytes": self.total_bytes,
                "layer_sizes": list(self.layer_sizes), "blob_count": len(self.blobs)}


def parse_size(text: str) -> int:
    """Parse a byte size: a number with an optional binary unit (B, K/KiB, M/MiB, G/GiB)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: expected bytes, optionally with KiB, MiB or GiB")
    unit = (match.group(2) or "").upper().removesuffix("B").removesuffix("I")
    return int(float(match.group(1)) * _UNITS[unit])


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parse_arguments(argv)
    if arguments.child is not None:
        return _run_child(arguments)

    common.use_fake_aws_credentials()
    from support.s3 import MotoServer

    psutil = _import_psutil()
    if psutil is None:
        print("psutil is not installed: memory is reported from ru_maxrss only (pip install psutil).", flush=True)
    machine = common.machine_info()
    print(common.format_machine(machine), flush=True)

    common.OUTPUT_DIRECTORY.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="push-", dir=common.OUTPUT_DIRECTORY))
    print(f"Working directory (layouts, logs): {work}", flush=True)
    try:
        layouts = [
            write_layout(work / "large", "large", arguments.size, arguments.layers),
            write_layout(work / "small", "small", arguments.small_size, arguments.layers),
        ]
        moto = MotoServer(work / "moto.log")
        moto.start()
        try:
            runs = _measure(arguments, layouts, moto, work, psutil)
        finally:
            moto.stop()
    finally:
        if not arguments.keep_work:
            shutil.rmtree(work, ignore_errors=True)

    summary = _summarize(runs, layouts)
    print()
    print(format_tables(summary, layouts))
    document = {
        "benchmark": "push",
        "settings": {
            "rounds": arguments.rounds,
            "concurrency": arguments.concurrency,
            "part_size": arguments.part_size,
            "multipart_threshold": arguments.part_size,
            "layers": arguments.layers,
        },
        "machine": machine,
        "layouts": [layout.to_json() for layout in layouts],
        "runs": runs,
        "summary": summary,
    }
    path = common.write_json("push", document)
    print(f"\nRaw figures: {path}")
    return 0


def _parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=common.GIB,
                        help="size of the large layout, such as 1GiB or 256MiB (default: 1GiB)")
    parser.add_argument("--small-size", type=parse_size, default=64 * common.MIB,
                        help="size of the small layout that peak memory is compared with (default: 64MiB)")
    parser.add_argument("--layers", type=int, default=len(LAYER_WEIGHTS),
                        help=f"layers per layout, at most {len(LAYER_WEIGHTS)} (default: {len(LAYER_WEIGHTS)})")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each pushes both layouts with both "
                        "tools (default: 3)")
    parser.add_argument("--concurrency", type=int, default=4, help="part worker processes for stratus and "
                        "concurrent requests for s3transfer (default: 4, S3_MULTIPART_UPLOAD_CONCURRENCY's default)")
    parser.add_argument("--part-size", type=parse_size, default=8 * common.MIB,
                        help="multipart part size and threshold for both tools (default: 8MiB)")
    parser.add_argument("--keep-work", action="store_true",
                        help="keep the layouts and logs under benchmarks/out/")
    # The parent runs each push through this same script in a child process.
    parser.add_argument("--child", choices=(STRATUS, S3TRANSFER), help=argparse.SUPPRESS)
    parser.add_argument("--layout", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--bucket", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if not 1 <= arguments.layers <= len(LAYER_WEIGHTS):
        parser.error(f"--layers must be from 1 to {len(LAYER_WEIGHTS)}")
    if arguments.rounds < 1 or arguments.concurrency < 1:
        parser.error("--rounds and --concurrency must be at least 1")
    if arguments.part_size < 5 * common.MIB:
        parser.error("--part-size must be at least 5MiB, the S3 minimum")
    return arguments


def write_layout(path: Path, name: str, total_bytes: int, layer_count: int) -> GeneratedLayout:
    """Write an OCI layout directory whose layers hold about `total_bytes` random bytes.

    Each layer is written in WRITE_CHUNK pieces and hashed on the way, so no layer is
    ever held in memory whole.
    """
    started = time.perf_counter()
    blobs_directory = path / "blobs" / "sha256"
    blobs_directory.mkdir(parents=True)
    weights = LAYER_WEIGHTS[:layer_count]
    layer_sizes = tuple(max(1, int(total_bytes * weight / sum(weights))) for weight in weights)

    layers = [_write_random_blob(blobs_directory, size) for size in layer_sizes]
    config = _json_bytes({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [digest for digest, _ in layers]},
    })
    config_digest = _write_blob(blobs_directory, config)
    manifest = _json_bytes({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config)},
        "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": digest, "size": size} for digest, size in layers],
    })
    manifest_digest = _write_blob(blobs_directory, manifest)
    index = _json_bytes({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": TAG},
        }],
    })
    (path / "index.json").write_bytes(index)
    (path / "oci-layout").write_bytes(b'{"imageLayoutVersion":"1.0.0"}')

    blobs = (*layers, (config_digest, len(config)), (manifest_digest, len(manifest)))
    total = sum(size for _, size in blobs)
    print(f"Wrote the {name} layout: {len(layers)} layers, {total / common.MIB:.1f} MiB in "
          f"{time.perf_counter() - started:.1f} s.", flush=True)
    return GeneratedLayout(name, path, manifest_digest, total, layer_sizes, blobs)


def _write_random_blob(directory: Path, size: int) -> tuple[str, int]:
    hasher = hashlib.sha256()
    temporary = directory / f".partial-{uuid.uuid4().hex}"
    with open(temporary, "wb") as file:
        remaining = size
        while remaining > 0:
            chunk = os.urandom(min(WRITE_CHUNK, remaining))
            hasher.update(chunk)
            file.write(chunk)
            remaining -= len(chunk)
    digest = f"sha256:{hasher.hexdigest()}"
    temporary.rename(directory / hasher.hexdigest())
    return digest, size


def _write_blob(directory: Path, data: bytes) -> str:
    encoded = hashlib.sha256(data).hexdigest()
    (directory / encoded).write_bytes(data)
    return f"sha256:{encoded}"


def _json_bytes(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def _measure(
    arguments: argparse.Namespace, layouts: list[GeneratedLayout], moto: Any, work: Path, psutil: Any
) -> list[dict[str, Any]]:
    from support.s3 import s3_client

    client = s3_client(moto.endpoint)
    runs: list[dict[str, Any]] = []
    for round_number in range(1, arguments.rounds + 1):
        tools = [STRATUS, S3TRANSFER] if round_number % 2 else [S3TRANSFER, STRATUS]
        for layout in layouts:
            for tool in tools:
                _check_free_memory(layout.total_bytes, psutil)
                bucket = f"push-bench-{uuid.uuid4().hex[:16]}"
                client.create_bucket(Bucket=bucket)
                try:
                    moto_cpu_before = _process_cpu_seconds(moto, psutil)
                    run = _push_in_child(arguments, tool, layout, moto.endpoint, bucket, work, psutil)
                    moto_cpu_after = _process_cpu_seconds(moto, psutil)
                    _verify_bucket(client, bucket, tool, layout, run)
                finally:
                    _delete_bucket(client, bucket)
                run.update(round=round_number, layout=layout.name, moto_rss_bytes=_process_rss(moto, psutil))
                if moto_cpu_before is not None and moto_cpu_after is not None:
                    run["moto_cpu_seconds"] = moto_cpu_after - moto_cpu_before
                runs.append(run)
                rate = layout.total_bytes / run["push_seconds"] / common.MIB
                print(
                    f"round {round_number}/{arguments.rounds}  {layout.name:5} {tool:10} "
                    f"push {run['push_seconds']:6.2f} s ({rate:6.1f} MiB/s), process {run['process_seconds']:6.2f} s, "
                    f"CPU s: pusher {run['self_cpu_seconds'] + run['children_cpu_seconds']:5.1f}, "
                    f"moto {run.get('moto_cpu_seconds', float('nan')):5.1f}; "
                    f"peak RSS: pusher {run['self_max_rss_bytes'] / common.MIB:6.1f} MiB, largest worker "
                    f"{run['children_max_rss_bytes'] / common.MIB:6.1f} MiB"
                    + (f", sum sampled {run['sampled_peak_total_rss_bytes'] / common.MIB:6.1f} MiB"
                       if run.get("sampled_peak_total_rss_bytes") else ""),
                    flush=True,
                )
    return runs


def _push_in_child(
    arguments: argparse.Namespace, tool: str, layout: GeneratedLayout, endpoint: str, bucket: str, work: Path,
    psutil: Any,
) -> dict[str, Any]:
    from support.processes import child_environment
    from support.s3 import s3_environment

    result_path = work / f"result-{uuid.uuid4().hex[:8]}.json"
    command = [
        sys.executable, str(Path(__file__).resolve()), "--child", tool, "--layout", str(layout.path),
        "--endpoint", endpoint, "--bucket", bucket, "--result", str(result_path),
        "--concurrency", str(arguments.concurrency), "--part-size", str(arguments.part_size),
    ]
    environment = child_environment(s3_environment(endpoint, bucket))
    log_path = work / f"{tool}.log"
    started = time.perf_counter()
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, env=environment, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT)
    sampler = _RssSampler(process.pid, psutil) if psutil is not None else None
    try:
        status = process.wait(timeout=PUSH_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise RuntimeError(f"{tool} push of the {layout.name} layout timed out after {PUSH_TIMEOUT:g} s; see {log_path}")
    finally:
        if sampler is not None:
            sampler.stop()
    process_seconds = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"{tool} push of the {layout.name} layout failed with exit status {status}; see "
                           f"{log_path}:\n{log_path.read_text(errors='replace')[-3000:]}")

    run: dict[str, Any] = json.loads(result_path.read_text())
    run.update(tool=tool, process_seconds=process_seconds)
    if sampler is not None:
        run.update(sampled_peak_total_rss_bytes=sampler.peak_total, sampled_peak_process_count=sampler.peak_processes)
    return run


class _RssSampler:
    """Samples the summed RSS of a process and its descendants in a thread until stopped."""

    def __init__(self, pid: int, psutil: Any) -> None:
        self._psutil = psutil
        self._pid = pid
        self._stopped = threading.Event()
        self.peak_total = 0
        self.peak_processes = 0
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        psutil = self._psutil
        try:
            root = psutil.Process(self._pid)
        except psutil.Error:
            return
        while not self._stopped.is_set():
            total, count = 0, 0
            try:
                processes = [root, *root.children(recursive=True)]
            except psutil.Error:
                return
            for process in processes:
                try:
                    total += process.memory_info().rss
                    count += 1
                except psutil.Error:
                    continue
            self.peak_total = max(self.peak_total, total)
            self.peak_processes = max(self.peak_processes, count)
            self._stopped.wait(SAMPLE_INTERVAL)


def _run_child(arguments: argparse.Namespace) -> int:
    """Push one layout as the parent asked, and write the timing and ru_maxrss figures to --result."""
    import resource

    layout = Path(arguments.layout)
    started = time.perf_counter()
    if arguments.child == STRATUS:
        details = _push_with_stratus(arguments, layout)
    else:
        details = _upload_with_s3transfer(arguments, layout)
    push_seconds = time.perf_counter() - started

    # Linux reports ru_maxrss in KiB. RUSAGE_CHILDREN covers the workers, which the
    # pushers have joined by now; it is the largest single child, not their sum.
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    Path(arguments.result).write_text(json.dumps({
        "push_seconds": push_seconds,
        "self_max_rss_bytes": own.ru_maxrss * 1024,
        "children_max_rss_bytes": children.ru_maxrss * 1024,
        "self_cpu_seconds": own.ru_utime + own.ru_stime,
        "children_cpu_seconds": children.ru_utime + children.ru_stime,
        **details,
    }))
    return 0


def _push_with_stratus(arguments: argparse.Namespace, layout: Path) -> dict[str, Any]:
    from stratus.config import load_config
    from stratus.push import push_oci_layout
    from stratus.storage import open_storage

    config = load_config(os.environ)
    result = push_oci_layout(
        open_storage(config), config.s3_bucket, layout, REPOSITORY, TAG,
        log_output=None,
        blob_upload_concurrency=arguments.concurrency,
        config=config,
        multipart_threshold=arguments.part_size,
        part_size=arguments.part_size,
    )
    return {"digest": str(result.digest), "uploaded": len(result.uploaded), "bytes_sent": result.bytes_sent,
            "part_worker_processes": len(result.part_worker_pids)}


def _upload_with_s3transfer(arguments: argparse.Namespace, layout: Path) -> dict[str, Any]:
    import boto3
    from boto3.s3.transfer import TransferConfig, create_transfer_manager
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=f"http://{arguments.endpoint}",
        config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 3},
                      max_pool_connections=max(10, arguments.concurrency)),
    )
    transfer_config = TransferConfig(
        multipart_threshold=arguments.part_size,
        multipart_chunksize=arguments.part_size,
        max_concurrency=arguments.concurrency,
        use_threads=True,
    )
    files = sorted((layout / "blobs" / "sha256").iterdir())
    sent = 0
    with create_transfer_manager(client, transfer_config) as manager:
        futures = []
        for path in files:
            key = f"{REPOSITORY}/blobs/sha256/{path.name}"
            futures.append(manager.upload(str(path), arguments.bucket, key))
            sent += path.stat().st_size
        for future in futures:
            future.result()
    return {"uploaded": len(files), "bytes_sent": sent}


def _verify_bucket(client: Any, bucket: str, tool: str, layout: GeneratedLayout, run: dict[str, Any]) -> None:
    """Raise unless the bucket contains every blob at its size (and the pushed digest, for stratus)."""
    if tool == STRATUS and run.get("digest") != layout.digest:
        raise RuntimeError(f"stratus pushed {run.get('digest')}, expected {layout.digest}")
    for digest, size in layout.blobs:
        key = f"{REPOSITORY}/blobs/sha256/{digest.removeprefix('sha256:')}"
        stored = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
        if stored != size:
            raise RuntimeError(f"{tool}: {key} is {stored} bytes in the bucket, expected {size}")
    if run["bytes_sent"] != layout.total_bytes:
        raise RuntimeError(f"{tool} sent {run['bytes_sent']} bytes, expected {layout.total_bytes}")


def _delete_bucket(client: Any, bucket: str) -> None:
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
        for upload in page.get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
    client.delete_bucket(Bucket=bucket)


def _check_free_memory(layout_bytes: int, psutil: Any) -> None:
    """Stop before a push when the machine has less than three layouts' worth of memory free.

    moto keeps objects (in memory up to its spool size, then in temporary files) and parts
    until the upload completes, so a push can briefly need about twice the layout.
    """
    if psutil is None:
        return
    available = psutil.virtual_memory().available
    if available < 3 * layout_bytes:
        raise RuntimeError(f"only {available / common.GIB:.1f} GiB of memory is available, less than three times "
                           f"the {layout_bytes / common.GIB:.2f} GiB layout; stopping before the next push")


def _process_rss(moto: Any, psutil: Any) -> int | None:
    process = getattr(moto, "_process", None)
    if psutil is None or process is None:
        return None
    try:
        return int(psutil.Process(process.pid).memory_info().rss)
    except psutil.Error:
        return None


def _process_cpu_seconds(moto: Any, psutil: Any) -> float | None:
    process = getattr(moto, "_process", None)
    if psutil is None or process is None:
        return None
    try:
        times = psutil.Process(process.pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


def _import_psutil() -> Any:
    try:
        import psutil
    except ImportError:
        return None
    return psutil


def _summarize(runs: list[dict[str, Any]], layouts: list[GeneratedLayout]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for layout in layouts:
        per_tool: dict[str, Any] = {}
        for tool in (STRATUS, S3TRANSFER):
            selected = [run for run in runs if run["layout"] == layout.name and run["tool"] == tool]
            per_tool[tool] = {
                "push_seconds": common.median([run["push_seconds"] for run in selected]),
                "process_seconds": common.median([run["process_seconds"] for run in selected]),
                "mib_per_second": layout.total_bytes / common.MIB / common.median(
                    [run["push_seconds"] for run in selected]),
                "pusher_cpu_seconds": common.median(
                    [run["self_cpu_seconds"] + run["children_cpu_seconds"] for run in selected]),
                "moto_cpu_seconds": common.median([run.get("moto_cpu_seconds", float("nan")) for run in selected]),
                "self_max_rss_bytes": max(run["self_max_rss_bytes"] for run in selected),
                "children_max_rss_bytes": max(run["children_max_rss_bytes"] for run in selected),
                "sampled_peak_total_rss_bytes": max((run.get("sampled_peak_total_rss_bytes") or 0)
                                                    for run in selected) or None,
            }
        ratios = []
        for round_number in sorted({run["round"] for run in runs}):
            times = {run["tool"]: run["push_seconds"] for run in runs
                     if run["round"] == round_number and run["layout"] == layout.name}
            if STRATUS in times and S3TRANSFER in times:
                ratios.append(times[STRATUS] / times[S3TRANSFER])
        summary[layout.name] = {"tools": per_tool, "time_ratio_stratus_to_s3transfer": common.median(ratios),
                                "time_ratios_per_round": ratios}
    return summary


def format_tables(summary: dict[str, Any], layouts: list[GeneratedLayout]) -> str:
    """Format the medians (times, CPU) and maxima (memory) as a Markdown table."""
    lines = [
        "| layout | tool | push s | MiB/s | process s | pusher CPU s | moto CPU s | peak RSS pusher MiB "
        "| largest worker MiB | peak sum sampled MiB | stratus time / s3transfer time |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for layout in layouts:
        entry = summary[layout.name]
        for tool in (STRATUS, S3TRANSFER):
            figures = entry["tools"][tool]
            sampled = figures["sampled_peak_total_rss_bytes"]
            ratio = f"{entry['time_ratio_stratus_to_s3transfer']:.2f}" if tool == STRATUS else ""
            lines.append(
                f"| {layout.name} ({layout.total_bytes / common.MIB:.0f} MiB) | {tool} | {figures['push_seconds']:.2f} | "
                f"{figures['mib_per_second']:.1f} | {figures['process_seconds']:.2f} | "
                f"{figures['pusher_cpu_seconds']:.1f} | {figures['moto_cpu_seconds']:.1f} | "
                f"{figures['self_max_rss_bytes'] / common.MIB:.1f} | {figures['children_max_rss_bytes'] / common.MIB:.1f} | "
                + (f"{sampled / common.MIB:.1f}" if sampled else "n/a") + f" | {ratio} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
