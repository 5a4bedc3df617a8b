"""A user's URL never leads to loopback, private or link-local addresses unless allowed.

The address rules are checked without connecting anywhere; end to end, the refusals use loopback
addresses outside the tests' allowed network (127.0.0.1/32), so no traffic leaves the machine.
"""

from __future__ import annotations

import ipaddress

import pytest

from tests.helpers import assert_failed, get_image, image_from, import_and_wait, registry_origin
from tests.servers import FileServer
from tests.support import dockerfile_context
from workers.netguard import AddressRefused, check_address, check_host

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


def test_the_allowed_network_passes_and_its_neighbours_do_not():
    check_host("127.0.0.1")  # allowed by the tests, as an operator would
    with pytest.raises(AddressRefused):
        check_host("127.0.0.2")
    with pytest.raises(AddressRefused):
        check_host("[::1]")


def test_a_literal_private_address_is_refused_without_a_lookup():
    with pytest.raises(AddressRefused, match="10.20.30.40"):
        check_host("10.20.30.40", 443)


@pytest.fixture(scope="module")
def files():
    server = FileServer()
    yield server
    server.close()


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
