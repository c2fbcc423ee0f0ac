"""A throw-away PKI for one test cluster, made with the openssl CLI.

One CA signs the API server's serving certificate and the client certificates (admin is in
system:masters); an RSA key pair signs and verifies service-account tokens.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "30"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass(frozen=True)
class CertPair:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ClusterPKI:
    """Every certificate and key the control plane needs."""

    ca: CertPair
    serving: CertPair
    admin: CertPair
    kubelet_client: CertPair  # the API server's client certificate towards kubelets (logs, exec)
    sa_private_key: Path
    sa_public_key: Path


def _ec_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path), cwd=path.parent)


def make_ca(directory: Path, name: str = "kube-sft-test-ca") -> CertPair:
    """A self-signed CA."""
    pair = CertPair(directory / "ca.crt", directory / "ca.key")
    _ec_key(pair.key)
    _openssl(
        "req", "-x509", "-new", "-key", str(pair.key), "-out", str(pair.cert), "-days", DAYS,
        "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        cwd=directory,
    )  # fmt: skip
    return pair


def sign(ca: CertPair, directory: Path, name: str, subject: str, extensions: list[str]) -> CertPair:
    """A leaf certificate for `subject` (e.g. /O=system:masters/CN=admin) signed by ca."""
    pair = CertPair(directory / f"{name}.crt", directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    _ec_key(pair.key)
    _openssl("req", "-new", "-key", str(pair.key), "-out", str(csr), "-subj", subject, cwd=directory)
    ext.write_text("\n".join(["basicConstraints=critical,CA:FALSE", *extensions]) + "\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key), "-CAcreateserial",
        "-out", str(pair.cert), "-days", DAYS, "-extfile", str(ext),
        cwd=directory,
    )  # fmt: skip
    return pair


def make_pki(directory: Path) -> ClusterPKI:
    """Generate the CA, the serving cert (127.0.0.1, localhost, kubernetes.default...), admin and SA keys."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca(directory)
    sans = "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    serving = sign(ca, directory, "apiserver", "/CN=kube-apiserver", [sans, "extendedKeyUsage=serverAuth"])
    admin = sign(ca, directory, "admin", "/O=system:masters/CN=kube-sft-admin", ["extendedKeyUsage=clientAuth"])
    kubelet_client = sign(
        ca, directory, "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client",
        ["extendedKeyUsage=clientAuth"],
    )  # fmt: skip
    sa_key, sa_pub = directory / "sa.key", directory / "sa.pub"
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(sa_key), cwd=directory)
    _openssl("pkey", "-in", str(sa_key), "-pubout", "-out", str(sa_pub), cwd=directory)
    return ClusterPKI(
        ca=ca, serving=serving, admin=admin, kubelet_client=kubelet_client, sa_private_key=sa_key, sa_public_key=sa_pub
    )
