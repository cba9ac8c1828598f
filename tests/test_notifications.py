"""Signed notifications through the real aiohttp app, observed in the provider."""

from __future__ import annotations

import asyncio

from receiver import signing

from .conftest import OTHER_INSTANCE, FakeIbmCloud, Sender, ServiceFactory

REQUIRED = "cert_domain_validation_required"
COMPLETED = "cert_domain_validation_completed"


async def test_required_publishes_and_completed_removes(
    start_service: ServiceFactory, sender: Sender
) -> None:
    service = await start_service()
    value = signing.challenge_value()
    resp = await service.post(sender.body(sender.claims(REQUIRED, "www.example.com", value)))
    assert resp.status == 200
    assert await resp.json() == {
        "status": "published",
        "fqdn": "_acme-challenge.www.example.com",
        "record": "_acme-challenge.www.example.com",
    }
    assert await service.records("_acme-challenge.www.example.com") == {value}

    resp = await service.post(sender.body(sender.claims(COMPLETED, "www.example.com", value)))
    assert resp.status == 200
    assert (await resp.json())["status"] == "removed"
    assert await service.records("_acme-challenge.www.example.com") == frozenset()


async def test_apex_and_wildcard_values_coexist_and_leave_separately(
    start_service: ServiceFactory, sender: Sender
) -> None:
    service = await start_service()
    apex, wildcard = signing.challenge_value(), signing.challenge_value()
    name = "_acme-challenge.example.com"
    for domain, value in (("example.com", apex), ("*.example.com", wildcard)):
        assert (
            await service.post(sender.body(sender.claims(REQUIRED, domain, value)))
        ).status == 200
    assert await service.records(name) == {apex, wildcard}

    await service.post(sender.body(sender.claims(COMPLETED, "*.example.com", wildcard)))
    assert await service.records(name) == {apex}
    await service.post(sender.body(sender.claims(COMPLETED, "example.com", apex)))
    assert await service.records(name) == frozenset()


async def test_dry_run_and_real_rounds_share_a_name(
    start_service: ServiceFactory, sender: Sender
) -> None:
    """CM sends a dry-run value and then the real one at the same name; removing the
    first must leave the second."""
    service = await start_service()
    dry, real = signing.challenge_value(), signing.challenge_value()
    name = "_acme-challenge.shop.example.com"
    await service.post(sender.body(sender.claims(REQUIRED, "shop.example.com", dry)))
    await service.post(sender.body(sender.claims(REQUIRED, "shop.example.com", real)))
    await service.post(sender.body(sender.claims(COMPLETED, "shop.example.com", dry)))
    assert await service.records(name) == {real}


async def test_repeats_are_no_ops(start_service: ServiceFactory, sender: Sender) -> None:
    service = await start_service()
    value = signing.challenge_value()
    body = sender.body(sender.claims(REQUIRED, "example.com", value))
    for _ in range(3):
        assert (await service.post(body)).status == 200
    assert await service.records("_acme-challenge.example.com") == {value}
    done = sender.body(sender.claims(COMPLETED, "example.com", value))
    for _ in range(2):
        assert (await service.post(done)).status == 200
    assert await service.records("_acme-challenge.example.com") == frozenset()


async def test_other_events_are_acknowledged_and_change_nothing(
    start_service: ServiceFactory, sender: Sender
) -> None:
    service = await start_service()
    for event in (
        "test_notification_channel",
        "cert_issued",
        "cert_about_to_expire_renew_required",
        "something_new",
    ):
        claims = {
            "instance_crn": sender.instance_crn,
            "event_type": event,
            "certificates": [],
            "version": 4,
        }
        resp = await service.post(sender.body(claims))
        assert resp.status == 200, event
        assert await resp.json() == {"status": "acknowledged", "event_type": event}
    legacy = {
        "instance_crn": sender.instance_crn,
        "expiry_date": 1767225600000,
        "version": 1,
        "expiring_certificates": [],
    }
    resp = await service.post(sender.body(legacy))
    assert resp.status == 200 and (await resp.json())["status"] == "acknowledged"
    assert await service.all_records() == {}


async def test_zone_ttl_is_used(start_service: ServiceFactory, sender: Sender) -> None:
    service = await start_service()
    await service.post(sender.body(sender.claims(REQUIRED, "example.net")))
    await service.post(sender.body(sender.claims(REQUIRED, "example.com")))
    assert service.memory().ttl_of("_acme-challenge.example.net") == 120
    assert service.memory().ttl_of("_acme-challenge.example.com") == 60


async def test_idn_domain_is_written_in_punycode(
    start_service: ServiceFactory, sender: Sender, make_settings: object
) -> None:
    service = await start_service(zones=[{"name": "bücher.example", "provider": "memory"}])
    value = signing.challenge_value()
    resp = await service.post(sender.body(sender.claims(REQUIRED, "*.Bücher.example", value)))
    assert resp.status == 200
    assert await service.records("_acme-challenge.xn--bcher-kva.example") == {value}


async def test_user_token_verified_and_accepted(
    start_service: ServiceFactory, sender: Sender, ibm_cloud: FakeIbmCloud
) -> None:
    service = await start_service(user_token={"required": True})
    value = signing.challenge_value()
    claims = sender.claims(REQUIRED, "example.com", value, user_token=sender.user_token())
    resp = await service.post(sender.body(claims))
    assert resp.status == 200, await resp.text()
    assert await service.records("_acme-challenge.example.com") == {value}
    assert ibm_cloud.jwks_fetches == 1


async def test_user_token_from_an_allowed_foreign_account(
    start_service: ServiceFactory, sender: Sender
) -> None:
    other = "fedcba9876543210fedcba9876543210"
    service = await start_service(user_token={"allowed_accounts": [other]})
    token = sender.user_token(account={"bss": other, "valid": True})
    resp = await service.post(sender.body(sender.claims(REQUIRED, user_token=token)))
    assert resp.status == 200, await resp.text()


async def test_user_token_ignored_when_verification_is_off(
    start_service: ServiceFactory, sender: Sender, ibm_cloud: FakeIbmCloud
) -> None:
    service = await start_service(user_token={"verify": False})
    resp = await service.post(sender.body(sender.claims(REQUIRED, user_token="not.a.token")))
    assert resp.status == 200
    assert ibm_cloud.jwks_fetches == 0


async def test_each_instance_is_verified_with_its_own_key(
    start_service: ServiceFactory, sender: Sender, ibm_cloud: FakeIbmCloud
) -> None:
    service = await start_service()
    other = Sender(sender.keys, instance_crn=OTHER_INSTANCE, key_name="other_instance")
    assert (await service.post(other.body())).status == 200
    # The other instance's key must not vouch for the first instance's CRN.
    forged = Sender(sender.keys, key_name="other_instance")
    resp = await service.post(forged.body())
    assert resp.status == 401
    assert sorted(set(ibm_cloud.key_fetches)) == sorted({OTHER_INSTANCE, sender.instance_crn})


async def test_public_key_file_instead_of_fetching(
    start_service: ServiceFactory, sender: Sender, ibm_cloud: FakeIbmCloud, public_key_file: object
) -> None:
    service = await start_service(certificate_manager={"public_key_file": str(public_key_file)})
    assert (await service.post(sender.body())).status == 200
    assert ibm_cloud.key_fetches == []


async def test_ec_keys_when_configured(
    start_service: ServiceFactory, sender: Sender, ibm_cloud: FakeIbmCloud
) -> None:
    ibm_cloud.instance_keys[sender.instance_crn] = "sender_ec"
    service = await start_service(certificate_manager={"algorithms": ["ES256"]})
    body = sender.body(alg="ES256", key=sender.keys["sender_ec"].private_pem)
    assert (await service.post(body)).status == 200


async def test_concurrent_notifications_for_one_name_all_land(
    start_service: ServiceFactory, sender: Sender
) -> None:
    settings_zone = [{"name": "example.com", "provider": "memory", "options": {"latency_ms": 5}}]
    service = await start_service(zones=settings_zone)
    values = [signing.challenge_value() for _ in range(20)]
    bodies = [sender.body(sender.claims(REQUIRED, "example.com", v)) for v in values]
    responses = await asyncio.gather(*(service.post(b) for b in bodies))
    assert [r.status for r in responses] == [200] * 20
    assert await service.records("_acme-challenge.example.com") == set(values)
    done = [sender.body(sender.claims(COMPLETED, "example.com", v)) for v in values]
    responses = await asyncio.gather(*(service.post(b) for b in done))
    assert [r.status for r in responses] == [200] * 20
    assert await service.records("_acme-challenge.example.com") == frozenset()


async def test_request_id_is_echoed_or_generated(
    start_service: ServiceFactory, sender: Sender
) -> None:
    service = await start_service()
    resp = await service.post(sender.body(), headers={"X-Request-Id": "abc-123"})
    assert resp.headers["X-Request-Id"] == "abc-123"
    resp = await service.post(b"{}", headers={"X-Request-Id": "bad id\twith junk"})
    generated = resp.headers["X-Request-Id"]
    assert len(generated) == 32 and generated.isalnum()
    resp = await service.client.get("/nowhere")
    assert resp.status == 404 and len(resp.headers["X-Request-Id"]) == 32


async def test_health_and_readiness(start_service: ServiceFactory, ibm_cloud: FakeIbmCloud) -> None:
    service = await start_service(user_token={"verify": True})
    resp = await service.client.get("/healthz")
    assert resp.status == 200 and (await resp.json()) == {"status": "alive"}
    resp = await service.client.get("/readyz")
    body = await resp.json()
    assert resp.status == 200, body
    assert set(body["checks"].values()) == {"ok"}
    assert len(body["checks"]) == 4  # config, two sender keys, user-token keys

    ibm_cloud.failing = True
    fresh = await start_service(user_token={"verify": True})
    resp = await fresh.client.get("/readyz")
    body = await resp.json()
    assert resp.status == 503 and body["status"] == "not_ready"
    assert "HTTP 503" in body["checks"]["user_token_keys"]


async def test_metrics_count_requests_by_door_and_outcome(
    start_service: ServiceFactory, sender: Sender
) -> None:
    service = await start_service()
    await service.post(sender.body())
    await service.post(sender.body(key=sender.keys["attacker"].private_pem))
    resp = await service.client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    labels = 'door="certificate_manager",event_type="cert_domain_validation_required"'
    assert f'dcr_requests_total{{{labels},outcome="published"}} 1.0' in text
    assert 'event_type="none",outcome="rejected"} 1.0' in text  # rejected before parsing
    assert 'dcr_provider_call_duration_seconds_count{provider="memory",result="ok"} 1.0' in text
    assert "dcr_request_duration_seconds_bucket" in text
    assert 'dcr_errors_total{error="invalid_signature"} 1.0' in text  # answers by code
    assert "example.com" not in text  # names are never labels
