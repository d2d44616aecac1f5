"""Nobody in where they don't belong (issue 20): a default run listens on loopback only (``ss``),
and the documented secure form (Zenoh over mutual TLS, certificates made here with the openssl
CLI) gives every topic to a client with the right certificate and nothing to one without."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from live_clients import LIVE_FRAMES, ZenohHeard, free_port, live_drive, run_config

REPO = Path(__file__).resolve().parents[1]
SEGFUSE = [sys.executable, "-m", "pipeline.cli"]
FRAMES = LIVE_FRAMES


@pytest.fixture(scope="module")
def drive(tmp_path_factory) -> Path:
    return live_drive(tmp_path_factory.mktemp("secdrive") / "drive")


def listeners_of(pid: int) -> set[str]:
    """Local addresses of the TCP listening sockets of process ``pid`` (``ss -ltnp``)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        if f"pid={pid}," in line:
            found.add(line.split()[3])
    return found


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) not installed")
def test_a_default_run_listens_on_loopback_only(drive, tmp_path):
    # the publisher and the live view with their defaults (the live view on a free port: 8765 may
    # be taken on a shared machine); the publisher waits 3 s for subscribers that never come, so
    # the listeners are up long enough to be seen
    cfg = run_config(tmp_path, drive, {"publisher": {"enabled": True, "wait_subscribers_s": 3.0},
                                       "liveview": {"enabled": True, "port": 0}})
    proc = subprocess.Popen(SEGFUSE + ["run", str(cfg), "--no-progress"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen: set[str] = set()
    try:
        while proc.poll() is None:
            seen |= listeners_of(proc.pid)
            time.sleep(0.1)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert seen, "no listener seen at all: the check would pass vacuously"
    assert all(addr.startswith("127.0.0.1:") for addr in seen), seen
    assert len(seen) >= 2, seen                      # Zenoh's and the live view's
    assert "Zenoh publisher (peer) listening on tcp/127.0.0.1:0" in err
    assert "live view listening on ws://127.0.0.1:" in err


def test_a_live_view_on_another_address_is_an_explicit_choice(tmp_path):
    from pipeline.errors import ConfigError
    from pipeline.sinks.liveview import liveview_config_from_dict

    with pytest.raises(ConfigError, match="allow_remote") as e:
        liveview_config_from_dict({"enabled": True, "host": "0.0.0.0"})
    assert e.value.field == "sinks.liveview.host"
    assert liveview_config_from_dict({"enabled": True, "host": "0.0.0.0", "allow_remote": True}).host == "0.0.0.0"


# --- mutual TLS ----------------------------------------------------------------------------

def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "1", "-subj", f"/CN={name}", cwd=d)


def make_cert(d: Path, name: str, ca: str, cn: str) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
             f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    (d / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                                   "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=d)


def tls_settings(d: Path, ca: str, cert: str) -> dict:
    """A Zenoh client's TLS keys: trust ``ca``, present ``cert`` (mutual TLS)."""
    return {"transport/link/tls/root_ca_certificate": str(d / f"{ca}.pem"),
            "transport/link/tls/enable_mtls": True,
            "transport/link/tls/connect_certificate": str(d / f"{cert}.pem"),
            "transport/link/tls/connect_private_key": str(d / f"{cert}.key")}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_zenoh_over_mutual_tls_gives_every_topic_to_the_right_certificate_only(drive, tmp_path):
    from pipeline.sinks.schema import topics_for

    d = tmp_path / "pki"
    d.mkdir()
    make_ca(d, "ca")
    make_ca(d, "other_ca")
    make_cert(d, "server", "ca", "localhost")
    make_cert(d, "planner", "ca", "planner")
    make_cert(d, "intruder", "other_ca", "planner")           # same name, wrong authority
    port = free_port()
    zenoh_conf = tmp_path / "zenoh_tls.json5"
    zenoh_conf.write_text(json.dumps({
        "listen": {"endpoints": [f"tls/127.0.0.1:{port}"]},
        "transport": {"link": {"tls": {
            "root_ca_certificate": str(d / "ca.pem"), "enable_mtls": True,
            "listen_certificate": str(d / "server.pem"), "listen_private_key": str(d / "server.key")}}}}, indent=1))
    cfg = run_config(tmp_path, drive, {"publisher": {"enabled": True, "config_file": str(zenoh_conf),
                                                     "qos": "reliable", "wait_subscribers_s": 15}})
    proc = subprocess.Popen(SEGFUSE + ["run", str(cfg), "--no-progress"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ep = [f"tls/localhost:{port}"]
    clients = {}
    try:
        time.sleep(1.0)                    # the run's session is up (the clients retry anyway)
        clients["planner"] = ZenohHeard(connect=ep, config=tls_settings(d, "ca", "planner"))
        clients["intruder"] = ZenohHeard(connect=ep, config=tls_settings(d, "ca", "intruder"))
        clients["no_cert"] = ZenohHeard(connect=ep, config={"transport/link/tls/root_ca_certificate":
                                                            str(d / "ca.pem")})
        clients["plain_tcp"] = ZenohHeard(connect=[f"tcp/127.0.0.1:{port}"])
        _, err = proc.communicate(timeout=120)
        time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
        for c in clients.values():
            c.close()
    assert proc.returncode == 0, err[-3000:]
    assert f"listening on tls/127.0.0.1:{port}" in err
    want = {t: s.msgtype for t, s in topics_for("camera_front", has_poses=True, replay=True).items()}
    got = clients["planner"].by_topic()
    assert {t: v[0] for t, v in got.items()} == want
    assert all(len(v[1]) == (1 if t in ("/tf_static", "/segfuse/run_info") else FRAMES) for t, v in got.items())
    for name in ("intruder", "no_cert", "plain_tcp"):
        assert clients[name].samples == [], name
