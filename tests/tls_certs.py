"""Certificates made by the tests: a private CA, a server certificate for the loopback
interface, and a client certificate, all PEM files in one folder.

The secure-transport tests run a Kafka broker and a redis-server with TLS on them;
nothing here is trusted anywhere else. Keys are RSA 2048 (fast to make, and every
client and both servers take it), unencrypted, in PKCS#8, which is what Kafka's PEM
keystores read.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Certificates", "make_certificates"]


@dataclass(frozen=True)
class Certificates:
    """The PEM files of one test CA and the certificates it signed."""

    ca: Path  # the CA's certificate: what a client trusts
    server_cert: Path  # for 127.0.0.1 and localhost
    server_key: Path
    server_keystore: Path  # the server's key then its certificate: a Kafka PEM keystore
    client_cert: Path
    client_key: Path


def make_certificates(folder: Path, *, name: str = "chatlog test CA") -> Certificates:
    """A new CA named `name`, and a server and a client certificate signed by it."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca = (
        _builder(ca_name, ca_name, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key, client_key = _key(), _key()
    server = (
        _builder(_cn("127.0.0.1"), ca_name, server_key)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    client = (
        _builder(_cn("chatlog"), ca_name, client_key)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = Certificates(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        server_keystore=folder / "server-keystore.pem",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
    )
    paths.ca.write_bytes(_pem(ca))
    paths.server_cert.write_bytes(_pem(server))
    paths.server_key.write_bytes(_key_pem(server_key))
    paths.server_keystore.write_bytes(_key_pem(server_key) + _pem(server))
    paths.client_cert.write_bytes(_pem(client))
    paths.client_key.write_bytes(_key_pem(client_key))
    for key in (paths.server_key, paths.server_keystore, paths.client_key):
        key.chmod(0o600)
    return paths


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _cn(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name, issuer: x509.Name, key: rsa.RSAPrivateKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
