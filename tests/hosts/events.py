"""Lambda events shaped like AWS's documented examples, for one request each.

- HTTP API payload 2.0 ("Working with AWS Lambda proxy integrations for HTTP APIs"):
  header names lower-cased, duplicates comma-joined, `routeKey` "POST /callback" on a
  route (or "$default"), `rawPath` carrying a named stage.
- Lambda Function URL (same 2.0 shape): `routeKey` and `stage` "$default",
  `domainName` "<url-id>.lambda-url.<region>.on.aws", `authorizer` only with IAM auth.
- REST API payload 1.0 ("Input format of a Lambda function for proxy integration"):
  no `version`, header names as the client sent them, `multiValueHeaders`, `path`
  without the stage (`requestContext.path` has it).
"""

from __future__ import annotations

import base64
from typing import Any

ACCOUNT = "123456789012"
SOURCE_IP = "192.0.2.1"  # TEST-NET-1: documentation only, never reached
USER_AGENT = "IBM-Cloud-Certificate-Manager"


def _body(body: bytes, base64_encoded: bool) -> str:
    return base64.b64encode(body).decode() if base64_encoded else body.decode()


def http_api_v2(
    body: bytes,
    *,
    headers: dict[str, str],
    method: str = "POST",
    path: str = "/callback",
    stage: str = "$default",
    base64_encoded: bool = False,
    request_id: str = "JKJaXmPLvHcESHA=",
) -> dict[str, Any]:
    raw_path = path if stage == "$default" else f"/{stage}{path}"
    return {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": raw_path,
        "rawQueryString": "",
        "headers": {
            "accept": "*/*",
            "content-length": str(len(body)),
            "host": "r3pmxmplak.execute-api.us-east-2.amazonaws.com",
            "user-agent": USER_AGENT,
            "x-amzn-trace-id": "Root=1-5e6722a7-cc56xmpl46db7ae02d4da47e",
            "x-forwarded-for": SOURCE_IP,
            "x-forwarded-port": "443",
            "x-forwarded-proto": "https",
            **{name.lower(): value for name, value in headers.items()},
        },
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": "r3pmxmplak",
            "domainName": "r3pmxmplak.execute-api.us-east-2.amazonaws.com",
            "domainPrefix": "r3pmxmplak",
            "http": {
                "method": method,
                "path": raw_path,
                "protocol": "HTTP/1.1",
                "sourceIp": SOURCE_IP,
                "userAgent": USER_AGENT,
            },
            "requestId": request_id,
            "routeKey": f"{method} {path}",
            "stage": stage,
            "time": "10/Mar/2020:05:16:23 +0000",
            "timeEpoch": 1583817383220,
        },
        "body": _body(body, base64_encoded),
        "isBase64Encoded": base64_encoded,
    }


def function_url(
    body: bytes,
    *,
    headers: dict[str, str],
    method: str = "POST",
    path: str = "/callback",
    base64_encoded: bool = False,
    request_id: str = "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
) -> dict[str, Any]:
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "host": "abcdefghijklmnopqrstuvwxyz0123.lambda-url.us-west-2.on.aws",
            "user-agent": USER_AGENT,
            "x-amzn-tls-cipher-suite": "ECDHE-RSA-AES128-GCM-SHA256",
            "x-amzn-tls-version": "TLSv1.2",
            "x-amzn-trace-id": "Root=1-5eb33c07-de25b420912dee103a5db434",
            "x-forwarded-for": SOURCE_IP,
            "x-forwarded-port": "443",
            "x-forwarded-proto": "https",
            **{name.lower(): value for name, value in headers.items()},
        },
        "queryStringParameters": None,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "abcdefghijklmnopqrstuvwxyz0123",
            "domainName": "abcdefghijklmnopqrstuvwxyz0123.lambda-url.us-west-2.on.aws",
            "domainPrefix": "abcdefghijklmnopqrstuvwxyz0123",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": SOURCE_IP,
                "userAgent": USER_AGENT,
            },
            "requestId": request_id,
            "routeKey": "$default",
            "stage": "$default",
            "time": "12/Mar/2020:19:03:58 +0000",
            "timeEpoch": 1583348638390,
        },
        "body": _body(body, base64_encoded),
        "pathParameters": None,
        "isBase64Encoded": base64_encoded,
        "stageVariables": None,
    }


def rest_api_v1(
    body: bytes,
    *,
    headers: dict[str, str],
    method: str = "POST",
    path: str = "/callback",
    stage: str = "prod",
    base64_encoded: bool = False,
    request_id: str = "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
) -> dict[str, Any]:
    sent = {
        "Accept": "*/*",
        "Host": "1234567890.execute-api.us-east-1.amazonaws.com",
        "User-Agent": USER_AGENT,
        "X-Amzn-Trace-Id": "Root=1-5e66d96f-7491f09xmpl79d18acf3d050",
        "X-Forwarded-For": SOURCE_IP,
        "X-Forwarded-Port": "443",
        "X-Forwarded-Proto": "https",
        **headers,  # as the client spelled them
    }
    return {
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": sent,
        "multiValueHeaders": {name: [value] for name, value in sent.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": "1234567890",
            "domainName": "1234567890.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "1234567890",
            "extendedRequestId": "LgtYRHBjoAMFm8A=",
            "httpMethod": method,
            "identity": {
                "accessKey": None,
                "accountId": None,
                "caller": None,
                "cognitoIdentityId": None,
                "sourceIp": SOURCE_IP,
                "user": None,
                "userAgent": USER_AGENT,
                "userArn": None,
            },
            "path": f"/{stage}{path}",
            "protocol": "HTTP/1.1",
            "requestId": request_id,
            "requestTime": "09/Apr/2015:12:34:56 +0000",
            "requestTimeEpoch": 1428582896000,
            "resourceId": "123456",
            "resourcePath": path,
            "stage": stage,
        },
        "body": _body(body, base64_encoded),
        "isBase64Encoded": base64_encoded,
    }


BUILDERS = {"http_api_v2": http_api_v2, "function_url": function_url, "rest_api_v1": rest_api_v1}
