"""The local CA: files made once and reused, renewed when they no longer fit, and a bundle."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import certifi
from cryptography import x509

from klieg_platform import tls


def _sans(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)} | set(
        ext.get_values_for_type(x509.DNSName)
    )


def test_ensure_makes_ca_server_cert_and_bundle(tmp_path: Path) -> None:
    made = tls.ensure(tmp_path)
    assert made.folder == tmp_path / "tls"
    for path in (made.ca_cert, made.ca_key, made.cert, made.key, made.bundle):
        assert path.is_file()
    assert stat.S_IMODE(made.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(made.ca_key.stat().st_mode) == 0o600
    assert _sans(made.cert) == {"127.0.0.1", "localhost"}
    cert = x509.load_pem_x509_certificate(made.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(made.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    ips = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in ips.get_values_for_type(x509.IPAddress)
    bundle = made.bundle.read_bytes()
    assert bundle.startswith(made.ca_cert.read_bytes())
    assert bundle.endswith(Path(certifi.where()).read_bytes())


def test_ensure_reuses_valid_files(tmp_path: Path) -> None:
    first = tls.ensure(tmp_path)
    before = {p: p.read_bytes() for p in (first.ca_cert, first.cert, first.key, first.bundle)}
    second = tls.ensure(tmp_path)
    assert {p: p.read_bytes() for p in before} == before
    assert second == first


def test_ensure_renews_server_cert_for_new_names_and_keeps_ca(tmp_path: Path) -> None:
    made = tls.ensure(tmp_path)
    ca, cert = made.ca_cert.read_bytes(), made.cert.read_bytes()
    tls.ensure(tmp_path, hosts=("127.0.0.1", "localhost", "klieg.test"))
    assert made.ca_cert.read_bytes() == ca
    assert made.cert.read_bytes() != cert
    assert _sans(made.cert) == {"127.0.0.1", "localhost", "klieg.test"}


def test_ensure_replaces_damaged_files(tmp_path: Path) -> None:
    made = tls.ensure(tmp_path)
    made.cert.write_text("not a certificate")
    made.ca_key.unlink()
    tls.ensure(tmp_path)
    cert = x509.load_pem_x509_certificate(made.cert.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(made.ca_cert.read_bytes()))
    assert made.bundle.read_bytes().startswith(made.ca_cert.read_bytes())
