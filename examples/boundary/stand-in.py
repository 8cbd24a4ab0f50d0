"""A local HTTPS stand-in for scoring.internal.example and api.stripe.com, for the demo.
Usage: python3 stand-in.py CERT KEY; prints its port."""
import http.server, json, ssl, sys

class Handler(http.server.BaseHTTPRequestHandler):
    def reply(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        host = self.headers.get("Host", "")
        auth = self.headers.get("Authorization")
        answer = {"host": host, "method": self.command, "path": self.path,
                  "authorized_with": auth, "body": body.decode(errors="replace")}
        out = (json.dumps(answer) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = do_DELETE = reply
    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
