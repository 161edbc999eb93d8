"""TLS context of an MQTT uplink, built from the ``mqtt.tls`` config section."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.config.models import TlsSection


class UplinkConfigError(ValueError):
    """The uplink's configuration cannot work (e.g. a certificate file that cannot be loaded).

    Raised by :meth:`MqttUplink.run` before the first connection attempt; retrying would not help.
    """


def build_ssl_context(tls: TlsSection) -> ssl.SSLContext:
    """A client context that verifies the broker by default.

    The broker's chain is checked against ``ca_file`` (or the system CAs) and its name against the host we
    connect to. ``cert_file``/``key_file`` enable mutual TLS. ``insecure_skip_verify`` turns both checks off,
    only when explicitly set. Reads files: call it from a worker thread, not from the event loop.
    """
    if tls.key_file and not tls.cert_file:
        raise UplinkConfigError("mqtt.tls.key_file is set without mqtt.tls.cert_file")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise UplinkConfigError(f"mqtt.tls.ca_file {tls.ca_file!r}: cannot load CA bundle: {exc}") from exc
    if tls.cert_file:
        try:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise UplinkConfigError(
                f"mqtt.tls.cert_file {tls.cert_file!r} / key_file {tls.key_file!r}: cannot load: {exc}"
            ) from exc
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
