"""A throwaway self-signed certificate for 127.0.0.1 (``openssl`` CLI), and the server context
that serves it, so the fake upstream can be HTTPS as Sentry is. The client trusts the certificate
itself through ``SSL_CERT_FILE`` (ours) or ``NODE_EXTRA_CA_CERTS`` (the Node extension)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Optional, Tuple


def openssl() -> Optional[str]:
    return shutil.which("openssl")


def self_signed(directory: Path) -> Tuple[Path, Path]:
    """(certificate, key) PEM files for CN/SAN 127.0.0.1, ECDSA P-256, valid one day."""
    exe = openssl()
    if exe is None:
        raise RuntimeError("the openssl command is not on PATH")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "upstream-cert.pem", directory / "upstream-key.pem"
    subprocess.run([exe, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    return cert, key


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def ca_chain(directory: Path) -> Tuple[Path, Path, Path]:
    """(chain, key, root) PEM files shaped like a public CA's: a root (RSA 4096) signs an
    intermediate (RSA 2048), which signs the leaf for 127.0.0.1 (RSA 2048); ``chain`` is the leaf
    then the intermediate, as a server sends them, and ``root`` is what the client trusts."""
    exe = openssl()
    if exe is None:
        raise RuntimeError("the openssl command is not on PATH")
    directory.mkdir(parents=True, exist_ok=True)
    d = directory

    def run(*args: str) -> None:
        subprocess.run([exe, *args], check=True, capture_output=True, timeout=60)

    (d / "ca.ext").write_text("basicConstraints=critical,CA:true\nkeyUsage=critical,keyCertSign,cRLSign\n")
    (d / "leaf.ext").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:false\n"
                                "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    run("req", "-x509", "-newkey", "rsa:4096", "-nodes", "-keyout", str(d / "root.key"), "-out", str(d / "root.pem"),
        "-days", "2", "-subj", "/CN=bench root", "-addext", "basicConstraints=critical,CA:true",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, bits, issuer, ext, subject in (("int", "2048", "root", "ca.ext", "/CN=bench intermediate"),
                                             ("leaf", "2048", "int", "leaf.ext", "/CN=127.0.0.1")):
        run("req", "-newkey", "rsa:" + bits, "-nodes", "-keyout", str(d / (name + ".key")), "-out",
            str(d / (name + ".csr")), "-subj", subject)
        run("x509", "-req", "-in", str(d / (name + ".csr")), "-CA", str(d / (issuer + ".pem")), "-CAkey",
            str(d / (issuer + ".key")), "-CAcreateserial", "-out", str(d / (name + ".pem")), "-days", "1",
            "-extfile", str(d / ext))
    chain = d / "chain.pem"
    chain.write_text((d / "leaf.pem").read_text() + (d / "int.pem").read_text())
    return chain, d / "leaf.key", d / "root.pem"
