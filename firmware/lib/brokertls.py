# TLS to the pole's broker ("broker": {"tls": true}). Only a node that uses it loads this module and
# ssl: the names they intern (kept for good in a MicroPython heap) stay out of every other node's.
import ssl

CA_FILE = "ca.der"  # the site CA's certificate (openpole pole init --tls; flash and deploy put it here)


class Wrap:
    """wrap(sock, host): TLS over the connected socket, the broker's certificate checked against the
    site's CA and the broker's host name. The handshake happens in the first write."""

    def __init__(self, path=CA_FILE):
        try:
            with open(path, "rb") as f:
                self.ca = f.read()
        except OSError:
            raise OSError("broker.tls is on and %s is missing: build or deploy the node again from the site" % path)

    def __call__(self, sock, host):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=self.ca)
        return ctx.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
