"""The site's certificate authority and the pole's broker certificate, for Mosquitto's TLS listener.

The CA lives in the site's private directory (its key never leaves it); `openpole pole init --tls`
signs a certificate for the pole's broker with it, and every node gets the CA certificate (ca.der,
DER: what MicroPython's ssl loads) to check that it talks to its own pole. EC P-256 keys: a
handshake an ESP32 does in about a second, where RSA-2048 takes several.
"""

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CA_YEARS = 20  # a pole's nodes carry the CA for their life
CERT_YEARS = 10
NODE_CA_FILE = "ca.der"  # on the node's filesystem, beside config.json


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "openpole"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _span(years):
    # A day back: a node whose clock is not yet set (it starts in 2000) checks no dates at all in
    # MicroPython, and a Pi a little behind must not see a certificate from the future.
    now = datetime.datetime.now(datetime.timezone.utc)
    return now - datetime.timedelta(days=1), now + datetime.timedelta(days=365 * years)


def ensure_ca(directory, write_private):
    """The site's CA (certificate, key), made on first use. write_private(path, bytes) stores a
    secret file (the site's 0600 writer)."""
    directory = Path(directory)
    crt, key_path = directory / "ca.crt", directory / "ca.key"
    if crt.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _span(CA_YEARS)
    cert = (x509.CertificateBuilder().subject_name(_name("openpole site CA")).issuer_name(_name("openpole site CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    write_private(key_path, _pem_key(key))
    crt.write_bytes(pem(cert))
    return cert, key


def server_cert(ca_cert, ca_key, names):
    """(certificate PEM, key PEM) for the pole's broker, valid for `names` (host names and IP
    addresses the nodes use as their broker host)."""
    sans = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _span(CERT_YEARS)
    cert = (x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return pem(cert), _pem_key(key)


def ca_der(ca_cert):
    return ca_cert.public_bytes(serialization.Encoding.DER)


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)
