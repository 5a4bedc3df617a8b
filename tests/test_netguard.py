"""A user's URL never leads to loopback, private or link-local addresses unless allowed.

The address rules are checked without connecting anywhere; end to end, the refusals use loopback
addresses outside the tests' allowed network (127.0.0.1/32), so no traffic leaves the machine.
The connection goes to the address checked: a name that resolves again to another address
(DNS rebinding) does not take it elsewhere. Those tests name only `localhost`, which every
resolver here answers from the machine itself.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.api_calls import assert_failed, get_image, image_from, import_and_wait, registry_origin
from tests.image_builds import dockerfile_context
from tests.servers import FileServer, GitServer, Revision
from workers import netguard
from workers.context import RepoSpec, _pinned, clone, download
from workers.netguard import AddressRefused, PinnedAdapter, check_address, check_host

REFUSED = ["10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "127.0.0.2", "0.0.0.0",
           "100.64.0.1", "::1", "fe80::1", "fd00::1", "::ffff:10.0.0.1", "::ffff:127.0.0.2"]
PUBLIC = ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888"]


@pytest.mark.parametrize("address", REFUSED)
def test_internal_addresses_are_refused(address):
    with pytest.raises(AddressRefused, match="IMAGEJOBS_ALLOWED_NETWORKS"):
        check_address(ipaddress.ip_address(address), address)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address):
    check_address(ipaddress.ip_address(address), address)


# IPv6 addresses that carry an IPv4 one, to a relay, a translator or a dual-stack socket, and the
# ranges newer Pythons call private that this one (3.11) does not.
CARRIERS_REFUSED = {
    "2002:7f00:2::": "6to4 of 127.0.0.2",
    "2002:a00:1::1": "6to4 of 10.0.0.1",
    "2002:808:808::": "6to4 of a public address: the relays are gone, the range is refused whole",
    "2001:0:7f00:1::": "Teredo, its server part 127.0.0.1",
    "2001:0:808:808:0:0:f5ff:fffe": "Teredo, its (inverted) client part 10.0.0.1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2": "Teredo between public addresses: refused whole",
    "64:ff9b::7f00:2": "NAT64 of 127.0.0.2",
    "64:ff9b::a9fe:a9fe": "NAT64 of the metadata address",
    "64:ff9b::a00:1": "NAT64 of 10.0.0.1",
    "64:ff9b:1::808:808": "local-use NAT64: translated as its operator chose",
    "::127.0.0.1": "IPv4-compatible 127.0.0.1",
    "::8.8.8.8": "IPv4-compatible, deprecated: refused whole",
    "::ffff:169.254.169.254": "IPv4-mapped metadata address",
    "::ffff:0:7f00:1": "IPv4-translated 127.0.0.1",
    "fec0::1": "site-local, deprecated",
    "192.0.0.8": "IETF protocol assignments (192.0.0.0/24)",
    "3fff::1": "documentation (3fff::/20)",
}
CARRIERS_PASSING = {
    "64:ff9b::808:808": "NAT64 of 8.8.8.8: what DNS64 answers for every IPv4-only host",
    "::ffff:8.8.8.8": "IPv4-mapped 8.8.8.8",
}


@pytest.mark.parametrize("address", list(CARRIERS_REFUSED), ids=list(CARRIERS_REFUSED.values()))
def test_addresses_carrying_an_internal_ipv4_address_are_refused(address):
    with pytest.raises(AddressRefused, match="IMAGEJOBS_ALLOWED_NETWORKS"):
        check_address(ipaddress.ip_address(address), address)


@pytest.mark.parametrize("address", list(CARRIERS_PASSING), ids=list(CARRIERS_PASSING.values()))
def test_addresses_carrying_a_public_ipv4_address_pass(address):
    check_address(ipaddress.ip_address(address), address)


def test_a_6to4_host_of_a_loopback_address_is_not_fetched(tmp_path):
    with open(tmp_path / "context.tar.gz", "w+b") as into, pytest.raises(AddressRefused) as refused:
        download("http://[2002:7f00:2::]:9/ctx.tar.gz", into)

    assert "2002:7f00:2::" in refused.value.message
    assert "IMAGEJOBS_ALLOWED_NETWORKS" in refused.value.message
    assert not refused.value.transient


def test_the_allowed_network_passes_and_its_neighbours_do_not():
    check_host("127.0.0.1")  # allowed by the tests, as an operator would
    with pytest.raises(AddressRefused):
        check_host("127.0.0.2")
    with pytest.raises(AddressRefused):
        check_host("[::1]")


def test_a_literal_private_address_is_refused_without_a_lookup():
    with pytest.raises(AddressRefused, match="10.20.30.40"):
        check_host("10.20.30.40", 443)


def small_context() -> bytes:
    return dockerfile_context("FROM imagejobs/busybox:latest\n")


def refused(api, origin: dict, *words: str) -> None:
    image = image_from(api, origin)
    job = import_and_wait(api, image["id"])
    assert_failed(job, get_image(api, image["id"]), "does not reach", "not retried", *words)


def test_a_context_url_on_a_refused_address_is_not_fetched(api, worker, files):
    url = files.add("/ctx.tar.gz", small_context()).replace("127.0.0.1", "127.0.0.2")
    refused(api, {"type": "docker-file", "details": {"targz_url": url}}, "127.0.0.2")
    assert files.requests.get("/ctx.tar.gz") is None


def test_a_redirect_to_a_refused_address_is_not_followed(api, worker, files):
    target = files.add("/target.tar.gz", small_context()).replace("127.0.0.1", "127.0.0.2")
    start = files.redirect("/jump", target)
    refused(api, {"type": "docker-file", "details": {"targz_url": start}}, "127.0.0.2")
    assert files.requests.get("/target.tar.gz") is None


def test_a_repository_on_a_refused_address_is_not_cloned(api, worker):
    refused(api, {"type": "docker-file", "details": {"repo": {"url": "http://127.0.0.2:9/x.git"}}},
            "127.0.0.2")


def test_a_registry_on_a_refused_address_is_not_pulled_from(api, worker):
    refused(api, registry_origin("tests/anything:v1", url="127.0.0.2:5000"), "127.0.0.2")


@pytest.fixture
def rebinding(monkeypatch):
    """`rebinding(first, then)`: `localhost` resolves to `first` once, then to `then`.

    No resolver on this machine can be made to change its answer between the check and the
    connection, so the lookup is patched in-process; every other name resolves as usual.
    Returns the list of lookups of `localhost` made.
    """
    resolve = socket.getaddrinfo

    def rebind(first: str, then: str) -> list[str]:
        lookups: list[str] = []

        def getaddrinfo(host, port, *args, **kwargs):
            if host != "localhost":
                return resolve(host, port, *args, **kwargs)
            lookups.append(host)
            return resolve(first if len(lookups) == 1 else then, port, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        return lookups

    return rebind


@pytest.mark.parametrize("through_redirect", [False, True], ids=["direct", "redirect-hop"])
def test_a_download_goes_to_the_address_checked_not_to_a_later_answer(files, rebinding, tmp_path,
                                                                      through_redirect):
    port = files.httpd.server_port
    path = f"/rebound-{through_redirect}.tar.gz"
    rebound = FileServer("127.0.0.2", port)  # where `localhost` leads once checked: refused
    try:
        data = small_context()
        files.add(path, data)
        rebound.add(path, b"not the checked server")
        url = f"http://localhost:{port}{path}"
        if through_redirect:  # the hop is checked and pinned on its own
            url = files.redirect(f"/to-rebound-{through_redirect}", url)
        lookups = rebinding("127.0.0.1", "127.0.0.2")
        with open(tmp_path / "context.tar.gz", "w+b") as into:
            download(url, into)
            assert into.read() == data
        assert rebound.requests.get(path) is None
        assert lookups == ["localhost"]  # the check's; the connection asked no resolver
        assert files.hosts[path] == f"localhost:{port}"  # the name, not the address
    finally:
        rebound.close()


def _certificate(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey,
                 signer: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                signer.public_key()), False))


def server_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A CA (its certificate file returned first) and a server certificate for `name` only."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imagejobs test CA")])
    ca = (_certificate(ca_name, ca_name, ca_key, ca_key)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (_certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), ca_name,
                         key, ca_key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .sign(ca_key, hashes.SHA256()))
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "server.pem").write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    return directory / "ca.pem", directory / "server.pem"


def test_a_pinned_https_connection_keeps_the_host_name_for_sni_and_the_certificate(tmp_path):
    ca, chain = server_certificate(tmp_path, "localhost")  # names no address
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(chain)
    server_names: list[str | None] = []
    tls.sni_callback = lambda _socket, name, _context: server_names.append(name)
    server = FileServer(tls=tls)
    try:
        port = server.httpd.server_port
        server.add("/ctx.tar.gz", b"context")
        with requests.Session() as session:
            session.trust_env = False
            session.mount("https://", PinnedAdapter(ipaddress.ip_address("127.0.0.1")))
            response = session.get(f"https://localhost:{port}/ctx.tar.gz", verify=str(ca))
            assert response.content == b"context"
            assert server_names == ["localhost"]
            assert server.hosts["/ctx.tar.gz"] == f"localhost:{port}"
            # The same server by its address: the certificate does not name it, and is refused.
            with pytest.raises(requests.exceptions.SSLError):
                session.get(f"https://127.0.0.1:{port}/ctx.tar.gz", verify=str(ca))
    finally:
        server.close()


def test_a_clone_goes_to_the_address_checked_not_where_git_would_resolve(tmp_path, monkeypatch,
                                                                         rebinding):
    # Here the operator allows 127.0.0.3 only: the check's answer for `localhost` is allowed, and
    # 127.0.0.1, where git's own resolver sends `localhost`, stands for the refused rebound one.
    monkeypatch.setattr(netguard, "allowed_networks",
                        lambda: (ipaddress.ip_network("127.0.0.3/32"),))
    checked = GitServer(tmp_path / "checked", host="127.0.0.3")
    port = checked.httpd.server_port
    rebound = GitServer(tmp_path / "rebound", host="127.0.0.1", port=port)
    try:
        for server in (checked, rebound):
            server.create_repo("app.git", [Revision({"Dockerfile": f"FROM {server.host}\n"})])
        with pytest.raises(AddressRefused):
            check_host("127.0.0.1")
        rebinding("127.0.0.3", "127.0.0.1")
        (tmp_path / "scratch").mkdir()
        checkout = clone(RepoSpec(url=f"http://localhost:{port}/app.git"), tmp_path / "scratch")
        assert (checkout / "Dockerfile").read_text() == "FROM 127.0.0.3\n"
    finally:
        checked.close()
        rebound.close()


@pytest.mark.parametrize(("url", "pinned_url", "ssh_options"), [
    ("git@example.com:org/app.git", "git@example.com:org/app.git",
     ["-o", "HostName=203.0.113.7", "-o", "HostKeyAlias=example.com"]),
    ("ssh://git@example.com:2222/org/app.git", "ssh://git@example.com:2222/org/app.git",
     ["-o", "HostName=203.0.113.7", "-o", "HostKeyAlias=example.com"]),
    ("git://example.com/org/app.git", "git://203.0.113.7/org/app.git", []),
])
def test_ssh_and_git_protocol_clones_are_pinned_to_the_checked_address(url, pinned_url,
                                                                      ssh_options):
    # Worked out without connecting: this suite runs no ssh or git daemon.
    assert _pinned(url, "example.com", None, [ipaddress.ip_address("203.0.113.7")]) == (
        pinned_url, [], ssh_options)


def test_a_docker_hub_target_naming_another_registry_is_checked_as_that_registry(api, worker):
    """Only Docker Hub itself is the operator's: a host in the target is where the engine pulls."""
    image = image_from(api, {"type": "docker-hub",
                             "details": {"target": "127.0.0.2:5000/library/busybox:latest"}})
    job = import_and_wait(api, image["id"])
    assert_failed(job, get_image(api, image["id"]), "127.0.0.2", "IMAGEJOBS_ALLOWED_NETWORKS")
