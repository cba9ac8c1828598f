"""The cold-start floor: a Lambda handler that imports only what the receiver's path cannot
avoid (cryptography's RSA module; boto3 too when FLOOR_BOTO3 is set) and answers at once.

With FLOOR_LIBRARIES set it also imports the libraries the product is built on and that
every door loads: structlog (which imports asyncio itself) and PyJWT. That second floor
shows how much of the gap is those libraries' import cost rather than the receiver's.

With FLOOR_DATA_MODEL (a module name) it also imports that module: `cold_start.py` writes
one that defines dataclasses shaped like the ones the receiver creates on its cold path, so
that floor includes the cost of the data model the project keeps its records in.

With FLOOR_PAUSE_COLLECTOR set it keeps Python's garbage collector paused from its first
line to its first answer, as the receiver's Lambda host does (receiver/hosts/aws_lambda.py):
the floor for the receiver's own code under the same collector policy."""

import gc
import importlib
import os

if os.environ.get("FLOOR_PAUSE_COLLECTOR"):
    gc.disable()

from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: F401 - the floor itself

if os.environ.get("FLOOR_BOTO3"):
    import boto3  # noqa: F401

if os.environ.get("FLOOR_LIBRARIES"):
    import asyncio  # noqa: F401

    import jwt  # noqa: F401
    import structlog  # noqa: F401

if os.environ.get("FLOOR_DATA_MODEL"):
    importlib.import_module(os.environ["FLOOR_DATA_MODEL"])


def handler(event: object, context: object) -> dict[str, object]:
    if not gc.isenabled():  # the first answer: resume as the receiver does
        gc.freeze()
        gc.enable()
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": "{}"}
