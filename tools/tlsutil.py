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
