"""`dysink-export triton-repo`, `dysink-serve` and `dysink-client`."""

from __future__ import annotations

import shlex
import sys
import time

import click

from ..cli.common import OneLineCommand, flag_names, install_stop_signals, shared, version_option
from ..atomic import check_output_file
from ..errors import DysinkError
from ..jsonfile import read_json_object
from ..limits import port_of_url
from ..runtime.report import format_summary, summarize
from ..runtime.spec import RunSpec
from .client import stream_to_dir
from .repo import write_repo
from .server import DEFAULT_HOST, TritonServer, check_host, check_ports, fetch_server as fetch


@click.command("triton-repo")
@shared("--bundle", "bundle_path", type=click.Path(), required=True, note="Its backend is onnxruntime.")
@click.option("--out", type=click.Path(), required=True, help="Model repository directory to create.")
@click.option("--instances", type=int, default=1, show_default=True, help="Model instances (each runs its own streams).")
@click.option("--kind", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="Instance kind: onnxruntime on the CPU, or on CUDA (needs onnxruntime-gpu on the server).")
@click.option("--gpus", default=None, help="--kind gpu: device ids, comma-separated. [default: 0]")
@click.option("--max-streams", type=int, default=None,
              help="Concurrent streams per instance. [default: 2 on the CPU; on a GPU, from the memory planner]")
@shared("--threads", type=int, default=1, note="Used by onnxruntime (the served model runs no torch); per "
        "stream on the server.")
@shared("--tokenizer", type=click.Path(), default=None, note="Lets requests carry PROMPT text (the bundle needs "
        "its umt5_encoder graph).")
@shared("--overwrite", is_flag=True)
def triton_repo_command(bundle_path, out, instances, kind, gpus, max_streams, threads, tokenizer, overwrite):
    """A Triton Inference Server model repository that streams this bundle (decoupled Python backend)."""
    t0 = time.perf_counter()
    try:
        gpu_ids = [int(g) for g in gpus.split(",")] if gpus else None
    except ValueError:
        raise DysinkError(f"--gpus must be comma-separated integers, got {gpus!r}") from None
    path = write_repo(bundle_path, out, instances, kind, gpu_ids, max_streams, threads, overwrite, tokenizer)
    click.echo(f"wrote {path} (model 'dysink'; serve it with: dysink-serve --repo {shlex.quote(str(path))})")
    click.echo(f"DONE | Runtime: {time.perf_counter() - t0:.1f}s | Command: {shlex.join(sys.argv)}")


@click.command("dysink-serve", cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@version_option
@click.option("--repo", required=True, type=click.Path(), help="Repository from dysink-export triton-repo.")
@click.option("--tritonserver", "binary", type=click.Path(), default=None,
              help="The tritonserver binary. [default: on PATH, else the one --fetch-server unpacked]")
@click.option("--fetch-server", is_flag=True,
              help="First unpack tritonserver from PyPI's nvidia-pytriton wheel into ~/.cache/dysink-deploy "
                   "(x86-64 Linux; no GPU needed).")
@click.option("--grpc-port", type=int, default=8001, show_default=True, help="gRPC port (0: a free one).")
@click.option("--http-port", type=int, default=8000, show_default=True, help="HTTP port (0: a free one).")
@click.option("--host", default=DEFAULT_HOST, show_default=True,
              help="The address HTTP, gRPC and metrics listen on: 127.0.0.1 is this machine only; 0.0.0.0 (every "
                   "interface) or an interface's address lets other machines stream, with no authentication or "
                   "TLS (see docs/serving.md before exposing it).")
@click.option("--log", "log_file", type=click.Path(), default=None, help="Write the server's log here.")
def serve_main(repo, binary, fetch_server, grpc_port, http_port, host, log_file):
    """Start Triton Inference Server on REPO, wait until it is ready, print the endpoints; Ctrl-C or
    SIGTERM stops it."""
    install_stop_signals()
    try:
        check_host(host)                    # before --fetch-server downloads anything
        check_ports({"--grpc-port": grpc_port, "--http-port": http_port})
        check_output_file(log_file, "--log", links=True)   # a directory, a path under a file: one line
        if fetch_server:
            click.echo(f"tritonserver: {fetch()}")
        server = TritonServer(repo, binary, grpc_port, http_port, log_file, host=host).start()
    except DysinkError as exc:
        click.echo(f"error: {flag_names(str(exc))}", err=True)
        sys.exit(2)
    click.echo(f"ready: gRPC {server.grpc_url}, HTTP {server.http_url}, metrics {server.metrics_url}")
    if host != DEFAULT_HOST:
        click.echo(f"note: listening on {host}, not only on this machine: anyone who reaches it can stream "
                   "(no authentication or TLS; see docs/serving.md)")
    click.echo(f"stream with: dysink-client --url {server.grpc_url} --blocks 12 --out out/")
    try:
        while server.proc.poll() is None:
            time.sleep(0.5)
        click.echo(f"error: tritonserver exited with code {server.proc.returncode}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("stopping tritonserver", err=True)
        server.stop()
        sys.exit(0)


@click.command("dysink-client", cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@version_option
@click.option("--url", default="127.0.0.1:8001", show_default=True, help="The server's gRPC endpoint.")
@shared("--blocks", type=int, default=12)
@shared("--seed", type=int, default=0)
@click.option("--out", required=True, type=click.Path(), help="Output directory (video.mp4, stats.json).")
@shared("--overwrite", is_flag=True)
@click.option("--prompt-embeds", type=click.Path(), default=None,
              help="umT5 output in a .safetensors file. [default: the tiny demo's embedded prompt]")
@shared("--prompt", default=None, note="Needs a repository made with --tokenizer.")
@click.option("--config", "config_file", type=click.Path(), default=None,
              help="JSON file of host-side stream settings (dedup threshold, eviction, schedule).")
def client_main(url, blocks, seed, out, overwrite, prompt_embeds, prompt, config_file):
    """Stream one video from a Triton server (dysink-serve) into --out, block by block."""
    install_stop_signals()
    t0 = time.perf_counter()
    try:
        RunSpec(seed=seed, blocks=blocks)   # the one check of a noise seed and of a block count
        port_of_url(url)                    # a port beyond 65535 is one line, not a gRPC error
        settings = read_json_object(config_file, "--config") if config_file else None
        emb = None
        if prompt_embeds:
            from safetensors.numpy import load_file

            tensors = load_file(prompt_embeds)
            if len(tensors) != 1:
                raise DysinkError(f"--prompt-embeds {prompt_embeds!r} must hold exactly one tensor")
            emb = next(iter(tensors.values())).astype("float32")
            emb = emb[0] if emb.ndim == 3 else emb
        entries = stream_to_dir(url, out, blocks, seed, overwrite, prompt_embeds=emb, settings=settings,
                                prompt=prompt)
    except DysinkError as exc:
        click.echo(f"error: {flag_names(str(exc))}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted; the blocks received are in --out", err=True)
        sys.exit(130)
    if entries:
        for line in format_summary(summarize(entries, {"wall_s": round(time.perf_counter() - t0, 3)})):
            click.echo(line)
    click.echo(f"DONE | {len(entries)} blocks from {url} -> {out} | Runtime: {time.perf_counter() - t0:.1f}s")

