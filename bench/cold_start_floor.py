"""The cold-start floor: a Lambda handler that imports only what the receiver's path cannot
avoid (cryptography's RSA module; boto3 too when FLOOR_BOTO3 is set) and answers at once."""

import os

from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: F401 - the floor itself

if os.environ.get("FLOOR_BOTO3"):
    import boto3  # noqa: F401


def handler(event: object, context: object) -> dict[str, object]:
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": "{}"}
