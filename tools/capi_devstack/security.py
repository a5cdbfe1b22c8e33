"""The dev stack's secured listener, as production brokers run it: SASL_SSL with SCRAM-SHA-512.

`StackOptions(sasl_ssl=True)` adds a SASL_SSL listener on a port of its own beside the PLAINTEXT one
(which stays for the controller, inter-broker traffic and the test fixtures). At every start a
throwaway CA and a broker certificate for 127.0.0.1/localhost are generated (`cryptography`); the
SCRAM users (an admin and `capi-consumer`) are created when the storage is formatted, with generated
passwords kept in files next to the broker's data (`--state-dir` keeps them, as it keeps the users).
Nothing here is fit for anything but loopback tests: the keys are unencrypted files.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

MECHANISM = "SCRAM-SHA-512"
LISTENER = "SASL_SSL"
CLIENT_USER = "capi-consumer"
ADMIN_USER = "admin"
CERT_VALID_DAYS = 30
_SCRAM_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"


@dataclass(frozen=True)
class SaslSslEndpoint:
    """What a client needs to reach the SASL_SSL listener; passwords stay in their files."""

    bootstrap_servers: str
    ca_location: Path
    """The throwaway CA's certificate (PEM): what `ssl.ca.location` must name."""
    username: str
    password_file: Path
    admin_username: str
    admin_password_file: Path
    mechanism: str = MECHANISM

    def as_dict(self) -> dict[str, str]:
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": LISTENER,
            "sasl_mechanism": self.mechanism,
            "ca_location": str(self.ca_location),
            "username": self.username,
            "password_file": str(self.password_file),
        }

    def client_properties(self, *, admin: bool = False) -> dict[str, Any]:
        """librdkafka settings for this listener, the password included (never log them)."""
        user, password_file = (
            (self.admin_username, self.admin_password_file) if admin else (self.username, self.password_file)
        )
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": LISTENER,
            "sasl.mechanism": self.mechanism,
            "sasl.username": user,
            "sasl.password": password_file.read_text().strip(),
            "ssl.ca.location": str(self.ca_location),
        }


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    # Unencrypted PKCS#8: the form Kafka's PEM key store reads without a key password.
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _builder(subject: str, issuer: str, public_key: rsa.RSAPublicKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=CERT_VALID_DAYS))
    )


def new_ca(common_name: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A self-signed CA (key, certificate)."""
    key = _key()
    cert = (
        _builder(common_name, common_name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .sign(key, hashes.SHA256())
    )
    return key, cert


def write_ca(path: Path, common_name: str = "capi-devstack throwaway CA") -> Path:
    """Write a fresh CA certificate (PEM) to `path`: one the broker's certificate does not chain to,
    for testing a client that must refuse the broker."""
    _key_unused, cert = new_ca(common_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_pem_cert(cert))
    return path


def new_server_certificate(
    ca_key: rsa.RSAPrivateKey, ca_cert: x509.Certificate, host: str = "127.0.0.1"
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A certificate for the broker at `host` (and localhost), signed by the CA."""
    key = _key()
    issuer = ca_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    cert = (
        _builder("capi-devstack broker", str(issuer), key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _password(path: Path) -> str:
    """The password kept in `path`, or a new one written there: SCRAM users live in the formatted
    storage, so a kept state directory must keep their passwords too."""
    if path.exists():
        return path.read_text().strip()
    # token_hex: no character that --add-scram's `[name=…,password=…]` syntax would split on.
    password = secrets.token_hex(24)
    path.touch(mode=0o600)
    path.write_text(password + "\n")
    return password


@dataclass
class SaslSslListener:
    """The listener's files in `directory` and the broker settings and format arguments for it."""

    directory: Path
    port: int
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        self.endpoint = SaslSslEndpoint(
            bootstrap_servers=f"{self.host}:{self.port}",
            ca_location=self.directory / "ca.pem",
            username=CLIENT_USER,
            password_file=self.directory / f"{CLIENT_USER}.password",
            admin_username=ADMIN_USER,
            admin_password_file=self.directory / f"{ADMIN_USER}.password",
        )
        self._passwords = {
            ADMIN_USER: _password(self.endpoint.admin_password_file),
            CLIENT_USER: _password(self.endpoint.password_file),
        }
        self._write_certificates()

    def _write_certificates(self) -> None:
        ca_key, ca_cert = new_ca("capi-devstack throwaway CA")
        key, cert = new_server_certificate(ca_key, ca_cert, self.host)
        self.endpoint.ca_location.write_bytes(_pem_cert(ca_cert))
        self._key_pem = _pem_key(key).decode()
        self._chain_pem = (_pem_cert(cert) + _pem_cert(ca_cert)).decode()
        # For inspection (openssl s_client, other clients); the broker reads the PEM from its properties.
        keystore = self.directory / "broker.pem"
        keystore.touch(mode=0o600)
        keystore.write_text(self._key_pem + self._chain_pem)

    def format_args(self) -> list[str]:
        """`kafka.tools.StorageTool format` arguments that create the SCRAM users."""
        args = []
        for user, password in self._passwords.items():
            args += ["--add-scram", f"{MECHANISM}=[name={user},password={password}]"]
        return args

    def broker_properties(self, props: dict[str, str]) -> dict[str, str]:
        """`props` (the PLAINTEXT broker's) with the SASL_SSL listener added."""
        address = f"{LISTENER}://{self.host}:{self.port}"
        prefix = f"listener.name.{LISTENER.lower()}."
        protocols = props["listener.security.protocol.map"]
        return {
            **props,
            "listeners": f"{props['listeners']},{address}",
            "advertised.listeners": f"{props['advertised.listeners']},{address}",
            "listener.security.protocol.map": f"{protocols},{LISTENER}:{LISTENER}",
            "sasl.enabled.mechanisms": MECHANISM,
            prefix + "sasl.enabled.mechanisms": MECHANISM,
            # The broker side of SCRAM needs no credentials: the users live in the cluster metadata.
            f"{prefix}{MECHANISM.lower()}.sasl.jaas.config": f"{_SCRAM_MODULE} required;",
            # PEM given inline: a key store *file* in PEM form needs an encrypted key and its password.
            prefix + "ssl.keystore.type": "PEM",
            prefix + "ssl.keystore.key": _one_line(self._key_pem),
            prefix + "ssl.keystore.certificate.chain": _one_line(self._chain_pem),
        }

    def wait_ready(self, timeout_s: float) -> str | None:
        """Wait until the admin user can list topics through the listener; None, or the last error."""
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout_s
        problem = "not tried"
        while time.monotonic() < deadline:
            admin = AdminClient({**self.endpoint.client_properties(admin=True), "socket.timeout.ms": 3000})
            try:
                if admin.list_topics(timeout=3).brokers:
                    return None
            except KafkaException as exc:
                problem = str(exc)
            time.sleep(0.25)
        return problem


def _one_line(pem: str) -> str:
    """PEM text as one properties-file line (`\\n` is a newline escape there)."""
    return pem.strip().replace("\n", "\\n")
