"""Throughput and latency of the registry's hot routes, beside a bare ASGI app and Distribution.

    python benchmarks/registry_bench.py [--duration 5] [--connections 32] [--rounds 3]

The run starts its own moto S3 server on a loopback port, pushes a generated
two-platform image (linux/amd64 and linux/arm64, with attestation manifests) with
`stratus push`, and starts these servers, each with one process:

  stratus                 `stratus serve` in its default configuration (access log on)
  stratus-no-access-log   the same with STRATUS_ACCESS_LOG=false
  bare                    benchmarks/bare_app.py: a constant JSON body under the same
                          uvicorn settings, the ceiling for a Python ASGI server here
  distribution            CNCF Distribution (`docker-registry serve`) with its s3 driver
                          on the same moto server, holding the same image (pushed with
                          skopeo); skipped when docker-registry or skopeo is missing

Each route is measured on every server in turn within a round, and the server order
rotates from round to round, so slow drift of a noisy machine hits all servers alike.
Ratios are the median of the per-round ratios. The S3 requests each run caused are
counted from moto's request log. Raw figures go to benchmarks/out/registry-<time>.json.
"""

from __future__ import annotations

import argparse
import http.client
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
import loadgen
import profiling
from support.layouts import AMD64, ARM64, ARTIFACT, DIRECTORY, LayoutDescription, LayoutSpec, generate_layout
from support.processes import (
    LOOPBACK,
    child_environment,
    free_port,
    run_tool,
    start_process,
    stop_process,
    wait_until_ready,
)
from support.s3 import MotoServer, create_bucket, s3_environment
from support.skopeo import run_skopeo

REPOSITORY = "bench/app"
TAG = "1.0"
STRATUS_BUCKET = "stratus-bench"
DISTRIBUTION_BUCKET = "distribution-bench"
# Accept header with every manifest type docker and containerd read, as they send it when pulling.
MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
STARTUP_TIMEOUT = 30.0

STRATUS = "stratus"
STRATUS_NO_ACCESS_LOG = "stratus-no-access-log"
BARE = "bare"
DISTRIBUTION = "distribution"


@dataclass(frozen=True)
class Route:
    """One request the benchmark repeats: method, path, headers, and the digest a registry returns."""

    name: str
    label: str
    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    expected_digest: str | None = None


@dataclass
class Server:
    """A running server under test and the status it must return on each route."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    expected_status: dict[str, int]
    bucket: str | None = None
    checks_digests: bool = True

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"


@dataclass
class MotoLog:
    """Counts the S3 requests moto logs per bucket since the last call to `take`."""

    path: Path
    offset: int = 0
    pattern: re.Pattern[str] = field(
        default_factory=lambda: re.compile(r'"(?:\x1b\[[0-9;]*m)*(?:GET|HEAD|PUT|POST|DELETE) /([a-z0-9.-]+)[/? ]')
    )

    def take(self) -> dict[str, int]:
        with open(self.path, "rb") as log:
            log.seek(self.offset)
            text = log.read().decode(errors="replace")
            self.offset = log.tell()
        counts: dict[str, int] = {}
        for bucket in self.pattern.findall(text):
            counts[bucket] = counts.get(bucket, 0) + 1
        return counts


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parse_arguments(argv)
    routes_methods = ("GET", "HEAD")
    if shutil.which("wrk") is None:
        print("registry_bench: wrk is not installed (Debian package wrk); nothing was measured.", file=sys.stderr)
        return 2
    missing = loadgen.missing_tools(routes_methods)
    if "hey" in missing:
        print("registry_bench: hey is not installed (Debian package hey), so blob HEAD is skipped: "
              "wrk 4.1.0 cannot measure HEAD requests.", file=sys.stderr)

    common.use_fake_aws_credentials()
    common.OUTPUT_DIRECTORY.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="registry-", dir=common.OUTPUT_DIRECTORY))
    machine = common.machine_info()
    print(common.format_machine(machine), flush=True)
    print(f"Working directory (logs): {work}", flush=True)

    with ExitStack() as stack:
        moto = MotoServer(work / "moto.log")
        moto.start()
        stack.callback(moto.stop)
        create_bucket(moto.endpoint, STRATUS_BUCKET)

        layout = generate_layout(
            work / "layout",
            LayoutSpec(platforms=(AMD64, ARM64), attestations=ARTIFACT, buildkit=(0, 32), output=DIRECTORY,
                       names=(f"{REPOSITORY}:{TAG}",)),
        )
        _push_with_stratus(moto.endpoint, layout)
        routes = _routes(layout, skip_head="hey" in missing)

        servers = [
            _start_stratus(stack, moto.endpoint, work, STRATUS, {}),
            _start_stratus(stack, moto.endpoint, work, STRATUS_NO_ACCESS_LOG, {"STRATUS_ACCESS_LOG": "false"}),
            _start_bare(stack, work, routes),
        ]
        distribution_note = _distribution_missing()
        if distribution_note is None:
            create_bucket(moto.endpoint, DISTRIBUTION_BUCKET)
            servers.append(_start_distribution(stack, moto.endpoint, work, layout))
        else:
            print(f"Distribution skipped: {distribution_note}", flush=True)

        for server in servers:
            _check_routes(server, routes)
        print("Every server returned the expected status and digest on every route.", flush=True)

        moto_log = MotoLog(moto.log_path)
        _warm_up(servers, routes, arguments, work)
        moto_log.take()
        runs = _measure(servers, routes, arguments, work, moto_log)

        profiles: dict[str, Any] = {}
        if arguments.profile:
            profiles = _profile(servers, routes, arguments, work)

    summary = _summarize(runs, servers, routes)
    print()
    print(format_tables(summary, routes, [server.name for server in servers]))
    document = {
        "benchmark": "registry",
        "settings": {
            "duration_seconds": arguments.duration,
            "connections": arguments.connections,
            "wrk_threads": arguments.threads,
            "rounds": arguments.rounds,
            "warmup_seconds": arguments.warmup,
        },
        "machine": machine,
        "image": {"repository": REPOSITORY, "tag": TAG, "digest": layout.digest,
                  "routes": {route.name: {"method": route.method, "path": route.path} for route in routes}},
        "distribution_skipped": distribution_note,
        "runs": runs,
        "summary": summary,
        "profiles": profiles,
    }
    path = common.write_json("registry", document)
    print(f"\nRaw figures: {path}")
    if not arguments.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds of load per route, server and round "
                        "(default: 5)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections (default: 32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default: 1, leaving the other "
                        "core of a 2-core machine to the server)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every route and server (default: 3)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load per route and "
                        "server before the first round (default: 2)")
    parser.add_argument("--profile", action="store_true", help="after the rounds, record py-spy profiles of "
                        "stratus on manifest GET by tag and blob GET")
    parser.add_argument("--keep-work", action="store_true", help="keep the working directory with the "
                        "servers' logs under benchmarks/out/")
    arguments = parser.parse_args(argv)
    if arguments.duration <= 0 or arguments.warmup < 0 or arguments.rounds < 1:
        parser.error("--duration and --rounds must be positive and --warmup not negative")
    if arguments.connections < arguments.threads or arguments.threads < 1:
        parser.error("--connections must be at least --threads, and --threads at least 1")
    return arguments


def _routes(layout: LayoutDescription, *, skip_head: bool) -> list[Route]:
    platform_manifest = layout.manifests["linux/amd64"]
    layer = layout.layers["linux/amd64"][-1]
    accept = (("Accept", MANIFEST_ACCEPT),)
    routes = [
        Route("base", "GET /v2/", "GET", "/v2/"),
        Route("manifest_tag", "manifest GET by tag", "GET", f"/v2/{REPOSITORY}/manifests/{TAG}", accept,
              layout.digest),
        Route("manifest_digest", "manifest GET by digest (platform)", "GET",
              f"/v2/{REPOSITORY}/manifests/{platform_manifest}", accept, platform_manifest),
        Route("blob_head", "blob HEAD", "HEAD", f"/v2/{REPOSITORY}/blobs/{layer}", (), layer),
        Route("blob_get", "blob GET (307)", "GET", f"/v2/{REPOSITORY}/blobs/{layer}", (), layer),
    ]
    if skip_head:
        routes = [route for route in routes if route.method != "HEAD"]
    return routes


def _push_with_stratus(endpoint: str, layout: LayoutDescription) -> None:
    environment = child_environment(s3_environment(endpoint, STRATUS_BUCKET))
    completed = run_tool(
        [sys.executable, "-m", "stratus", "push", str(layout.path), f"{REPOSITORY}:{TAG}"],
        timeout=120, environment=environment,
    )
    pushed = completed.stdout.decode().strip()
    if pushed != layout.digest:
        raise RuntimeError(f"stratus push printed {pushed!r}, expected the layout's digest {layout.digest}")
    print(f"Pushed {REPOSITORY}:{TAG} ({layout.digest}) with stratus push.", flush=True)


def _start_stratus(
    stack: ExitStack, endpoint: str, work: Path, name: str, settings: dict[str, str]
) -> Server:
    port = free_port()
    environment = child_environment({
        **s3_environment(endpoint, STRATUS_BUCKET), "PORT": str(port), "STRATUS_HOST": LOOPBACK, **settings,
    })
    log_path = work / f"{name}.log"
    process = start_process([sys.executable, "-m", "stratus", "serve"], environment=environment, log_path=log_path)
    stack.callback(stop_process, process)
    wait_until_ready(process, port, "/v2/", timeout=STARTUP_TIMEOUT, expected_status=200,
                     describe=f"stratus serve ({name})", log_path=log_path)
    expected = {"base": 200, "manifest_tag": 200, "manifest_digest": 200, "blob_head": 200, "blob_get": 307}
    return Server(name, port, process, log_path, expected, bucket=STRATUS_BUCKET)


def _start_bare(stack: ExitStack, work: Path, routes: list[Route]) -> Server:
    port = free_port()
    log_path = work / "bare.log"
    command = [sys.executable, str(common.BENCHMARKS_DIRECTORY / "bare_app.py"), "--port", str(port)]
    process = start_process(command, environment=child_environment(), log_path=log_path)
    stack.callback(stop_process, process)
    wait_until_ready(process, port, "/v2/", timeout=STARTUP_TIMEOUT, expected_status=200,
                     describe="bare ASGI app", log_path=log_path)
    return Server(BARE, port, process, log_path, {route.name: 200 for route in routes}, checks_digests=False)


def _distribution_missing() -> str | None:
    """Return why Distribution cannot be measured, or None when it can."""
    for tool, package in (("docker-registry", "docker-registry"), ("skopeo", "skopeo")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package {package})"
    return None


def _start_distribution(stack: ExitStack, endpoint: str, work: Path, layout: LayoutDescription) -> Server:
    from support.s3 import FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY, REGION

    port = free_port()
    config = work / "distribution.yml"
    # Distribution's defaults otherwise: logging at info with its access log, redirects
    # to presigned URLs on, and the in-memory blob descriptor cache of its sample config.
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: info\n"
        "storage:\n"
        "  s3:\n"
        f"    accesskey: {FAKE_ACCESS_KEY_ID}\n"
        f"    secretkey: {FAKE_SECRET_ACCESS_KEY}\n"
        f"    region: {REGION}\n"
        f"    regionendpoint: http://{endpoint}\n"
        "    forcepathstyle: true\n"
        f"    bucket: {DISTRIBUTION_BUCKET}\n"
        "    secure: false\n"
        "    v4auth: true\n"
        "  cache:\n    blobdescriptor: inmemory\n"
        "http:\n"
        f"  addr: {LOOPBACK}:{port}\n"
        "  secret: registry-bench-secret\n"
    )
    environment = child_environment()
    # Distribution's s3 driver refuses to start while AWS_CA_BUNDLE is set.
    environment.pop("AWS_CA_BUNDLE", None)
    log_path = work / "distribution.log"
    process = start_process(["docker-registry", "serve", str(config)], environment=environment, log_path=log_path)
    stack.callback(stop_process, process)
    wait_until_ready(process, port, "/v2/", timeout=STARTUP_TIMEOUT, expected_status=200,
                     describe="docker-registry serve", log_path=log_path)

    run_skopeo([
        "copy", "--all", "--preserve-digests", "--dest-tls-verify=false", "--retry-times", "0",
        f"oci:{layout.path}:{TAG}", f"docker://{LOOPBACK}:{port}/{REPOSITORY}:{TAG}",
    ])
    print(f"Copied {REPOSITORY}:{TAG} into Distribution with skopeo copy --all --preserve-digests.", flush=True)
    # Distribution returns the same redirect for HEAD on a blob as for GET.
    expected = {"base": 200, "manifest_tag": 200, "manifest_digest": 200, "blob_head": 307, "blob_get": 307}
    return Server(DISTRIBUTION, port, process, log_path, expected, bucket=DISTRIBUTION_BUCKET)


def _check_routes(server: Server, routes: list[Route]) -> None:
    """Send each route once and raise unless the status (and digest, for registries) is as expected."""
    for route in routes:
        connection = http.client.HTTPConnection(LOOPBACK, server.port, timeout=10)
        try:
            connection.request(route.method, route.path, headers=dict(route.headers))
            response = connection.getresponse()
            response.read()
        finally:
            connection.close()
        expected = server.expected_status[route.name]
        if response.status != expected:
            raise RuntimeError(f"{server.name}: {route.method} {route.path} returned {response.status}, "
                               f"expected {expected}")
        digest = response.getheader("Docker-Content-Digest")
        # Distribution's blob redirect carries no Docker-Content-Digest, so only 200s are checked.
        checked = server.checks_digests and expected == 200 and route.expected_digest is not None
        if checked and digest != route.expected_digest:
            raise RuntimeError(f"{server.name}: {route.method} {route.path} returned digest {digest}, "
                               f"expected {route.expected_digest}")
        if expected == 307 and not response.getheader("Location"):
            raise RuntimeError(f"{server.name}: {route.method} {route.path} returned 307 without Location")


def _load(server: Server, route: Route, arguments: argparse.Namespace, work: Path, duration: int) -> loadgen.LoadResult:
    return loadgen.run_load(
        server.url(route.path), route.method, route.headers,
        duration=duration, connections=arguments.connections, threads=arguments.threads,
        expected_status=server.expected_status[route.name], script_directory=work,
    )


def _warm_up(servers: list[Server], routes: list[Route], arguments: argparse.Namespace, work: Path) -> None:
    if arguments.warmup == 0:
        return
    print(f"Warming up: {arguments.warmup:g} s per route and server.", flush=True)
    for route in routes:
        for server in servers:
            _load(server, route, arguments, work, arguments.warmup)


def _measure(
    servers: list[Server], routes: list[Route], arguments: argparse.Namespace, work: Path, moto_log: MotoLog
) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    for round_number in range(arguments.rounds):
        shift = round_number % len(servers)
        order = servers[shift:] + servers[:shift]
        for route in routes:
            for server in order:
                result = _load(server, route, arguments, work, arguments.duration)
                s3_requests = moto_log.take().get(server.bucket, 0) if server.bucket else 0
                _check_alive(server)
                runs.append({
                    "round": round_number + 1, "route": route.name, "server": server.name,
                    "s3_requests": s3_requests, **result.to_json(),
                })
                print(
                    f"round {round_number + 1}/{arguments.rounds}  {route.label:34} {server.name:22} "
                    f"{result.requests_per_second:9.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
                    f"p99 {result.p99_ms:7.2f} ms  ({result.tool}; S3 requests {s3_requests}"
                    + (f"; errors {result.errors}" if result.errors else "")
                    + (f"; unexpected status {result.unexpected_status}" if result.unexpected_status else "")
                    + ")",
                    flush=True,
                )
    return runs


def _check_alive(server: Server) -> None:
    status = server.process.poll()
    if status is not None:
        raise RuntimeError(f"{server.name} exited with status {status} during the run; see {server.log_path}")


def _profile(
    servers: list[Server], routes: list[Route], arguments: argparse.Namespace, work: Path
) -> dict[str, Any]:
    if profiling.py_spy_path() is None:
        print("Profiles skipped: py-spy is not installed (pip install py-spy).", flush=True)
        return {}
    profiles: dict[str, Any] = {}
    targets = [server for server in servers if server.name in (STRATUS, STRATUS_NO_ACCESS_LOG)]
    for route in routes:
        if route.name not in ("manifest_tag", "blob_get"):
            continue
        for server in targets:
            raw = work / f"profile-{server.name}-{route.name}.txt"
            recorder = profiling.start_recording(server.process.pid, arguments.duration, raw, work / "py-spy.log")
            time.sleep(0.5)
            result = _load(server, route, arguments, work, arguments.duration)
            try:
                recorder.wait(timeout=arguments.duration + 30)
            except subprocess.TimeoutExpired:
                stop_process(recorder)
            if not raw.exists():
                print(f"py-spy wrote no profile for {server.name} on {route.label}; see {work / 'py-spy.log'}")
                continue
            profile = profiling.read_profile(raw)
            summary = profiling.summarize(profile)
            summary["logging_share"] = profile.share_of(lambda frame: "(logging/" in frame)
            summary["requests_per_second_while_profiled"] = result.requests_per_second
            key = f"{server.name}/{route.name}"
            profiles[key] = summary
            saved = common.OUTPUT_DIRECTORY / f"profile-{server.name}-{route.name}-{common.timestamp()}.txt"
            shutil.copyfile(raw, saved)
            print()
            print(profiling.format_summary(f"py-spy, {server.name}, {route.label} "
                                           f"({result.requests_per_second:.0f} req/s while sampled)", summary))
            print(f"  stacks with a logging frame: {summary['logging_share'] * 100:.1f}%; raw stacks: {saved}")
    return profiles


def _summarize(runs: list[dict[str, Any]], servers: list[Server], routes: list[Route]) -> dict[str, Any]:
    names = [server.name for server in servers]
    summary: dict[str, Any] = {}
    for route in routes:
        by_server: dict[str, Any] = {}
        for name in names:
            selected = [run for run in runs if run["route"] == route.name and run["server"] == name]
            if not selected:
                continue
            total_requests = sum(run["requests"] for run in selected)
            by_server[name] = {
                "tool": selected[0]["tool"],
                "requests_per_second": common.median([run["requests_per_second"] for run in selected]),
                "p50_ms": common.median([run["p50_ms"] for run in selected]),
                "p99_ms": common.median([run["p99_ms"] for run in selected]),
                "errors": sum(run["errors"] for run in selected),
                "unexpected_status": sum(run["unexpected_status"] for run in selected),
                "s3_requests_per_1000": 1000 * sum(run["s3_requests"] for run in selected) / max(total_requests, 1),
            }
        ratios = {}
        for numerator, denominator in ((STRATUS, BARE), (STRATUS_NO_ACCESS_LOG, BARE), (STRATUS, DISTRIBUTION),
                                       (STRATUS_NO_ACCESS_LOG, DISTRIBUTION)):
            ratio = _paired_ratio(runs, route.name, numerator, denominator)
            if ratio is not None:
                ratios[f"{numerator}/{denominator}"] = ratio
        summary[route.name] = {"servers": by_server, "ratios": ratios}
    return summary


def _paired_ratio(runs: list[dict[str, Any]], route: str, numerator: str, denominator: str) -> float | None:
    """Return the median over rounds of numerator's req/s divided by denominator's in the same round."""
    rates: dict[tuple[str, int], float] = {
        (run["server"], run["round"]): run["requests_per_second"] for run in runs if run["route"] == route
    }
    ratios = [
        rates[(numerator, round_number)] / rates[(denominator, round_number)]
        for (server, round_number) in rates
        if server == numerator and rates.get((denominator, round_number))
    ]
    return common.median(ratios) if ratios else None


def format_tables(summary: dict[str, Any], routes: list[Route], names: list[str]) -> str:
    """Format the medians and ratios as two Markdown tables."""
    lines = [
        "| route | server | tool | req/s | p50 ms | p99 ms | S3 requests per 1000 |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for route in routes:
        for name in names:
            figures = summary[route.name]["servers"].get(name)
            if figures is None:
                continue
            lines.append(
                f"| {route.label} | {name} | {figures['tool']} | {figures['requests_per_second']:,.0f} | "
                f"{figures['p50_ms']:.2f} | {figures['p99_ms']:.2f} | {figures['s3_requests_per_1000']:.2f} |"
            )
    columns = [f"{STRATUS}/{BARE}", f"{STRATUS_NO_ACCESS_LOG}/{BARE}", f"{STRATUS}/{DISTRIBUTION}",
               f"{STRATUS_NO_ACCESS_LOG}/{DISTRIBUTION}"]
    lines += ["", "| route | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for route in routes:
        ratios = summary[route.name]["ratios"]
        cells = [f"{ratios[column]:.2f}" if column in ratios else "n/a" for column in columns]
        lines.append(f"| {route.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
