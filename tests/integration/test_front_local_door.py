"""The Temporal SDK reaches the real Temporal dev server through the front's local door
with the API key and no client certificate (what the coordinator's own client does), and
is refused there without it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, GetSystemInfoRequest
from temporalio.testing import WorkflowEnvironment

from cloudless.errors import PKIError
from cloudless.pki import CertificateAuthority, Identity, verify_issued_by
from cloudless.temporal import TemporalTarget, TemporalTLS, connect
from cloudless.tls import GATEWAY_SERVER_NAME, TLSMaterial
from workers.front.temporal_proxy import TemporalFront

pytestmark = pytest.mark.temporal

CLUSTER = "door"


@pytest.fixture
async def front(temporal_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[TemporalFront]:
    ca = CertificateAuthority.bootstrap(tmp_path, CLUSTER)
    key, cert = ca.issue(
        Identity(CLUSTER, "coordinator", "coordinator"), dns_names=[GATEWAY_SERVER_NAME]
    )
    front = TemporalFront(
        "127.0.0.1:0",
        temporal_env.client.service_client.config.target_host,
        TLSMaterial(key, cert, ca.cert_pem),
        CLUSTER,
    )
    await front.start()
    yield front
    await front.stop(grace=0)


def _target(front: TemporalFront, api_key: str | None) -> TemporalTarget:
    ca_pem = front.local_material.ca_pem
    return TemporalTarget(
        f"127.0.0.1:{front.local_port}",
        tls=TemporalTLS(ca_pem, None, None, GATEWAY_SERVER_NAME),
        api_key=api_key,
    )


async def test_the_sdk_with_the_key_works(front: TemporalFront) -> None:
    assert front.local is not None
    client = await connect(_target(front, front.local.key))
    described = await client.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace="default")
    )
    assert described.namespace_info.name == "default"
    assert front.proxy.forwarded >= 2  # GetSystemInfo at connect, then DescribeNamespace


@pytest.mark.parametrize("api_key", [None, "not-the-key"], ids=["no key", "wrong key"])
async def test_the_sdk_without_the_key_is_refused(
    front: TemporalFront, api_key: str | None
) -> None:
    with pytest.raises(RuntimeError) as refused:
        await connect(_target(front, api_key))
    assert "Unauthenticated" in str(refused.value) or "UNAUTHENTICATED" in str(refused.value)
    assert "local coordinator only" in str(refused.value)
    assert front.proxy.forwarded == 0


async def test_the_door_does_not_depend_on_the_cluster_ca(front: TemporalFront) -> None:
    """Its certificate chains to a CA of this process only: the cluster CA's certificate
    does not verify it, so rotating the cluster CA can never cut the coordinator off."""
    assert front.local is not None
    assert front.local_material.ca_pem != front.credentials.material.ca_pem
    with pytest.raises(PKIError):
        verify_issued_by(front.local_material.cert_pem, front.credentials.material.ca_pem)
    front.update(front.credentials.material)  # a renewal of the coordinator's certificate
    client = await connect(_target(front, front.local.key))
    await client.workflow_service.get_system_info(GetSystemInfoRequest())
