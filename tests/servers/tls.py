"""Make the TLS material of the secured-Kafka tests, in OUTDIR:

    python tls.py OUTDIR

- ca.pem: a test CA;
- server.pem, server.key: a broker certificate for 127.0.0.1 and localhost,
  signed by that CA, valid from yesterday for a year;
- expired.pem, expired.key: the same, but it expired yesterday;
- other-ca.pem: a second CA, which signed nothing the broker presents.

Made fresh for every test broker (EC P-256 keys: fast), so no certificate
is committed and none can expire in the repository.
"""

import datetime
import ipaddress
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def write_key(path, key):
    with open(path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def write_cert(path, cert):
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def ca(cn, now):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def server(out, stem, ca_key, ca_cert, before, after):
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(before)
        .not_valid_after(after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_cert(f"{out}/{stem}.pem", cert)
    write_key(f"{out}/{stem}.key", key)


def main():
    out = sys.argv[1]
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, ca_cert = ca("sluice test CA", now)
    write_cert(f"{out}/ca.pem", ca_cert)
    server(out, "server", ca_key, ca_cert, now - datetime.timedelta(days=1), now + datetime.timedelta(days=365))
    server(out, "expired", ca_key, ca_cert, now - datetime.timedelta(days=30), now - datetime.timedelta(days=1))
    _, other = ca("another CA", now)
    write_cert(f"{out}/other-ca.pem", other)


if __name__ == "__main__":
    main()
