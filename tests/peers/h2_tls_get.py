"""A real TLS peer for cli/tests/tls_peers.rs: Python's ssl module and the h2
package pull one object over HTTP/2 with TLS 1.3 and ALPN h2, presenting a
client certificate when given one, and write the response body to a file.

usage: h2_tls_get.py HOST PORT PATH CA OUT [CERT KEY]

Exits 0 when the response was 200 and the whole body was written; 1 with
one line on stderr otherwise.
"""

import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events


def main(host, port, path, ca, out, cert=None, key=None):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["h2"])
    if cert:
        ctx.load_cert_chain(cert, key)
    raw = socket.create_connection((host, int(port)), timeout=10)
    tls = ctx.wrap_socket(raw, server_hostname=host)
    if tls.selected_alpn_protocol() != "h2":
        raise RuntimeError(f"ALPN chose {tls.selected_alpn_protocol()!r}, not h2")
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    # A large window so the server is not held back by this peer.
    conn.increment_flow_control_window(16 << 20)
    stream = conn.get_next_available_stream_id()
    conn.send_headers(
        stream,
        [(":method", "GET"), (":path", path), (":authority", f"{host}:{port}"), (":scheme", "https")],
        end_stream=True,
    )
    tls.sendall(conn.data_to_send())
    status = None
    with open(out, "wb") as f:
        # Bounded: at most this many reads, each with the socket timeout.
        for _ in range(1_000_000):
            data = tls.recv(1 << 16)
            if not data:
                raise RuntimeError("connection closed before the response ended")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers).get(b":status")
                elif isinstance(event, h2.events.DataReceived):
                    f.write(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    tls.sendall(conn.data_to_send())
                    if status != b"200":
                        raise RuntimeError(f"status {status!r}")
                    return
                elif isinstance(event, h2.events.StreamReset):
                    raise RuntimeError(f"stream reset: {event.error_code!r}")
            tls.sendall(conn.data_to_send())
    raise RuntimeError("too many reads")


if __name__ == "__main__":
    try:
        main(*sys.argv[1:])
    except Exception as e:  # one line, for the test to match
        print(f"h2_tls_get: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
