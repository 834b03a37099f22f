"""Local stack launcher: `python scripts/stack.py demo|up|down` (run it with the project's venv python).

demo  start S3, worker, identity, content and gateway; make one image through the public APIs into ./out/;
      stop everything it started (on success, failure or Ctrl-C).
up    start the same stack and leave it running (logs in .run/<name>.log, PIDs in .run/stack.json).
playground  on the running stack: print a token for --sub, with an avatar of theirs ready (made if they have none).
down  stop what .run/stack.json lists.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import FrameType

if __package__ in (None, ""):
    # Run as a script: make the repository root importable so `scripts.stacklib` resolves.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.stacklib.config import PORT_ENV, SERVICE_NAMES, StackConfig, from_environment
from scripts.stacklib.demo import finish_lora_writer, run_flow, start_lora_writer
from scripts.stacklib.runner import LocalStack, RabbitMQUnavailable, StackError, running_from_state, stop_recorded

EXIT_FAILED = 1
EXIT_NO_RABBITMQ = 2
EXIT_INTERRUPTED = 130


def say(line: str) -> None:
    """Progress on stdout."""
    print(f"[stack] {line}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Subcommand and the overrides of ports, names and folders."""
    parser = argparse.ArgumentParser(prog="python scripts/stack.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("demo", "up", "playground", "smoke", "down"):
        sub = commands.add_parser(name)
        sub.add_argument("--run-dir", type=Path, default=None, help="logs, stack.json, SQLite files (.run)")
        if name == "playground":
            sub.add_argument("--sub", default="playground-user", help="the owner the token speaks for")
        if name in ("down", "playground", "smoke"):
            continue
        sub.add_argument("--host", default=None, help="interface every service binds (127.0.0.1)")
        for service in SERVICE_NAMES:
            sub.add_argument(f"--{service}-port", type=int, default=None, help=f"env {PORT_ENV[service]}")
        sub.add_argument("--free-ports", action="store_true", help="let the kernel pick every port")
        sub.add_argument("--prefix", default=None, help="topology prefix (env VIXEN_TOPOLOGY_PREFIX)")
        sub.add_argument("--rabbitmq-url", default=None, help="env RABBITMQ_URL")
        sub.add_argument("--model-dir", type=Path, default=None, help="tiny model folder (.cache/tiny-sdxl)")
        if name == "demo":
            sub.add_argument("--out", type=Path, default=Path("out"), help="where the PNG goes (./out)")
            sub.add_argument("--size", type=int, choices=(64, 128), default=64, help="width and height")
            sub.add_argument("--steps", type=int, default=4)
            sub.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the image")
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> StackConfig:
    """Environment first, then the flags."""
    config = from_environment()
    if args.run_dir is not None:
        config = replace(config, run_dir=args.run_dir.resolve())
    if args.command in ("down", "playground", "smoke"):
        return config
    if args.free_ports:
        config = config.with_free_ports()
    ports = dict(config.ports)
    for service in SERVICE_NAMES:
        value = getattr(args, f"{service}_port")
        if value is not None:
            ports[service] = value
    config = replace(config, ports=ports)
    if args.host:
        config = replace(config, host=args.host)
    if args.prefix is not None:
        config = replace(config, topology_prefix=args.prefix)
    if args.rabbitmq_url:
        config = replace(config, rabbitmq_url=args.rabbitmq_url)
    if args.model_dir is not None:
        config = replace(config, model_dir=args.model_dir.resolve())
    return config


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def report_failure(error: StackError) -> None:
    """One line naming the failed step, then the relevant log tail."""
    print(f"[stack] FAILED at step '{error.step}': {error.message}", file=sys.stderr, flush=True)
    if error.detail.strip():
        print(error.detail, file=sys.stderr, flush=True)


def demo(args: argparse.Namespace, config: StackConfig) -> int:
    """Start, make one image, stop."""
    began = time.monotonic()
    stack = LocalStack(config, say=say)
    lora_path = config.run_dir / "demo-lora.safetensors"
    lora_log = config.run_dir / "demo-lora.log"
    writer = None
    try:
        stack.preflight()
        config.run_dir.mkdir(parents=True, exist_ok=True)
        writer = start_lora_writer(config, lora_path, lora_log)
        stack.start()
        started = time.monotonic() - began
        lora_bytes = finish_lora_writer(writer, lora_path, lora_log)
        result = run_flow(
            stack,
            lora_bytes,
            args.out.resolve(),
            width=args.size,
            height=args.size,
            steps=args.steps,
            timeout=args.timeout,
            say=say,
        )
    except RabbitMQUnavailable as error:
        print(error.message, file=sys.stderr, flush=True)
        return EXIT_NO_RABBITMQ
    except StackError as error:
        report_failure(error)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("[stack] interrupted; stopping what was started", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
        stack.stop()
    say(f"image:         {result.image_path}")
    say(f"generation id: {result.generation_id}")
    say(f"size:          {result.width}x{result.height}")
    if result.generation_time_seconds is not None:
        say(f"worker time:   {result.generation_time_seconds:.3f}s")
    if result.worker_timings:
        parts = ", ".join(f"{k}={v}" for k, v in result.worker_timings.items())
        say(f"worker timings: {parts}")
    phases = {"stack_start_s": started, **result.phases, "total_s": time.monotonic() - began}
    say("wall times:    " + ", ".join(f"{k}={v:.1f}" for k, v in phases.items()))
    return 0


def up(config: StackConfig) -> int:
    """Start and leave running."""
    running = running_from_state(config.state_file)
    if running:
        names = ", ".join(running)
        print(f"a stack is already running ({names}); `python scripts/stack.py down` first", file=sys.stderr)
        return EXIT_FAILED
    stack = LocalStack(config, say=say)
    try:
        stack.start()
    except RabbitMQUnavailable as error:
        print(error.message, file=sys.stderr, flush=True)
        return EXIT_NO_RABBITMQ
    except StackError as error:
        report_failure(error)
        return EXIT_FAILED
    except KeyboardInterrupt:
        stack.stop()
        return EXIT_INTERRUPTED
    print(usage_text(stack), flush=True)
    return 0


def playground(args: argparse.Namespace, config: StackConfig) -> int:
    """A token and a ready avatar for the playground, on the stack `up` started."""
    from scripts.stacklib.playground import prepare

    try:
        access = prepare(config, args.sub)
    except StackError as error:
        report_failure(error)
        return EXIT_FAILED
    made = "made now, with the tiny LoRA" if access.created else "already there"
    print(f"playground  {access.url}", flush=True)
    print(f"avatar      {access.avatar_id} ({made})", flush=True)
    print(f"token       {access.token}", flush=True)
    print(f"            (owner {args.sub!r}; paste it into the page's token field; valid 8 hours)", flush=True)
    return 0


def smoke(config: StackConfig) -> int:
    """The smoke test: against the deployment its SMOKE_* and services' variables name, else against the stack `up`
    started, every variable filled in from it (docs/deploy.md § Smoke test)."""
    env = dict(os.environ)
    if not env.get("SMOKE_CONTENT_URL"):
        from scripts.stacklib.smoke_env import local_smoke_env

        try:
            env = local_smoke_env(config, env)
        except StackError as error:
            report_failure(error)
            return EXIT_FAILED
        say(f"against the local stack ({env['SMOKE_CONTENT_URL']})")
    done = subprocess.run([sys.executable, "-m", "services.tools.smoke"], env=env, check=False)
    return done.returncode


def usage_text(stack: LocalStack) -> str:
    """The URLs and a curl session against the running stack."""
    urls = stack.urls()
    identity, content, gateway = urls["identity"], urls["content"], urls["gateway"]
    return f"""
stack is up (logs: {stack.config.run_dir}/<name>.log; stop it with `python scripts/stack.py down`)
  content  {content}    identity {identity}    gateway {gateway}/readyz {gateway}/metrics
  worker   {urls["worker"]}/healthz    S3 {urls["s3"]} (bucket {stack.config.bucket}, SeaweedFS: signed requests only,
           region auto, the key in {stack.config.run_dir}/s3-credentials.json)
  playground {content}/playground    (a token and a ready avatar: `make playground SUB=<you>`)

curl session (needs jq; run it from the project root, where .run/auth-dev-secret is):
  AUTH="authorization: Bearer $(.venv/bin/python -m services.tools.token mint --sub demo-user)"
  AVATAR=$(curl -s -X POST {identity}/api/v1/avatars -H "$AUTH" -H 'content-type: application/json' \\
      -d '{{"name": "demo"}}' | jq -r .id)
  .venv/bin/python -m gpu.tiny lora --out /tmp/demo-lora.safetensors --seed 1
  SIZE=$(wc -c < /tmp/demo-lora.safetensors | tr -d ' ')
  REG=$(curl -s -X POST {identity}/api/v1/avatars/$AVATAR/loras -H "$AUTH" -H 'content-type: application/json' \\
      -d '{{"size_bytes": '$SIZE', "base_model": "tiny-sdxl-random", "default_scale": 0.8, "trigger_words": ["sks"]}}')
  curl -s -X PUT --upload-file /tmp/demo-lora.safetensors "$(echo $REG | jq -r .upload_url)"
  curl -s -X POST {identity}/api/v1/loras/$(echo $REG | jq -r .lora_id)/complete -H "$AUTH" | jq .status
  curl -s {content}/api/v1/content/avatars/$AVATAR -H "$AUTH" | jq .ready
  GEN=$(curl -s -X POST {content}/api/v1/content/generate -H "$AUTH" -H 'content-type: application/json' \\
      -H "Idempotency-Key: demo-$(date +%s%N)" \\
      -d '{{"avatar_id": "'$AVATAR'", "prompt": "a portrait of sks person", "width": 64, "height": 64, "steps": 4}}' \\
      | jq -r .id)
  curl -s {content}/api/v1/content/$GEN -H "$AUTH" -H 'Prefer: wait=30' | jq '{{status, image, error, timings}}'
  curl -sN {content}/api/v1/content/$GEN/events -H "$AUTH"    # Server-Sent Events: queued → running → final
  curl -s "{content}/api/v1/content?limit=5" -H "$AUTH" | jq '.items[] | {{id, status}}'
  curl -s -o out.png "$(curl -s {content}/api/v1/content/$GEN -H "$AUTH" | jq -r .image.url)"
"""


def down(config: StackConfig) -> int:
    """Stop what the state file lists."""
    stopped = stop_recorded(config.state_file, say=say)
    say(f"stopped {stopped} process(es)" if stopped else "nothing was running")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Dispatch the subcommand; SIGINT, SIGTERM and SIGHUP stop what was started."""
    args = parse_args(argv)
    config = config_from(args)
    if args.command == "down":
        return down(config)
    if args.command == "playground":
        return playground(args, config)
    if args.command == "smoke":
        return smoke(config)
    # Explicit, so that Ctrl-C works even where SIGINT arrives ignored (a background job of a script).
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupt)
    if args.command == "up":
        return up(config)
    return demo(args, config)


if __name__ == "__main__":
    raise SystemExit(main())
