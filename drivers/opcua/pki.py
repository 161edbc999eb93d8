"""The gateway's OPC UA certificate store under ``<gateway.state_dir>/pki``.

Layout (the same as most OPC UA stacks use, so integrators recognise it)::

    pki/own/certs/iiot-gateway.der      the gateway's application instance certificate (DER)
    pki/own/private/iiot-gateway.pem    its private key (PEM, mode 0600)
    pki/trusted/                        server certificates (or their CAs) the gateway trusts, .der or .pem
    pki/rejected/                       server certificates that were refused, to inspect and move to trusted/

The own certificate is generated once (RSA 2048, SHA-256, valid :data:`OWN_CERT_DAYS` days) with the
extensions OPC UA requires: the application URI and the host name in subjectAltName, key usage
digitalSignature, nonRepudiation, keyEncipherment, dataEncipherment, extended key usage clientAuth. It
is never regenerated while both files exist: a server that trusts it keeps trusting it.

Blocking file and RSA work runs in a thread (:func:`asyncio.to_thread`) when called from the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import os
import re
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

OWN_CERT_DAYS = 5 * 365
OWN_NAME = "iiot-gateway"
_CERT_SUFFIXES = (".der", ".pem", ".crt", ".cer")


class CertificateError(Exception):
    """The own certificate cannot be used, or a server certificate is not trusted (message says what to do)."""


def default_application_uri() -> str:
    """``urn:<hostname>:iiot-gateway``: unique per machine, as OPC UA wants application URIs to be."""
    return f"urn:{socket.gethostname()}:iiot-gateway"


@dataclass(frozen=True)
class CertInfo:
    """What an integrator needs to recognise a certificate."""

    path: Path
    subject: str
    thumbprint: str  # SHA-1, hex, as OPC UA tools show it
    not_after: dt.datetime
    application_uri: str | None

    def line(self) -> str:
        uri = f"  {self.application_uri}" if self.application_uri else ""
        return f"{self.path.name}  {self.thumbprint}  {self.subject}  valid until {self.not_after:%Y-%m-%d}{uri}"


def load_certificate(data: bytes) -> x509.Certificate:
    """A DER or PEM certificate; of a DER chain (as some servers send), the first certificate."""
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    if len(data) >= 4 and data[0] == 0x30 and data[1] == 0x82:
        data = data[: int.from_bytes(data[2:4], "big") + 4]
    return x509.load_der_x509_certificate(data)


def thumbprint(cert: x509.Certificate) -> str:
    return hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()


def application_uri_of(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def describe(cert: x509.Certificate, path: Path) -> CertInfo:
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = cn[0].value if cn else None
    name = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    subject = f"CN={name}" if cn else cert.subject.rfc4514_string()
    return CertInfo(path, subject, thumbprint(cert), cert.not_valid_after_utc, application_uri_of(cert))


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:60] or "server"


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class Pki:
    """One certificate store directory (normally ``<state_dir>/pki``); all methods are blocking."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.own_cert = self.root / "own" / "certs" / f"{OWN_NAME}.der"
        self.own_key = self.root / "own" / "private" / f"{OWN_NAME}.pem"
        self.trusted = self.root / "trusted"
        self.rejected = self.root / "rejected"

    # -- own certificate ------------------------------------------------------------------------------

    def ensure_own(self, application_uri: str) -> bool:
        """Make sure the own key and certificate exist; True when they were generated just now.

        Raises :class:`CertificateError` when the existing certificate names another application URI
        (a server checks the URI against the session's), or is expired, saying how to replace it.
        """
        if self.own_cert.is_file() and self.own_key.is_file():
            cert = load_certificate(self.own_cert.read_bytes())
            uri = application_uri_of(cert)
            if uri != application_uri:
                raise CertificateError(
                    f"the gateway's certificate {self.own_cert} is for application URI {uri!r}, but the config "
                    f"asks for {application_uri!r}; set application_uri: {uri} (servers trust this certificate), "
                    f"or delete {self.own_cert} and {self.own_key} to generate a new one (servers must then "
                    f"trust the new certificate)"
                )
            if cert.not_valid_after_utc < dt.datetime.now(dt.UTC):
                raise CertificateError(
                    f"the gateway's certificate {self.own_cert} expired on {cert.not_valid_after_utc:%Y-%m-%d}; "
                    f"delete {self.own_cert} and {self.own_key} to generate a new one, then let the servers "
                    f"trust it"
                )
            return False
        key = cert_gen.generate_private_key()
        host = socket.gethostname()
        cert = cert_gen.generate_self_signed_app_certificate(
            key,
            OWN_NAME,
            {"organizationName": "iiot-gateway"},
            [x509.UniformResourceIdentifier(application_uri), x509.DNSName(host)],
            extended=[ExtendedKeyUsageOID.CLIENT_AUTH],
            days=OWN_CERT_DAYS,
        )
        _write_atomic(self.own_key, cert_gen.dump_private_key_as_pem(key), mode=0o600)
        _write_atomic(self.own_cert, cert.public_bytes(serialization.Encoding.DER))
        return True

    def own_info(self) -> CertInfo | None:
        if not self.own_cert.is_file():
            return None
        return describe(load_certificate(self.own_cert.read_bytes()), self.own_cert)

    # -- server certificates --------------------------------------------------------------------------

    def _certs_in(self, folder: Path) -> list[tuple[Path, x509.Certificate]]:
        found = []
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() in _CERT_SUFFIXES and path.is_file():
                    with contextlib.suppress(ValueError, OSError):
                        found.append((path, load_certificate(path.read_bytes())))
        return found

    def is_trusted(self, cert: x509.Certificate) -> bool:
        """The certificate itself, or a CA that signed it, is in ``trusted/`` (and the chain is valid now)."""
        trusted = [c for _, c in self._certs_in(self.trusted)]
        if not trusted:
            return False
        der = cert.public_bytes(serialization.Encoding.DER)
        now = dt.datetime.now(dt.UTC)
        if any(c.public_bytes(serialization.Encoding.DER) == der for c in trusted):
            return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store(trusted))
            .time(now)
            .extension_policies(
                ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                ee_policy=verification.ExtensionPolicy.permit_all(),
            )
            .build_client_verifier()
        )
        try:
            verifier.verify(cert, [])
        except (verification.VerificationError, ValueError):
            return False
        return True

    def check_server(self, der: bytes, endpoint: str) -> None:
        """Accept a server certificate found in ``trusted/``; otherwise save it to ``rejected/`` and raise
        :class:`CertificateError` with the file name and the command that trusts it."""
        cert = load_certificate(der)
        now = dt.datetime.now(dt.UTC)
        info = describe(cert, Path())
        if self.is_trusted(cert):
            return
        if cert.not_valid_after_utc < now or cert.not_valid_before_utc > now:
            raise CertificateError(
                f"the server's certificate ({info.subject}, thumbprint {info.thumbprint}) is valid only from "
                f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}; renew it on the server"
            )
        host = re.sub(r"^opc\.tcp://", "", endpoint).strip("/")
        name = f"{_safe_name(info.subject.removeprefix('CN='))}_{_safe_name(host)}_{info.thumbprint[:8]}.der"
        target = self.rejected / name
        if not target.exists():
            _write_atomic(target, cert.public_bytes(serialization.Encoding.DER))
        raise CertificateError(
            f"the server's certificate is not trusted ({info.subject}, SHA-1 thumbprint {info.thumbprint}"
            f"{', ' + info.application_uri if info.application_uri else ''}). It was saved as {target}. "
            f"If this is the right server, trust it: move that file into {self.trusted}/ "
            f"(or run: iiot-gateway trust accept {info.thumbprint[:8]} --state-dir {self.root.parent})"
        )

    def list(self, folder: str) -> list[CertInfo]:
        """The certificates in ``trusted`` or ``rejected``."""
        return [describe(c, p) for p, c in self._certs_in(self.trusted if folder == "trusted" else self.rejected)]

    def accept(self, which: str) -> Path:
        """Move one rejected certificate (by file name or thumbprint prefix) into ``trusted/``."""
        matches = [
            i for i in self.list("rejected") if i.path.name == which or i.thumbprint.startswith(which.upper())
        ]
        if not matches:
            known = ", ".join(f"{i.path.name} ({i.thumbprint[:8]})" for i in self.list("rejected")) or "none"
            raise CertificateError(f"no rejected certificate matches {which!r}; rejected: {known}")
        if len(matches) > 1:
            raise CertificateError(f"{which!r} matches {len(matches)} certificates; give more of the thumbprint")
        src = matches[0].path
        dst = self.trusted / src.name
        self.trusted.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        return dst


_generate = threading.Lock()


def _ensure_own_locked(pki: Pki, application_uri: str) -> bool:
    with _generate:
        return pki.ensure_own(application_uri)


async def ensure_own(pki: Pki, application_uri: str) -> bool:
    """:meth:`Pki.ensure_own` off the event loop; sources of one gateway never generate twice."""
    return await asyncio.to_thread(_ensure_own_locked, pki, application_uri)
