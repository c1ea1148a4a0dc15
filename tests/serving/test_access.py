"""Modes and the Host check: which Host names pass (DNS rebinding), when a token is made up, read-only refusals."""

from __future__ import annotations

import pytest

from diagnostics.errors import AccessError
from diagnostics.serving.access import ServeSettings, host_allowed, host_name, is_loopback

ALLOWED = ("localhost", "gpu-box", "*.lab.example")

HOSTS = {
    "localhost-with-port": ("localhost:8501", True),
    "machine-name": ("GPU-Box:8501", True),
    "wildcard-subdomain": ("dash.lab.example", True),
    "ipv4-address": ("192.168.1.20:8501", True),
    "ipv6-address": ("[::1]:8501", True),
    "no-host-header": (None, True),
    "rebinding-name": ("evil.example:8501", False),
    "suffix-not-subdomain": ("evillab.example", False),
    "wildcard-base-itself": ("lab.example", False),
    "credentials": ("user@localhost", False),
    "bad-port": ("localhost:99999", False),
    "path": ("localhost/x", False),
}


@pytest.mark.parametrize("name", list(HOSTS), ids=list(HOSTS))
def test_host_check(name):
    host, expected = HOSTS[name]
    assert host_allowed(host, ALLOWED) is expected


def test_host_name_normalises_case_port_and_trailing_dot():
    assert host_name("LocalHost.:8501") == "localhost"


@pytest.mark.parametrize("address,expected", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                              ("0.0.0.0", False), ("", False), ("192.168.1.2", False)],
                         ids=["ipv4-loopback", "localhost", "ipv6-loopback", "every-ipv4", "streamlit-default",
                              "lan-address"])
def test_loopback_addresses(address, expected):
    assert is_loopback(address) is expected


def test_local_serving_needs_nothing(tmp_path):
    s = ServeSettings.from_env({"GFD_STORE": str(tmp_path)}, "127.0.0.1")
    assert s.token is None and not s.read_only and not s.exposed
    assert s.roots.contains(str(tmp_path / "x"))


def test_served_beyond_loopback_without_a_choice_a_token_is_made_up(tmp_path):
    s = ServeSettings.from_env({"GFD_STORE": str(tmp_path)}, "0.0.0.0")
    assert s.token_generated and len(s.token) >= 24 and s.exposed
    assert not s.token_matches(None) and not s.token_matches("wrong") and s.token_matches(s.token)


def test_read_only_is_the_alternative_to_a_token(tmp_path):
    s = ServeSettings.from_env({"GFD_STORE": str(tmp_path), "GFD_READ_ONLY": "1"}, "0.0.0.0")
    assert s.token is None and s.read_only and s.exposed
    with pytest.raises(AccessError, match="Training is turned off: this dashboard was started read-only"):
        s.require_write("Training")


def test_roots_and_hosts_from_the_environment(tmp_path):
    data = tmp_path / "data"
    s = ServeSettings.from_env({"GFD_STORE": str(tmp_path / "runs"), "GFD_ROOTS": str(data),
                                "GFD_ALLOWED_HOSTS": "dash.example, *.corp"}, "0.0.0.0")
    assert s.roots.contains(str(data / "mnist")) and s.roots.contains(str(tmp_path / "runs"))
    assert not s.roots.contains(str(tmp_path / "other"))
    assert host_allowed("dash.example", s.allowed_hosts) and host_allowed("a.corp", s.allowed_hosts)
