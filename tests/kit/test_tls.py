"""Mutual TLS when certificate paths are configured: services serve and call each other over it."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from bizmsg.kit.certs import make_dev_certs
from bizmsg.kit.testing import ServiceThread, metadata_for

from .echo_service import DEFINITION, RELAY, RELAY_SERVICE, SERVICE


def tls_env(d: Path, name: str) -> dict[str, str]:
    return {
        "BIZMSG_TLS_CA": str(d / "ca.pem"),
        "BIZMSG_TLS_CERT": str(d / f"{name}.pem"),
        "BIZMSG_TLS_KEY": str(d / f"{name}.key"),
    }


def client_creds(d: Path, with_cert: bool = True) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(d / "ca.pem").read_bytes(),
        private_key=(d / "client.key").read_bytes() if with_cert else None,
        certificate_chain=(d / "client.pem").read_bytes() if with_cert else None,
    )


def test_mutual_tls_between_services(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    make_dev_certs(certs)
    echo = ServiceThread(
        DEFINITION,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/a.db",
        env=tls_env(certs, "consent"),
    )
    with (
        echo,
        ServiceThread(
            RELAY,
            database_url=f"sqlite+aiosqlite:///{tmp_path}/b.db",
            env=tls_env(certs, "delivery"),
            dependency_targets={"consent": echo.target},
        ) as relay,
    ):
        md = metadata_for("user:alice")
        with grpc.secure_channel(relay.target, client_creds(certs)) as ch:
            out = ch.unary_unary(f"/{RELAY_SERVICE}/Relay")(b"Echo:hi", metadata=md, timeout=10)
        assert out == b"service:delivery|hi"  # relay -> echo went over mTLS too

        with grpc.insecure_channel(echo.target) as plain, pytest.raises(grpc.RpcError) as e:
            plain.unary_unary(f"/{SERVICE}/Echo")(b"x", metadata=md, timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE

        no_cert = client_creds(certs, with_cert=False)
        with grpc.secure_channel(echo.target, no_cert) as ch, pytest.raises(grpc.RpcError) as e:
            ch.unary_unary(f"/{SERVICE}/Echo")(b"x", metadata=md, timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
