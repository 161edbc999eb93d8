"""Security of the OPC UA simulator: its own certificate, the client certificates it trusts, its users.

A folder holds it all, laid out like the gateway's store::

    <pki>/own/cert.der, <pki>/own/key.pem   the simulator's certificate (generated once, kept)
    <pki>/trusted/                          client (application or user) certificates it accepts
    <pki>/rejected/                         client certificates it refused, to inspect or move

Uses asyncua's certificate helpers only; imports neither ``gateway`` nor ``drivers``.
"""

from __future__ import annotations

import hashlib
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

log = logging.getLogger(__name__)

SECURE_POLICIES = [
    ua.SecurityPolicyType.Basic256Sha256_Sign,
    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
]


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@dataclass
class SimulatorSecurity:
    """How a secured simulator behaves: ``pki`` folder, users (name -> password), anonymous allowed or not."""

    pki: Path
    users: dict[str, str] = field(default_factory=dict)
    allow_anonymous: bool = True
    application_uri: str = "urn:iiot-gateway:simulator:opcua"

    def __post_init__(self) -> None:
        self.pki = Path(self.pki)

    @property
    def cert_file(self) -> Path:
        return self.pki / "own" / "cert.der"

    @property
    def key_file(self) -> Path:
        return self.pki / "own" / "key.pem"

    @property
    def trusted(self) -> Path:
        return self.pki / "trusted"

    @property
    def rejected(self) -> Path:
        return self.pki / "rejected"

    def ensure_certificate(self) -> None:
        """Generate the simulator's key and certificate unless both exist (blocking: RSA key generation)."""
        for d in (self.cert_file.parent, self.trusted, self.rejected):
            d.mkdir(parents=True, exist_ok=True)
        if self.cert_file.is_file() and self.key_file.is_file():
            return
        key = cert_gen.generate_private_key()
        cert = cert_gen.generate_self_signed_app_certificate(
            key,
            "iiot-gateway OPC UA simulator",
            {},
            [
                x509.UniformResourceIdentifier(self.application_uri),
                x509.DNSName(socket.gethostname()),
                x509.DNSName("localhost"),
            ],
            extended=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            days=5 * 365,
        )
        self.key_file.write_bytes(cert_gen.dump_private_key_as_pem(key))
        self.key_file.chmod(0o600)
        self.cert_file.write_bytes(_der(cert))

    def is_trusted(self, cert: x509.Certificate) -> bool:
        der = _der(cert)
        for path in self.trusted.glob("*"):
            try:
                data = path.read_bytes()
                other = (
                    x509.load_pem_x509_certificate(data)
                    if data.lstrip().startswith(b"-----")
                    else x509.load_der_x509_certificate(data)
                )
            except (OSError, ValueError):
                continue
            if _der(other) == der:
                return True
        return False

    def reject(self, cert: x509.Certificate) -> Path:
        name = hashlib.sha1(_der(cert)).hexdigest().upper()
        path = self.rejected / f"{name}.der"
        path.write_bytes(_der(cert))
        return path

    async def validate_client(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        """Certificate validator of the server: the client's certificate must be in ``trusted/``."""
        if not self.is_trusted(cert):
            path = self.reject(cert)
            log.warning(
                "OPC UA simulator: refused client certificate %s (move it to %s to trust it)", path, self.trusted
            )
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)


class SimulatorUsers:
    """asyncua user manager: anonymous (when allowed), the configured users, trusted user certificates."""

    def __init__(self, security: SimulatorSecurity) -> None:
        self.security = security

    def get_user(self, iserver, username=None, password=None, certificate=None):
        # asyncua passes the channel's client certificate along with every token, so the user name goes first
        if username is not None:
            if isinstance(password, bytes):
                password = password.decode("utf-8", "replace")
            ok = username in self.security.users and self.security.users[username] == password
            return User(role=UserRole.User, name=username) if ok else None
        if certificate is not None and not self.security.allow_anonymous:
            cert = (
                certificate
                if isinstance(certificate, x509.Certificate)
                else x509.load_der_x509_certificate(certificate)
            )
            return User(role=UserRole.User, name="certificate") if self.security.is_trusted(cert) else None
        return User(role=UserRole.User) if self.security.allow_anonymous else None
