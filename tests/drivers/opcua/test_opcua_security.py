"""Secured OPC UA against the simulator running secured: trust folder, own certificate, user identity,
browse paths and the ``browse`` / ``trust`` commands."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography import x509
from opcua_testserver import free_port

from drivers.opcua.config import OpcUaSource, OpcUaTag
from drivers.opcua.driver import OpcUaDriver
from drivers.opcua.session import application_uri, pki_for
from gateway.batch import Quality
from gateway.cli import main as cli_main
from gateway.driver import DeviceUnavailable, DriverContext
from simulators.opcua_security import SimulatorSecurity
from simulators.opcua_sim import OpcUaSimulator

pytestmark = pytest.mark.asyncio(loop_scope="module")

TEMP = "ns=2;s=Oven1.Zone1.Temperature"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def secured(tmp_path_factory) -> AsyncIterator[OpcUaSimulator]:
    """One secured simulator (user operator / s3cret) for the module."""
    sec = SimulatorSecurity(tmp_path_factory.mktemp("sim-pki"), users={"operator": "s3cret"})
    sim = OpcUaSimulator(port=free_port(), clock=False, security=sec)
    sim.set("zone1_temp", 180.5)
    await sim.start()
    yield sim
    await sim.stop()


def source(sim: OpcUaSimulator, **extra) -> OpcUaSource:
    fields = {"security_policy": "Basic256Sha256", "security_mode": "SignAndEncrypt",
              "username": "operator", "password": "s3cret", "timeout": "2s", **extra}
    return OpcUaSource(driver="opcua", endpoint=sim.endpoint, **fields)


def driver(sim: OpcUaSimulator, state_dir: Path, tags: list[OpcUaTag] | None = None, **extra) -> OpcUaDriver:
    drv = OpcUaDriver(source(sim, **extra), tags or [OpcUaTag(name="temp", node=TEMP)], DriverContext.detached("test", len(tags or [OpcUaTag(name="temp", node=TEMP)])))
    drv.state_dir = state_dir
    return drv


def trust_each_other(sim: OpcUaSimulator, state_dir: Path) -> None:
    """What an integrator does once: the gateway trusts the server, the server trusts the gateway."""
    pki = pki_for(state_dir)
    pki.ensure_own(application_uri(source(sim)))
    pki.trusted.mkdir(parents=True, exist_ok=True)
    shutil.copy(sim.security.cert_file, pki.trusted / "simulator.der")
    shutil.copy(pki.own_cert, sim.security.trusted / f"gateway-{state_dir.name}.der")


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(list(argv))
    return code, out.getvalue(), err.getvalue()


async def test_untrusted_server_refused_then_trusted_with_the_command(secured, tmp_path) -> None:
    drv = driver(secured, tmp_path)
    with pytest.raises(DeviceUnavailable) as refused:
        await drv.connect()
    msg = str(refused.value)
    pki = pki_for(tmp_path)
    (saved,) = pki.rejected.iterdir()
    assert "certificate is not trusted" in msg and str(saved) in msg and f"{pki.trusted}/" in msg
    assert "iiot-gateway trust accept" in msg

    code, out, _ = await asyncio.to_thread(cli, "trust", "--state-dir", str(tmp_path), "list")
    assert code == 0 and saved.name in out
    thumb = pki.list("rejected")[0].thumbprint[:8]
    code, out, _ = await asyncio.to_thread(cli, "trust", "--state-dir", str(tmp_path), "accept", thumb)
    assert code == 0 and (pki.trusted / saved.name).is_file() and not saved.exists()

    with pytest.raises(DeviceUnavailable, match="refused the gateway's certificate"):
        await drv.connect()  # now the server does not know the gateway yet
    shutil.copy(pki.own_cert, secured.security.trusted / "gateway-cmd.der")
    await drv.connect()
    try:
        assert (await drv.read()).values.tolist() == [180.5]
    finally:
        await drv.close()


@pytest.mark.parametrize(
    ("policy", "mode"),
    [("Basic256Sha256", "SignAndEncrypt"), ("Aes128_Sha256_RsaOaep", "Sign"), ("Aes256_Sha256_RsaPss", "SignAndEncrypt")],
)
async def test_secured_session_with_user_and_password(secured, tmp_path, policy: str, mode: str) -> None:
    trust_each_other(secured, tmp_path)
    drv = driver(secured, tmp_path, security_policy=policy, security_mode=mode)
    await drv.connect()
    try:
        b = await drv.read()
        assert b.values.tolist() == [180.5] and b.quality.tolist() == [Quality.GOOD]
        assert drv._client.security_policy.URI.endswith(policy)
    finally:
        await drv.close()


async def test_wrong_password_refused(secured, tmp_path) -> None:
    trust_each_other(secured, tmp_path)
    with pytest.raises(DeviceUnavailable, match="refused the user identity"):
        await driver(secured, tmp_path, password="wrong").connect()


async def test_own_certificate_generated_once(secured, tmp_path) -> None:
    trust_each_other(secured, tmp_path)
    pki = pki_for(tmp_path)
    cert_bytes, key_bytes = pki.own_cert.read_bytes(), pki.own_key.read_bytes()
    for _ in range(2):  # two starts of the gateway
        drv = driver(secured, tmp_path)
        await drv.connect()
        await drv.close()
    assert pki.own_cert.read_bytes() == cert_bytes and pki.own_key.read_bytes() == key_bytes
    assert pki.own_key.stat().st_mode & 0o777 == 0o600
    cert = x509.load_der_x509_certificate(cert_bytes)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert application_uri(source(secured)) in san.get_values_for_type(x509.UniformResourceIdentifier)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and usage.data_encipherment


async def test_browse_paths_resolve_and_a_bad_one_is_reported(secured, tmp_path) -> None:
    trust_each_other(secured, tmp_path)
    tags = [
        OpcUaTag(name="by_path", path="/Objects/2:Oven1/2:Zone1/2:Temperature"),
        OpcUaTag(name="by_node", node=TEMP),
        OpcUaTag(name="typo", browse_path="/Objects/2:Oven1/2:Zone9/2:Temperature"),
    ]
    drv = driver(secured, tmp_path, tags)
    await drv.connect()
    try:
        b = await drv.read()
    finally:
        await drv.close()
    assert b.values[:2].tolist() == [180.5, 180.5]
    assert b.quality.tolist() == [Quality.GOOD, Quality.GOOD, Quality.BAD]
    assert "/Objects/2:Oven1/2:Zone9/2:Temperature" in b.error_text[b.errors[2]]


async def test_browse_command_lists_variables_as_yaml(secured, tmp_path) -> None:
    trust_each_other(secured, tmp_path)
    code, out, err = await _browse_with_env(secured, tmp_path)
    assert code == 0, err
    line = next(ln for ln in out.splitlines() if '"nsu=urn:acme:oven;s=Oven1.Zone1.Temperature"' in ln)
    assert line.strip().startswith("- {name: Zone1_Temperature, node: ")
    assert "Double" in line and "path: /Objects/2:Oven1/2:Zone1/2:Temperature" in line
    assert "# /Objects/2:Oven1  (Object" in out


async def _browse_with_env(sim: OpcUaSimulator, state_dir: Path) -> tuple[int, str, str]:
    os.environ["SIM_PASSWORD_FOR_TEST"] = "s3cret"
    try:
        return await asyncio.to_thread(
            cli, "browse", sim.endpoint, "--security", "Basic256Sha256/SignAndEncrypt",
            "-u", "operator", "-P", "SIM_PASSWORD_FOR_TEST", "--state-dir", str(state_dir),
        )
    finally:
        del os.environ["SIM_PASSWORD_FOR_TEST"]
