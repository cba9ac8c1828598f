"""Route 53: 100 challenges for 100 names in one zone, coalesced vs one call each.

Both runs go through the real dispatcher and Route 53 adapter against a moto_server
process, under the same rate budget (Route 53 documents 5 requests/s per account). The
naive run turns coalescing off (`batch_window_seconds = 0`), so every notification is its
own change batch. Prints API calls and wall time for each and, last, the ratio of write
calls (goal: at least 20x fewer).

    python bench/route53_batching.py [--names 100] [--rate 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import urllib.request
from collections import Counter
from typing import Any

from harness import moto_server

from providers.base import RateBudget
from providers.route53 import Route53Provider, Route53Settings
from receiver import logs, signing
from receiver.challenge import Action, Challenge
from receiver.config import DispatchSettings, LogSettings, ZoneSettings
from receiver.dispatch import Dispatcher

ZONE = "example.com"
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
)


def fresh_zone(url: str) -> None:
    import boto3

    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"))
    boto3.client("route53", endpoint_url=url).create_hosted_zone(
        Name=ZONE, CallerReference=str(time.time_ns())
    )


async def run(url: str, names: int, rate: float, window: float) -> tuple[Counter[str], float]:
    provider = await Route53Provider.open(Route53Settings(endpoint=url), RateBudget(rate))
    calls: Counter[str] = Counter()

    def count(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    provider._route53().meta.events.register("before-call.route53", count)
    zone = ZoneSettings(name=ZONE, provider="route53", ttl=60, options=provider.settings)
    dispatcher = Dispatcher(
        {zone.provider_key: provider},
        DispatchSettings(deadline_seconds=600, batch_window_seconds=window),
    )
    challenges = [
        Challenge(
            Action.ADD, f"h{i}.{ZONE}", f"_acme-challenge.h{i}.{ZONE}", signing.challenge_value()
        )
        for i in range(names)
    ]
    started = time.perf_counter()
    await asyncio.gather(
        *(dispatcher.apply(c, zone, request_id=str(i)) for i, c in enumerate(challenges))
    )
    elapsed = time.perf_counter() - started
    await provider.aclose()
    return calls, elapsed


def main() -> None:
    logs.configure(LogSettings(level="warning"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", type=int, default=100)
    parser.add_argument("--rate", type=float, default=5.0, help="requests/s budget")
    args = parser.parse_args()
    with moto_server() as url:
        fresh_zone(url)
        batched, batched_s = asyncio.run(run(url, args.names, args.rate, 0.2))
        fresh_zone(url)
        naive, naive_s = asyncio.run(run(url, args.names, args.rate, 0.0))
    write = "ChangeResourceRecordSets"
    print(f"{args.names} challenges, one zone, rate budget {args.rate:g} requests/s, moto_server")
    for label, calls, seconds in (("coalesced", batched, batched_s), ("naive", naive, naive_s)):
        print(
            f"  {label:<10} {calls[write]:>4} write calls, {sum(calls.values()):>4} API calls"
            f" in all, {seconds:6.2f} s"
        )
    print(f"wall time ratio naive/coalesced: {naive_s / batched_s:.1f}")
    print(f"write call ratio naive/coalesced: {naive[write] / max(1, batched[write]):.1f}")


if __name__ == "__main__":
    main()
