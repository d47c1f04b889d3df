"""A local certificate authority for serving the gateway over HTTPS on one machine.

``ensure(home)`` keeps, under ``home/tls/``:

- ``ca.pem`` / ``ca-key.pem``: a self-signed CA made for this home (10 years);
- ``server.pem`` / ``server-key.pem``: a server certificate signed by it for ``127.0.0.1`` and
  ``localhost`` (subject alternative names: IP and DNS entries);
- ``bundle.pem``: the CA followed by certifi's public roots, for clients whose trust setting
  *replaces* the system list (``SSL_CERT_FILE`` for fal-client, httpx, requests).

Existing files are reused while the server certificate is signed by the stored CA, covers the
requested names and is valid for at least another week; otherwise they are made anew. Files are
written to a temporary name and renamed, so a reader never sees a half-written file; private keys
are created with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import certifi
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
CA_DAYS = 3650
SERVER_DAYS = 397
RENEW_BEFORE = dt.timedelta(days=7)


@dataclass(frozen=True)
class TlsFiles:
    """Paths of one home's TLS material (they exist once ``ensure`` has returned)."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca-key.pem"

    @property
    def cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def key(self) -> Path:
        return self.folder / "server-key.pem"

    @property
    def bundle(self) -> Path:
        return self.folder / "bundle.pem"


def files(home: Path) -> TlsFiles:
    """Where ``ensure(home)`` keeps its files (nothing is created)."""
    return TlsFiles(home / "tls")


def ensure(home: Path, hosts: Iterable[str] = DEFAULT_HOSTS) -> TlsFiles:
    """Make (or reuse) the CA, a server certificate for ``hosts`` and the bundle under ``home``."""
    tls = files(home)
    tls.folder.mkdir(parents=True, exist_ok=True)
    names = tuple(dict.fromkeys(hosts))
    now = dt.datetime.now(dt.UTC)
    ca = _load_ca(tls, now)
    if ca is None:
        ca = _make_ca(now)
        _write(tls.ca_key, _key_pem(ca[1]), private=True)
        _write(tls.ca_cert, ca[0].public_bytes(serialization.Encoding.PEM))
    if not _server_valid(tls, ca[0], names, now):
        cert, key = _make_server(ca, names, now)
        _write(tls.key, _key_pem(key), private=True)
        _write(tls.cert, cert.public_bytes(serialization.Encoding.PEM))
    bundle = tls.ca_cert.read_bytes().rstrip(b"\n") + b"\n" + Path(certifi.where()).read_bytes()
    if not tls.bundle.exists() or tls.bundle.read_bytes() != bundle:
        _write(tls.bundle, bundle)
    return tls


def trust_context(cert: Path, home: Path | None = None) -> ssl.SSLContext:
    """A client context that trusts certifi's roots, ``home``'s local CA and ``cert`` itself.

    ``cert`` (the server's certificate file) is trusted as an anchor of its own, so a
    self-signed certificate or one signed by another private CA passes too. Host names are
    still checked.
    """
    ctx = ssl.create_default_context(cafile=certifi.where())
    if home is not None and files(home).ca_cert.exists():
        ctx.load_verify_locations(cafile=str(files(home).ca_cert))
    ctx.load_verify_locations(cafile=str(cert))
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _load_ca(
    tls: TlsFiles, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    try:
        cert = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(tls.ca_key.read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    if cert.public_key() != key.public_key() or cert.not_valid_after_utc - now < RENEW_BEFORE:
        return None
    return cert, key


def _server_valid(
    tls: TlsFiles, ca: x509.Certificate, names: tuple[str, ...], now: dt.datetime
) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(tls.cert.read_bytes())
        key = serialization.load_pem_private_key(tls.key.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    covered = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    covered |= set(sans.get_values_for_type(x509.DNSName))
    return (
        cert.public_key() == key.public_key()
        and set(names) <= covered
        and cert.not_valid_before_utc <= now
        and cert.not_valid_after_utc - now >= RENEW_BEFORE
    )


def _make_ca(now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Klieg local CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_server(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    names: tuple[str, ...],
    now: dt.datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key
