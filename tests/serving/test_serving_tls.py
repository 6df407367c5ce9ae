"""TLS and mutual TLS on both ports, with a CA, server and client certificates made here by openssl."""

from __future__ import annotations

import ssl
import subprocess
import time
import urllib.error
from pathlib import Path

import grpc
import pytest

from digits.inference import grpc_predict_v2_pb2 as pb
from digits.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.support.serving import http_call, publish_copy
from tests.support.tools import require_tools


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}-ca.pem", directory / f"{name}-ca.key"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name} CA",
            "-keyout", str(key), "-out", str(cert))  # fmt: skip
    return cert, key


def issue(directory: Path, name: str, ca: tuple[Path, Path], extension: str) -> tuple[Path, Path]:
    """A certificate for ``name`` signed by ``ca`` (``extension``: an openssl v3 extension line)."""
    cert, key, request = directory / f"{name}.pem", directory / f"{name}.key", directory / f"{name}.csr"
    extfile = directory / f"{name}.ext"
    extfile.write_text(extension + "\n")
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key),
            "-out", str(request))  # fmt: skip
    openssl("x509", "-req", "-in", str(request), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
            "-days", "1", "-extfile", str(extfile), "-out", str(cert))  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path] | Path]:
    require_tools("openssl")
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory, "digits")
    rogue = make_ca(directory, "rogue")
    return {
        "ca": ca[0],
        "server": issue(directory, "server", ca, "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        "client": issue(directory, "client", ca, "extendedKeyUsage=clientAuth"),
        "rogue_client": issue(directory, "rogue-client", rogue, "extendedKeyUsage=clientAuth"),
    }


def http_context(pki: dict, client: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if client is not None:
        context.load_cert_chain(str(pki[client][0]), str(pki[client][1]))
    return context


def grpc_ready(port: int, pki: dict, client: str | None) -> bool:
    """ServerReady over a TLS channel (with the named client certificate); False if the call is refused."""
    key_pair = {}
    if client is not None:
        key_pair = {
            "private_key": pki[client][1].read_bytes(),
            "certificate_chain": pki[client][0].read_bytes(),
        }
    credentials = grpc.ssl_channel_credentials(pki["ca"].read_bytes(), **key_pair)
    with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
        try:
            return (
                pb_grpc.GRPCInferenceServiceStub(channel)
                .ServerReady(pb.ServerReadyRequest(), timeout=10)
                .ready
            )
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            return False


def https_infer(url: str, context: ssl.SSLContext) -> int:
    body = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 784], "data": [0] * 784}]}
    return http_call(url, body, context=context)[0]


def wait_ready(port: int, pki: dict, client: str | None) -> None:
    deadline = time.monotonic() + 60
    while not grpc_ready(port, pki, client):
        assert time.monotonic() < deadline, "not ready over TLS"
        time.sleep(0.1)


def test_tls_on_both_ports(start_server, exported, tmp_path, pki):
    root = tmp_path / "models"
    publish_copy(exported["random"], root)
    cert, key = pki["server"]
    server = start_server(model_root=root, tls_cert=cert, tls_key=key)
    wait_ready(server.port, pki, None)
    assert server.base_url.startswith("https://")
    url = f"https://localhost:{server.http_port}/v2/models/mnist/infer"
    assert https_infer(url, http_context(pki, None)) == 200
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP to a TLS port: no answer
        http_call(f"http://127.0.0.1:{server.http_port}/v2/health/live")


def test_mutual_tls_refuses_clients_without_a_certificate_from_the_ca(start_server, exported, tmp_path, pki):
    root = tmp_path / "models"
    publish_copy(exported["random"], root)
    cert, key = pki["server"]
    server = start_server(model_root=root, tls_cert=cert, tls_key=key, tls_client_ca=pki["ca"])
    wait_ready(server.port, pki, "client")
    url = f"https://localhost:{server.http_port}/v2/models/mnist/infer"
    assert https_infer(url, http_context(pki, "client")) == 200
    for client in (None, "rogue_client"):
        assert not grpc_ready(server.port, pki, client), client
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            https_infer(url, http_context(pki, client))


def test_client_ca_needs_a_server_certificate(tmp_path, pki):
    from pydantic import ValidationError

    from serving.settings import Settings

    with pytest.raises(ValidationError, match="tls_client_ca"):
        Settings(model_root=tmp_path, tls_client_ca=pki["ca"])
