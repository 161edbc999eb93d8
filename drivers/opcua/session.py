"""Opening an OPC UA session as a source's config says: security policy and mode, user identity, trust.

Used by the driver at every (re)connect and by ``iiot-gateway browse``. For a secured endpoint the
sequence is: make sure the gateway's own certificate exists (generated once, :mod:`drivers.opcua.pki`);
ask the server for its endpoints over an unsecured discovery channel (as every OPC UA client does);
pick the endpoint with the configured policy and mode; check the server certificate it carries against
``pki/trusted`` (refused and saved to ``pki/rejected`` otherwise); then open the secured channel and
the session. Errors come out as :class:`SessionError` with a message an integrator can act on.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from asyncua import Client, ua
from asyncua.crypto import security_policies as sp
from cryptography.hazmat.primitives import serialization

from drivers.opcua import decode
from drivers.opcua.config import OpcUaSource
from drivers.opcua.pki import (
    CertificateError,
    Pki,
    default_application_uri,
    ensure_own,
    load_certificate,
)

# asyncua's supervisor task reads ServerStatus/State every "watchdog interval" with that interval as its
# timeout, and declares the connection lost when it fails. Reads and publishes already prove the session
# alive, so the probe is kept infrequent and never stricter than the source's own timeout.
WATCHDOG_MIN_S = 5.0

POLICIES: dict[str, type[sp.SecurityPolicy]] = {
    "Basic256Sha256": sp.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": sp.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": sp.SecurityPolicyAes256Sha256RsaPss,
    "Basic128Rsa15": sp.SecurityPolicyBasic128Rsa15,
    "Basic256": sp.SecurityPolicyBasic256,
}
_URI_TO_NAME = {cls.URI: name for name, cls in POLICIES.items()} | {sp.SecurityPolicyNone.URI: "None"}

# status codes with which a server refuses the gateway's own certificate
_OWN_CERT_REFUSED = {
    ua.StatusCodes.BadSecurityChecksFailed,
    ua.StatusCodes.BadCertificateUntrusted,
    ua.StatusCodes.BadCertificateInvalid,
    ua.StatusCodes.BadCertificateUriInvalid,
    ua.StatusCodes.BadCertificateUseNotAllowed,
    ua.StatusCodes.BadCertificateTimeInvalid,
}


class SessionError(Exception):
    """The session could not be opened; the message says why and what to do."""


def pki_for(state_dir: str | Path) -> Pki:
    """The certificate store of a gateway whose ``gateway.state_dir`` is ``state_dir``."""
    return Pki(Path(state_dir) / "pki")


def application_uri(source: OpcUaSource) -> str:
    return source.application_uri or default_application_uri()


def new_client(source: OpcUaSource) -> Client:
    client = Client(
        source.endpoint,
        timeout=source.timeout,
        watchdog_intervall=max(WATCHDOG_MIN_S, source.timeout),
    )
    client.name = client.description = "iiot-gateway"
    client.application_uri = application_uri(source)
    client.product_uri = "urn:iiot-gateway"
    client.session_timeout = int(source.session_timeout * 1000)
    if source.username is not None:
        client.set_user(source.username)
        if source.password is not None:
            client.set_password(source.password.get_secret_value())
    return client


def endpoint_list(endpoints: list[ua.EndpointDescription]) -> str:
    """``Basic256Sha256/SignAndEncrypt, None/None`` — what a server offers, for error messages."""
    seen = []
    for ep in endpoints:
        text = f"{_URI_TO_NAME.get(ep.SecurityPolicyUri, ep.SecurityPolicyUri)}/{ep.SecurityMode.name.rstrip('_')}"
        if text not in seen:
            seen.append(text)
    return ", ".join(seen) or "nothing"


async def _secure(client: Client, source: OpcUaSource, pki: Pki) -> None:
    try:
        await ensure_own(pki, client.application_uri)
    except OSError as exc:
        raise SessionError(f"cannot create the gateway's certificate under {pki.root}: {exc}") from exc
    except CertificateError as exc:
        raise SessionError(str(exc)) from exc
    endpoints = await client.connect_and_get_server_endpoints()
    policy = POLICIES[source.security_policy]
    mode = ua.MessageSecurityMode[source.security_mode]
    match = [ep for ep in endpoints if ep.SecurityPolicyUri == policy.URI and ep.SecurityMode == mode]
    if not match:
        raise SessionError(
            f"the server offers no {source.security_policy}/{source.security_mode} endpoint; "
            f"it offers: {endpoint_list(endpoints)}"
        )
    der = match[0].ServerCertificate
    if not der:
        raise SessionError(f"the server's {source.security_policy} endpoint carries no certificate")
    try:
        await asyncio.to_thread(pki.check_server, der, source.endpoint)
    except CertificateError as exc:
        raise SessionError(str(exc)) from exc
    except ValueError as exc:
        raise SessionError(f"the server's certificate cannot be parsed: {exc}") from exc
    server_der = load_certificate(der).public_bytes(serialization.Encoding.DER)  # first of a chain
    await client.set_security(policy, str(pki.own_cert), str(pki.own_key), server_certificate=server_der, mode=mode)


async def open_session(source: OpcUaSource, pki: Pki) -> Client:
    """A connected :class:`Client` for ``source``; raises :class:`SessionError`, ``OSError``,
    ``TimeoutError`` or ``ua.UaError`` (then nothing is left open)."""
    client = new_client(source)
    try:
        if source.secured:
            await _secure(client, source, pki)
        if source.user_certificate is not None and source.user_private_key is not None:
            try:
                await client.load_client_certificate(source.user_certificate)
                await client.load_private_key(Path(source.user_private_key))
            except (OSError, ValueError) as exc:
                raise SessionError(f"cannot load the user certificate or key: {exc}") from exc
        try:
            await client.connect()
        except ua.UaStatusCodeError as exc:
            if source.secured and exc.code in _OWN_CERT_REFUSED:
                raise SessionError(
                    f"the server refused the gateway's certificate ({decode.status_text(exc.code)}); make the "
                    f"server trust {pki.own_cert} (copy it into the server's trusted certificates)"
                ) from exc
            if exc.code in (
                ua.StatusCodes.BadUserAccessDenied,
                ua.StatusCodes.BadIdentityTokenRejected,
                ua.StatusCodes.BadIdentityTokenInvalid,
            ):
                raise SessionError(f"the server refused the user identity ({decode.status_text(exc.code)})") from exc
            raise
    except BaseException:
        with contextlib.suppress(Exception):  # connect() cleans up after itself; only a socket may be left
            client.disconnect_socket()
        raise
    return client


async def close_quietly(client: Client, timeout: float) -> None:
    """Close the session and stop asyncua's background tasks; never raises, also after the server died."""
    try:
        async with asyncio.timeout(timeout):
            await client.disconnect()
    except Exception:  # noqa: BLE001 - close must not raise; whatever failed, the socket goes
        with contextlib.suppress(Exception):
            client.disconnect_socket()
