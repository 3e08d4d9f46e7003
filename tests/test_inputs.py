"""InputPolicy: which local folders and remote hosts a run may read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from klingflow.errors import MediaError
from klingflow.inputs import InputPolicy


def test_a_local_run_reads_anything_and_a_deployment_run_only_its_folder(tmp_path: Path) -> None:
    """No roots and no default root: unconfined; a default root confines and refuses private addresses."""
    local = InputPolicy.confined([], [], None, default_root=None)
    assert local.roots is None and local.private_addresses and local.path_problem("/etc/passwd") is None
    deployed = InputPolicy.confined([], [], None, default_root=tmp_path)
    assert deployed.roots == (os.path.realpath(tmp_path),) and not deployed.private_addresses
    explicit = InputPolicy.confined([str(tmp_path / "media")], ["cdn.example.com"], True, default_root=tmp_path)
    assert explicit.roots == (os.path.realpath(tmp_path / "media"),)
    assert explicit.hosts == ("cdn.example.com",) and explicit.private_addresses


def test_files_outside_the_roots_are_refused_after_links_are_resolved(tmp_path: Path) -> None:
    """`..` climbs, sibling folders sharing a prefix and links out of the root are all outside it."""
    root = tmp_path / "inbox"
    (root / "media").mkdir(parents=True)
    (root / "media" / "clip.mp4").write_bytes(b"x")
    (tmp_path / "inbox-evil").mkdir()
    (tmp_path / "secret.mp4").write_bytes(b"s")
    (root / "media" / "link.mp4").symlink_to(tmp_path / "secret.mp4")
    policy = InputPolicy.confined([str(root)], [], None, default_root=None)
    assert policy.path_problem(str(root / "media" / "clip.mp4")) is None
    assert policy.path_problem(str(root)) is None
    climbing = str(root / "media" / ".." / ".." / "secret.mp4")
    assert "is outside the allowed input folders" in (policy.path_problem(climbing) or "")
    assert policy.path_problem(str(tmp_path / "inbox-evil" / "a.mp4")) is not None
    linked = policy.path_problem(str(root / "media" / "link.mp4")) or ""
    assert f"(a link to {os.path.realpath(tmp_path / 'secret.mp4')})" in linked


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://cdn.example.com/a.mp4", True),
        ("https://a.media.example.org/b.mp4", True),
        ("https://media.example.org/b.mp4", False),  # *.example.org is its subdomains only
        ("https://evil.com/cdn.example.com/a.mp4", False),
        ("https://CDN.EXAMPLE.COM/a.mp4", True),
    ],
)
def test_the_host_allow_list_matches_names_and_subdomains(url: str, allowed: bool) -> None:
    policy = InputPolicy.confined([], ["cdn.example.com", "*.media.example.org"], None, default_root=None)
    assert (policy.host_problem(url) is None) is allowed


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/a.mp4",
        "http://localhost/a.mp4",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/a.mp4",
        "http://[::1]/a.mp4",
        "http://[::ffff:192.168.0.1]/a.mp4",
        "http://100.64.0.1/a.mp4",
    ],
)
def test_private_addresses_are_refused_unless_allowed(url: str) -> None:
    refused = InputPolicy(private_addresses=False)
    with pytest.raises(MediaError, match="non-public address"):
        refused.check_address(url)
    InputPolicy().check_address(url)  # allowed: no error


def test_a_public_address_passes_and_an_unresolvable_host_is_said() -> None:
    InputPolicy(private_addresses=False).check_address("https://8.8.8.8/a.mp4")
    with pytest.raises(MediaError, match="does not resolve"):
        InputPolicy(private_addresses=False).check_address("https://no-such-host.invalid/a.mp4")
