"""Lambda cold start: process start to the first answered notification, against a floor.

Every run starts a fresh `python -m awslambdaric <handler>` (the real runtime client)
against a fake Runtime API on loopback (tests/fakes/lambda_runtime.py), queues one event
and stops the clock when the handler's answer is posted back:

* receiver: `receiver.hosts.aws_lambda.handler` with a signed "validation required"
  notification in a Function URL event. On that first invocation it loads the config,
  opens the Runtime, fetches the sender's public key (loopback HTTP), verifies, and
  writes the record (`memory`, or `route53` against a moto_server) before answering.
* floor: `bench/cold_start_floor.py`, a handler module that imports only what the path
  cannot avoid (cryptography's RSA module; plus boto3 for Route 53) and answers a
  constant.
* lib floor: the same handler also importing structlog (and with it asyncio) and PyJWT,
  the libraries every door is built on, so the output separates their import cost from
  the receiver's own.
* model floor: the library floor also importing one module of dataclasses shaped like
  those the receiver creates on the same path (same options, field names, annotation
  texts, kinds of default and docstrings; recorded from a run of the receiver), so the
  output separates what creating the project's records costs from the rest of its code.
* lib floor paused, model floor paused: the same two with Python's garbage collector
  paused from their first line to their first answer, as the receiver's Lambda host
  pauses its own (receiver/hosts/aws_lambda.py): the floors under the receiver's
  collector policy, so that the pause's gain is not counted as the receiver's code being
  cheaper.

All are timed the same way, under the same runtime client and fake Runtime API, so
interpreter start, the client's own bootstrap and one exchange are in each.

Variants are interleaved run by run so that machine noise falls on all of them alike.
`--importtime` adds `python -X importtime` of the handler module (top cumulative entries).
Loopback only.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import py_compile
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # tests.fakes.lambda_runtime

from harness import json_server, moto_server  # noqa: E402

from receiver import signing  # noqa: E402
from tests.fakes.lambda_runtime import FakeLambdaRuntime  # noqa: E402
from tests.hosts import events  # noqa: E402

CRN = signing.DEMO_CRN
ZONE = "example.com"
RECEIVER_HANDLER = "receiver.hosts.aws_lambda.handler"
FLOOR_HANDLER = "cold_start_floor.handler"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


@contextmanager
def key_endpoint(public_pem: bytes) -> Iterator[str]:
    """Certificate Manager's public-key endpoint: `{"publicKey": PEM}` for any instance."""
    with json_server({"publicKey": public_pem.decode()}) as base:
        yield f"{base}/{{instance_crn}}/publicKey"


@contextmanager
def moto() -> Iterator[str]:
    """moto_server with the zone the receiver writes to."""
    with moto_server(env={**os.environ, **AWS_ENV}) as url:
        import boto3

        boto3.client("route53", endpoint_url=url, **_client_credentials()).create_hosted_zone(
            Name=ZONE, CallerReference=str(time.time_ns())
        )
        yield url


def _client_credentials() -> dict[str, str]:
    return {
        "region_name": "us-east-1",
        "aws_access_key_id": "bench",
        "aws_secret_access_key": "bench",
    }


def write_config(folder: Path, key_url: str, provider: str, moto_url: str | None) -> Path:
    zone = f'[[zones]]\nname = "{ZONE}"\nprovider = "{provider}"\n'
    if provider == "route53":
        zone += f'[zones.options]\nendpoint = "{moto_url}"\n'
    path = folder / f"{provider}.toml"
    path.write_text(
        "[certificate_manager]\n"
        f'allowed_instances = ["{CRN}"]\n'
        f'public_key_url = "{key_url}"\n'
        "[log]\n"
        'format = "json"\n'
        "[propagation]\n"
        "check = false\n"
        "[journal]\n"
        "enabled = false\n" + zone
    )
    return path


def one_run(handler: str, env: dict[str, str], event: dict[str, object]) -> tuple[float, float]:
    """Seconds from process start to (first /next poll, answer posted)."""
    fake = FakeLambdaRuntime().start()
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "awslambdaric", handler],
        env={**env, "AWS_LAMBDA_RUNTIME_API": fake.address},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=HERE,
    )
    try:
        answer = fake.invoke(event, timeout=60)
        answered = time.monotonic()
        if answer.kind != "response" or answer.body.get("statusCode") != 200:
            raise SystemExit(f"{handler}: unexpected answer {answer}")
        return fake.polls[0] - started, answered - started
    finally:
        proc.kill()
        proc.wait()
        fake.stop()


def importtime(handler: str, env: dict[str, str], top: int) -> list[str]:
    module = handler.rsplit(".", 1)[0]
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        env=env,
        cwd=HERE,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = []
    for line in result.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), int(parts[0]), parts[2].rstrip()))
    rows.sort(reverse=True)
    return [
        f"    {cum / 1000:7.1f} ms cum {own / 1000:6.1f} ms own {name}"
        for cum, own, name in rows[:top]
    ]


CLASS_CREATION = """
import dataclasses, json, sys, time
made = {"seconds": 0.0, "classes": []}
plain = dataclasses.dataclass

def shape(cls, options):
    fields = []
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
        value = cls.__dict__.get(name, dataclasses.MISSING)
        if isinstance(value, dataclasses.Field):
            default = "factory" if value.default_factory is not dataclasses.MISSING else (
                "none" if value.default is dataclasses.MISSING else "value")
        else:
            default = "none" if value is dataclasses.MISSING else "value"
        fields.append([name, str(annotation), default])
    return {"name": cls.__qualname__, "module": cls.__module__, "options": options,
            "doc": "__doc__" in cls.__dict__ and cls.__doc__ is not None, "fields": fields}

def timed(cls=None, /, **options):
    def wrap(target):
        ours = target.__module__.split(".")[0] in ("receiver", "providers")
        found = shape(target, options) if ours else None  # before fields become defaults
        started = time.perf_counter()
        result = plain(**options)(target)
        if ours:
            made["seconds"] += time.perf_counter() - started
            made["classes"].append(found)
        return result
    return wrap if cls is None else wrap(cls)

dataclasses.dataclass = timed
module, _, name = sys.argv[1].rpartition(".")
handler = getattr(__import__(module, fromlist=[name]), name)
answer = handler(json.loads(sys.argv[2]), None)
assert answer["statusCode"] == 200, answer
print(json.dumps(made))
"""


def class_creation(
    handler: str, env: dict[str, str], event: dict[str, object]
) -> tuple[float, list[dict[str, Any]]]:
    """Seconds the receiver's own dataclasses take to be created (Python 3.11 compiles each
    generated method on its own) over the import and first invocation, and their shapes."""
    result = subprocess.run(
        [sys.executable, "-c", CLASS_CREATION, handler, json.dumps(event)],
        env=env,
        cwd=HERE,
        capture_output=True,
        text=True,
        check=True,
    )
    made = json.loads(result.stdout.strip().splitlines()[-1])
    return made["seconds"], made["classes"]


DATA_MODEL_MODULE = "_cold_start_data_model"  # written beside the floor for one run
_DEFAULTS = {"none": "", "value": " = None", "factory": " = field(default_factory=tuple)"}


def data_model_source(classes: list[dict[str, Any]]) -> str:
    """One module of dataclasses shaped like the receiver's: the same options, field names,
    annotation texts, kinds of default and docstrings, so that creating them costs what
    creating the receiver's costs."""
    lines = ["from __future__ import annotations", "", "from dataclasses import dataclass, field"]
    for number, cls in enumerate(classes):
        options = ", ".join(f"{key}={value!r}" for key, value in cls["options"].items())
        lines += ["", "", f"@dataclass({options})", f"class Record{number}:"]
        if cls["doc"]:
            lines.append('    """A record."""')
        lines += [f"    {name}: {hint}{_DEFAULTS[kind]}" for name, hint, kind in cls["fields"]]
        if not cls["doc"] and not cls["fields"]:
            lines.append("    pass")
    return "\n".join(lines) + "\n"


@contextmanager
def data_model_module(classes: list[dict[str, Any]], provider: str) -> Iterator[str]:
    """The module, compiled as the receiver's are, importable from the floor's folder."""
    source = HERE / f"{DATA_MODEL_MODULE}_{provider}.py"
    source.write_text(data_model_source(classes))
    try:
        py_compile.compile(str(source), doraise=True)
        yield source.stem
    finally:
        source.unlink()
        Path(importlib.util.cache_from_source(str(source))).unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--providers", default="memory,route53")
    parser.add_argument("--importtime", action="store_true")
    args = parser.parse_args()
    providers = args.providers.split(",")

    # A deployment package is compiled at install (pip); this checkout may not be.
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "receiver", "providers", "bench", "tests"],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
        check=True,
    )
    with tempfile.TemporaryDirectory() as scratch, ExitStack() as modules:
        folder = Path(scratch)
        private = signing.generate_private_key()
        aws = moto() if "route53" in providers else nullcontext(None)
        with key_endpoint(signing.public_pem(private)) as key_url, aws as moto_url:
            import jwt
            from cryptography.hazmat.primitives.serialization import load_pem_private_key

            signer = load_pem_private_key(private, None)
            base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
            base.update(AWS_ENV, PYTHONDONTWRITEBYTECODE="1", AWS_LAMBDA_FUNCTION_NAME="bench")

            def event() -> dict[str, object]:
                claims = signing.notification_claims(
                    instance_crn=CRN,
                    event_type="cert_domain_validation_required",
                    domain=f"www.{ZONE}",
                    value=signing.challenge_value(),
                )
                body = signing.envelope(jwt.encode(claims, signer, algorithm="RS256"))
                return events.function_url(body, headers={"content-type": "application/json"})

            variants: dict[str, tuple[str, dict[str, str]]] = {}
            made: dict[str, tuple[float, int]] = {}
            for provider in providers:
                config = write_config(folder, key_url, provider, moto_url)
                boto = "1" if provider == "route53" else ""
                receiver = (
                    RECEIVER_HANDLER,
                    {**base, "DNS_CHALLENGE_RECEIVER_CONFIG": str(config)},
                )
                # What the receiver's own dataclasses take to create, and their shapes.
                creations = [class_creation(*receiver, event()) for _ in range(3)]
                shapes = creations[0][1]
                made[provider] = (statistics.median(c[0] for c in creations), len(shapes))
                model = modules.enter_context(data_model_module(shapes, provider))
                variants[f"{provider} floor"] = (FLOOR_HANDLER, {**base, "FLOOR_BOTO3": boto})
                variants[f"{provider} lib floor"] = (
                    FLOOR_HANDLER,
                    {**base, "FLOOR_BOTO3": boto, "FLOOR_LIBRARIES": "1"},
                )
                variants[f"{provider} model floor"] = (
                    FLOOR_HANDLER,
                    {
                        **base,
                        "FLOOR_BOTO3": boto,
                        "FLOOR_LIBRARIES": "1",
                        "FLOOR_DATA_MODEL": model,
                    },
                )
                for floor in ("lib floor", "model floor"):
                    handler, env = variants[f"{provider} {floor}"]
                    variants[f"{provider} {floor} paused"] = (
                        handler,
                        {**env, "FLOOR_PAUSE_COLLECTOR": "1"},
                    )
                variants[f"{provider} receiver"] = receiver

            for handler, env in variants.values():  # warm the page cache, unmeasured
                one_run(handler, env, event())
            timings: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
            for _ in range(args.runs):
                for name, (handler, env) in variants.items():
                    timings[name].append(one_run(handler, env, event()))

            print(f"Lambda cold start, real awslambdaric + fake Runtime API, {args.runs} runs each")
            print(f"{'variant':<26} {'init (to /next)':>16} {'first answer':>13}")
            for name, runs in timings.items():
                init = statistics.median(r[0] for r in runs)
                answer = statistics.median(r[1] for r in runs)
                print(f"{name:<26} {init * 1000:13.0f} ms {answer * 1000:10.0f} ms")
            if args.importtime:
                for name, (handler, env) in variants.items():
                    if name.endswith("receiver") or name == "route53 floor":
                        print(f"importtime {name} ({handler.rsplit('.', 1)[0]}):")
                        print("\n".join(importtime(handler, env, 14)))

            def ratios(over: str, under: str) -> str:
                found = []
                for provider in providers:
                    ours = statistics.median(r[1] for r in timings[f"{provider} {over}"])
                    floor = statistics.median(r[1] for r in timings[f"{provider} {under}"])
                    found.append(f"{provider} {ours / floor:.2f}")
                return ", ".join(found)

            print(
                "library floor/floor (structlog, asyncio, PyJWT alone): "
                + ratios("lib floor", "floor")
            )
            for provider, (seconds, classes) in made.items():
                ours = statistics.median(r[1] for r in timings[f"{provider} receiver"])
                floor = statistics.median(r[1] for r in timings[f"{provider} lib floor"])
                without = (ours - seconds) / floor
                print(
                    f"{provider}: the receiver's {classes} dataclasses take {seconds * 1000:.1f} ms"
                    f" to create; receiver/library floor without them {without:.2f}"
                )
            print(
                "model floor/library floor (the same dataclasses, in one module): "
                + ratios("model floor", "lib floor")
            )
            print(
                "paused model floor/paused library floor (the collector paused in both): "
                + ratios("model floor paused", "lib floor paused")
            )
            print("receiver/model floor: " + ratios("receiver", "model floor"))
            print(
                "receiver/paused library floor (the collector paused in both): "
                + ratios("receiver", "lib floor paused")
            )
            print("receiver/library floor: " + ratios("receiver", "lib floor"))
            print("cold start ratio receiver/floor: " + ratios("receiver", "floor"))


if __name__ == "__main__":
    main()
