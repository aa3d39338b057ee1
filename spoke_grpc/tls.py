"""TLS on the service's port: server credentials that follow their files, and the client
side of the service's own probes.

``SPOKE_TLS_CERT_FILE`` (the certificate, then any intermediates) and ``SPOKE_TLS_KEY_FILE``
(its unencrypted private key), PEM; with ``SPOKE_TLS_CLIENT_CA_FILE`` every client must
present a certificate one of its certificates signed (mutual TLS). The files are checked at
start with the standard library's TLS (readable, PEM, the key is the certificate's): a bad
one is one ``ConfigError`` naming the setting. grpc asks ``ReloadingCredentials`` before each
new connection's handshake; it compares the files' inode, size and modification time with
what it loaded and reads them again only when one changed, so a renewed certificate (a
rotated Kubernetes Secret, certbot) serves the next connection without a restart, while
open connections keep theirs. A change that does not load (a pair caught half-written, a
key that no longer matches) is logged once and the previous certificate kept; the next
connection tries again.

Probes (``spoke-grpc health``, the ``--workers`` supervisor) dial the port the way it
serves: over TLS when it is on, trusting the server's own certificate file unless told
otherwise, and under mutual TLS presenting the server's own certificate and key as theirs
unless given a client certificate.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from spoke_grpc.config import ConfigError, Settings, TlsFiles

log = logging.getLogger(__name__)

# The name a probe dialling loopback expects the certificate to carry when the settings
# name no public address.
LOOPBACK_NAME = "localhost"

_Stamp = tuple[tuple[int, int, int, int], ...]


@dataclass(frozen=True)
class TlsMaterial:
    """The PEM bytes of one certificate configuration, checked to work together."""

    certificate_chain: bytes
    private_key: bytes
    client_ca: bytes | None

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.private_key, self.certificate_chain)], root_certificates=self.client_ca
        )


def load(files: TlsFiles) -> TlsMaterial:
    """The files' contents; ConfigError, naming the setting and the file, if one cannot be
    read or used."""
    chain = _read(files.cert_file, "SPOKE_TLS_CERT_FILE")
    _check_certificates(chain, files.cert_file, "SPOKE_TLS_CERT_FILE")
    key = _read(files.key_file, "SPOKE_TLS_KEY_FILE")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(files.cert_file, files.key_file, password=_no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"SPOKE_TLS_KEY_FILE {files.key_file} is not the private key of the"
                f" certificate in SPOKE_TLS_CERT_FILE {files.cert_file}"
            ) from None
        raise ConfigError(
            f"SPOKE_TLS_KEY_FILE {files.key_file} holds no usable PEM private key"
            f" ({exc.reason or exc.strerror or exc}; an encrypted key is not supported)"
        ) from None
    except OSError as exc:  # the file changed between the reads
        raise ConfigError(f"TLS files changed while being read: {exc.strerror}") from None
    client_ca = None
    if files.client_ca_file is not None:
        client_ca = _read(files.client_ca_file, "SPOKE_TLS_CLIENT_CA_FILE")
        _check_certificates(client_ca, files.client_ca_file, "SPOKE_TLS_CLIENT_CA_FILE")
    return TlsMaterial(chain, key, client_ca)


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{setting} {path} cannot be read: {exc.strerror or exc}") from None


def _check_certificates(pem: bytes, path: Path, setting: str) -> None:
    problem = None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        problem = "no PEM certificate (-----BEGIN CERTIFICATE-----) in it"
    else:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
                cadata=pem.decode("ascii", errors="replace")
            )
        except ssl.SSLError as exc:
            problem = f"a certificate in it does not parse ({exc.reason or exc})"
    if problem is not None:
        raise ConfigError(f"{setting} {path} holds no usable certificate: {problem}")


def _no_password() -> bytes:
    return b""  # an encrypted key then fails to load instead of prompting on the terminal


def _stamp(files: TlsFiles) -> _Stamp:
    """What identifies the files' current contents without reading them."""
    paths = [files.cert_file, files.key_file]
    if files.client_ca_file is not None:
        paths.append(files.client_ca_file)
    stats = [os.stat(path) for path in paths]
    return tuple((s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns) for s in stats)


class ReloadingCredentials:
    """grpc server credentials from ``files``, read again for the first new connection
    after they change. Loads them at once: ConfigError if they are unusable."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._lock = threading.Lock()  # grpc may fetch from several of its threads
        self._stamp = _stamp_or_none(files)
        # What was last refused (the files' stamp, or why they could not be stat'ed):
        # logged once, not at every connection.
        self._rejected: _Stamp | str | None = None
        material = load(files)
        self.credentials = grpc.dynamic_ssl_server_credentials(
            material.configuration(),
            self._fetch,
            require_client_authentication=files.client_ca_file is not None,
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """The new configuration if the files changed and load; None keeps the current one.
        Called by grpc before every handshake, so it never raises."""
        with self._lock:
            try:
                stamp = _stamp(self.files)
            except OSError as exc:
                why = f"{exc.filename} cannot be read: {exc.strerror}"
                self._reject(why, why)
                return None
            if stamp == self._stamp or stamp == self._rejected:
                return None
            try:
                material = load(self.files)
            except ConfigError as exc:
                self._reject(stamp, str(exc))
                return None
            except Exception:
                log.exception("TLS: reloading the certificate failed; keeping the previous one")
                self._rejected = stamp
                return None
            self._stamp, self._rejected = stamp, None
            log.info("TLS: certificate reloaded from %s", self.files.cert_file)
            return material.configuration()

    def _reject(self, what: _Stamp | str, why: str) -> None:
        if what != self._rejected:
            log.warning("TLS: keeping the previous certificate: %s", why)
        self._rejected = what


def describe(files: TlsFiles | None) -> str:
    """How the port serves, for the log."""
    if files is None:
        return "plaintext"
    return "mutual TLS" if files.client_ca_file is not None else "TLS"


def _stamp_or_none(files: TlsFiles) -> _Stamp | None:
    try:
        return _stamp(files)
    except OSError:
        return None  # load() reports it


@dataclass(frozen=True)
class ProbeCredentials:
    """How a probe proves the server and, under mutual TLS, itself. ``None`` fields take
    the server's own files (``Settings.tls``)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None


def probe_channel(
    address: str, settings: Settings, probe: ProbeCredentials | None = None
) -> grpc.Channel:
    """A blocking channel to the service at ``address`` for its own probes: plaintext
    unless its port serves TLS (``settings.tls``) or ``probe`` names a CA file.

    Over TLS the server's certificate must chain to ``probe.ca_file`` (default: the
    server's certificate file itself) and carry ``probe.server_name`` (default: the host
    of ``SPOKE_PUBLIC_ADDRESS``, else ``localhost``). Under mutual TLS the probe presents
    ``probe.cert_file`` and ``probe.key_file`` (default: the server's own).
    """
    probe = probe or ProbeCredentials()
    files = settings.tls
    if files is None and probe.ca_file is None:
        return grpc.insecure_channel(address)
    own_cert = files.cert_file if files is not None else None
    own_key = files.key_file if files is not None else None
    roots = _pick(probe.ca_file, "--cacert", own_cert, "SPOKE_TLS_CERT_FILE")
    key = chain = None
    if probe.cert_file is not None or (files is not None and files.client_ca_file is not None):
        chain = _pick(probe.cert_file, "--cert", own_cert, "SPOKE_TLS_CERT_FILE")
        key = _pick(probe.key_file, "--key", own_key, "SPOKE_TLS_KEY_FILE")
    credentials = grpc.ssl_channel_credentials(roots, key, chain)
    name = probe.server_name or _expected_name(settings)
    options = [("grpc.ssl_target_name_override", name)]
    return grpc.secure_channel(address, credentials, options=options)


def _pick(given: Path | None, flag: str, own: Path | None, setting: str) -> bytes:
    """The file a probe was given, else the server's own."""
    if given is not None:
        return _read(given, flag)
    if own is None:
        raise ConfigError(f"{flag} is needed: {setting} is not set to default to")
    return _read(own, setting)


def _expected_name(settings: Settings) -> str:
    if settings.public_address is None:
        return LOOPBACK_NAME
    host = settings.public_target[0].rsplit(":", 1)[0]
    return host.strip("[]")
