"""Serves tests/browser/page.html on 127.0.0.1:PORT (an origin of its own)
and writes what the page POSTs to /result into RESULT_FILE.

Usage: serve.py PORT RESULT_FILE
"""
import http.server
import os
import sys

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page.html")
port, result_file = int(sys.argv[1]), sys.argv[2]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open(PAGE, "rb") as page:
            body = page.read()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if self.path == "/result":
            with open(result_file + ".part", "wb") as out:
                out.write(body)
            os.rename(result_file + ".part", result_file)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
