"""A throwaway PKI for the local control plane: one CA, the API server's serving certificate, client
certificates for the admin and the controllers, the service-account signing key, and kubeconfigs."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CONTEXT = "prescaler-local"
VALIDITY = dt.timedelta(days=365)
# Certificates start an hour back so a clock a little behind never sees them as not yet valid.
BACKDATE = dt.timedelta(hours=1)


@dataclass(frozen=True)
class Pki:
    dir: Path

    def path(self, name: str) -> Path:
        return self.dir / name


@dataclass(frozen=True)
class _Issuer:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: _Issuer | None,
    usage: Sequence[x509.ObjectIdentifier] = (),
    sans: Sequence[x509.GeneralName] = (),
) -> x509.Certificate:
    """The one certificate builder: a self-signed CA when `issuer` is None, else a leaf it signs."""
    is_ca = issuer is None
    signer = _Issuer(subject, key) if issuer is None else issuer
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer.name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if is_ca:
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usage)), critical=False).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.key.public_key()), critical=False
        )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(signer.key, hashes.SHA256())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)


def _write_pair(pki: Pki, file: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    pki.path(f"{file}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(pki.path(f"{file}.key"), key)


def make_pki(pki_dir: Path, service_ip: ipaddress.IPv4Address) -> Pki:
    """Write ca, apiserver, admin, controller-manager and scheduler `.crt`/`.key`, and `sa.key`/`sa.pub`."""
    pki_dir.mkdir(parents=True, exist_ok=True)
    pki = Pki(pki_dir)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("prescaler-local-ca")
    _write_pair(pki, "ca", _certificate(ca_name, ca_key, None), ca_key)
    ca = _Issuer(ca_name, ca_key)

    server_names: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(service_ip),
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default"),
        x509.DNSName("kubernetes.default.svc"),
        x509.DNSName("kubernetes.default.svc.cluster.local"),
    ]
    leaves: tuple[tuple[str, x509.Name, x509.ObjectIdentifier, list[x509.GeneralName]], ...] = (
        ("apiserver", _name("kube-apiserver"), ExtendedKeyUsageOID.SERVER_AUTH, server_names),
        ("admin", _name("prescaler-admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH, []),
        ("controller-manager", _name("system:kube-controller-manager"), ExtendedKeyUsageOID.CLIENT_AUTH, []),
        ("scheduler", _name("system:kube-scheduler"), ExtendedKeyUsageOID.CLIENT_AUTH, []),
    )
    for file, subject, usage, sans in leaves:
        key = ec.generate_private_key(ec.SECP256R1())
        _write_pair(pki, file, _certificate(subject, key, ca, [usage], sans), key)

    # Service-account tokens are signed with RSA: every token consumer understands RS256.
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki.path("sa.key"), sa_key)
    pki.path("sa.pub").write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return pki


def write_kubeconfig(path: Path, server: str, pki: Pki, user: str, cert: str) -> None:
    """A kubeconfig for `server` that authenticates as `user` with the client certificate `cert`."""

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CONTEXT,
                "cluster": {"server": server, "certificate-authority-data": b64(pki.path("ca.crt"))},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(pki.path(f"{cert}.crt")),
                    "client-key-data": b64(pki.path(f"{cert}.key")),
                },
            }
        ],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": user}}],
        "current-context": CONTEXT,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
