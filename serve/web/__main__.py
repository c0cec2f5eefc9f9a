"""`python -m serve.web [MODEL.onnx] [--port N] [--open]`: serve the browser sampler on 127.0.0.1.

The page (serve/web/index.html and app.js), the sampler core it shares with Node.js (serve/js/core.js),
onnxruntime-web's WASM build (in the repository from serve/js/node_modules, installed by npm from the
lockfile; in an installed wheel from the folder `ort` beside this module) and the model (without one named,
the bundled model), which the page loads by itself (served-model.json). Everything runs in the browser; the
server only hands out these files, with the standard library, to this machine alone.
"""

from __future__ import annotations

import argparse
import errno
import http.server
import json
import sys
import urllib.parse
import webbrowser
from pathlib import Path

from serve.errors import ServerStartError
from serve.pretrained import model_or_pretrained
from serve.sampler import SamplerError, load_model

HERE = Path(__file__).resolve().parent
JS = HERE.parent / "js"
# the wheel's copy (setup.py), else the repository's npm package
ORT_DIST = HERE / "ort" if (HERE / "ort").is_dir() else JS / "node_modules" / "onnxruntime-web" / "dist"
# the sampler core's modules, which Node.js imports too
CORE_FILES = (
    "core.js",
    "errors.js",
    "pick.js",
    "options.js",
    "generate.js",
    "beam.js",
    "automaton.js",
    "dialect.js",
    "charsets.js",
)
# onnxruntime-web's WASM-only build: the script, then the module and binary it loads on the first session.
# The page runs it on one thread: more need cross-origin isolation (COOP/COEP), which a page opened from a
# file or embedded elsewhere rarely has.
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
MIME = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
    ".json": "application/json",
    ".ico": "image/x-icon",
}


def routes(model: Path | None) -> dict[str, Path | bytes]:
    """URL path -> file (or its bytes): the only things the server hands out."""
    table = {
        "/": HERE / "index.html",
        "/index.html": HERE / "index.html",
        "/app.js": HERE / "app.js",
        "/style.css": HERE / "style.css",
        "/inspect.js": JS / "inspect.js",
        "/inspect_view.js": HERE / "inspect_view.js",
    }
    table.update({f"/{name}": JS / name for name in CORE_FILES})
    table.update({f"/ort/{name}": ORT_DIST / name for name in ORT_FILES})
    if model is not None:
        table[model_url(model)] = model
        table["/served-model.json"] = json.dumps({"url": model_url(model)}).encode()
    return table


def model_url(model: Path) -> str:
    """Where the page fetches the model: under its own file name, which the page shows."""
    return "/model/" + model.name


def make_handler(table: dict[str, Path | bytes]) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            self.send_file(body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self.send_file(body=False)

        def send_file(self, body: bool) -> None:
            url = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            path = table.get(url)
            if path is None or not (isinstance(path, bytes) or path.is_file()):
                self.send_error(404, "not found")
                return
            data = path if isinstance(path, bytes) else path.read_bytes()
            self.send_response(200)
            suffix = Path(url).suffix if isinstance(path, bytes) else path.suffix
            self.send_header("Content-Type", MIME.get(suffix, "application/octet-stream"))
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")  # a re-exported model is never served stale
            self.end_headers()
            if body:
                self.wfile.write(data)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (the stdlib's name)
            pass  # the URL is all the user needs to see; errors reach the page

    return Handler


class LoopbackServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a page closed mid-download is no error
            super().handle_error(request, client_address)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="serve.web", description="Serve the browser sampler on 127.0.0.1: the model runs in the page."
    )
    parser.add_argument(
        "model", nargs="?", help="an .onnx exported by export.onnx (default: the bundled shakespeare model)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default 8000; 0 = any free one)")
    parser.add_argument("--open", action="store_true", help="open the page in the default browser")
    args = parser.parse_args(argv)
    try:
        model = Path(model_or_pretrained(args.model, "charlstm-web")).resolve()
        load_model(model, device="cpu")  # one clear line now rather than an error in the page
        missing = [name for name in ORT_FILES if not (ORT_DIST / name).is_file()]
        if missing:
            raise ServerStartError(
                f"onnxruntime-web is not installed ({ORT_DIST / missing[0]} is missing): "
                "run `cd serve/js && npm ci` (./setup.sh does it where npm is present; a wheel carries them)"
            )
        if not 0 <= args.port <= 65535:
            raise ServerStartError(f"--port must be between 0 and 65535, got {args.port}")
        try:
            server = LoopbackServer(("127.0.0.1", args.port), make_handler(routes(model)))
        except OSError as e:
            reason = "it is in use (pick another with --port)" if e.errno == errno.EADDRINUSE else e.strerror
            raise ServerStartError(f"cannot listen on 127.0.0.1:{args.port}: {reason}") from None
    except (SamplerError, ServerStartError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    url = f"http://127.0.0.1:{server.server_address[1]}/" + (
        f"?model={urllib.parse.quote(model_url(model))}" if model else ""
    )
    print(f"charlstm web sampler on {url} (Ctrl-C stops it)", flush=True)
    if args.open:
        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
