"""Who may join the local Ray instance that --workers starts (ptqdet.ray_pool.connect).

Ray 2.60's GCS server listens on every network interface (no switch binds it to localhost);
what keeps other machines out is its token authentication, on by default for a local
instance. The test shows both: the GCS port is open on every interface, and a client
without the token (or with another) is refused, while one with it is answered.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

DRIVER = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from ptqdet.ray_pool import ParallelOptions, connect, warn_if_unauthenticated
ray = connect(ParallelOptions(workers=1, object_store_mb=80), quiet=True)
print(ray._private.worker.global_worker.node.gcs_address, warn_if_unauthenticated(), flush=True)
sys.stdin.read()  # until the test is done
"""

# a client of the GCS, as a process on another machine would be (the address is the node's)
CLIENT = """
import sys
from ray._raylet import GcsClient
try:
    print("answered", GcsClient(address=sys.argv[1]).internal_kv_keys(b"", namespace=None, timeout=5)[:1])
except Exception as exc:
    print("refused", type(exc).__name__, str(exc)[:200])
"""


def _listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on `port` (from /proc/net/tcp, tcp6)."""
    found = set()
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in open(f"/proc/net/{name}").read().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # per 32-bit word, host order
            found.add(socket.inet_ntop(family, raw))
    return found


def _client(address: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    done = subprocess.run([sys.executable, "-c", CLIENT, address], env={**environ, **env}, capture_output=True,
                          text=True, timeout=120)
    return done.stdout.strip() or done.stderr.strip()[-500:]


@pytest.mark.skipif(os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled", reason="auth turned off by the env")
def test_the_local_ray_instance_refuses_clients_without_its_token():
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], cwd=ROOT, env=environ, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        address, auth = driver.stdout.readline().split()
        host, port = address.rsplit(":", 1)
        assert auth == "True"  # connect() left Ray's token authentication on
        # open on every interface: the GCS port listens on the wildcard address, not on loopback only
        assert _listening_addresses(int(port)) & {"0.0.0.0", "::"}, _listening_addresses(int(port))
        assert _client(address, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 32).startswith(
            "refused AuthenticationError")
        assert _client(address, RAY_AUTH_MODE="disabled").startswith("refused AuthenticationError")
        assert _client(address, RAY_AUTH_MODE="token").startswith("answered")  # the token of ~/.ray/auth_token
    finally:
        driver.stdin.close()
        try:
            driver.wait(timeout=60)
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.wait()
