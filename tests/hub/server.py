"""A real hub-protocol server on loopback: olah (a self-hosted Hugging Face mirror) behind a small proxy.

    hub = HubServer(tmp_path).start()     # builds the repos, starts olah and the proxy
    env = hub.env(home)                   # HF_ENDPOINT=http://127.0.0.1:PORT, online, HF_HOME=home
    ...
    hub.stop()

olah (installed in .venv-hub by scripts/setup_hub.sh) serves the git repos of `repos.build_mirror`
with `offline = true`: it never contacts huggingface.co (its upstream is also set to a closed
loopback port). It speaks the hub's protocol for what the clients need (HEAD/GET resolve, revision
metadata, trees, paths-info) but not all of it; the proxy, which the clients talk to, adds what it
lacks and nothing else:

| olah's answer | what the hub answers (and the proxy sends) |
|---|---|
| `GET /api/{models,datasets}/REPO` (no revision) is "Repository not found" for a mirror repo | the proxy asks olah for `/api/.../REPO/revision/main` |
| a missing file: 401 RepoNotFound | 404, `X-Error-Code: EntryNotFound` |
| a missing revision: 401 RepoNotFound | 404, `X-Error-Code: RevisionNotFound` |
| no gated repos | `GATED_REPO` without `Authorization: Bearer GATED_TOKEN`: 401, `X-Error-Code: GatedRepo` |

It tells these cases apart by reading the mirror's git repos, as olah does. It can also make the
server go away in the middle of a download (`fail_download`) and come back (`restore`).
Every request it saw is in `requests` (method, path, status). Child processes get `env()` and
`sitecustomize_dir()` on PYTHONPATH, which refuses any socket connection to a non-loopback address.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .repos import GATED_REPO, build_mirror, repo_dir

ROOT = Path(__file__).resolve().parents[2]
HUB_VENV = ROOT / ".venv-hub"
GATED_TOKEN = "hf_saekit_test_token"
_API_SUFFIXES = {"refs", "revision", "tree", "paths-info", "commits", "xet-read-token", "preupload"}
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"}


def hub_python() -> Path:
    """.venv-hub's python; a clear error when scripts/setup_hub.sh has not made it."""
    python = HUB_VENV / "bin" / "python"
    if not python.is_file():
        raise RuntimeError(f"{python} not found: run `bash scripts/setup_hub.sh` (make test's setup does) to "
                           "install olah, the local hub server of tests/test_hub*.py")
    return python


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sitecustomize_dir() -> Path:
    """The folder whose sitecustomize.py refuses non-loopback connections (for child processes)."""
    return Path(__file__).resolve().parent / "loopback_only"


# ---------------------------------------------------------------------------- what a request names


@dataclass
class Target:
    """The repo, revision and file a hub request names (revision/file '' when it names none)."""

    repo_type: str
    repo_id: str
    revision: str = ""
    file: str = ""


def parse_target(path: str) -> Target | None:
    """The repo a hub URL path is about: /api/{type}s/ID[/revision/REV|/tree/REV/..] or [/datasets]/ID/resolve/REV/FILE."""
    path = path.split("?", 1)[0]
    api = re.match(r"^/api/(models|datasets|spaces)/(.+)$", path)
    if api:
        parts = api.group(2).split("/")
        split = 1 if len(parts) > 1 and parts[1] in _API_SUFFIXES else min(2, len(parts))
        rest = parts[split:]
        revision = rest[1] if len(rest) > 1 and rest[0] in ("revision", "tree", "paths-info", "commits") else ""
        return Target(api.group(1)[:-1], "/".join(parts[:split]), revision)
    resolve = re.match(r"^/(?:(datasets|spaces)/)?(.+?)/resolve/([^/]+)/(.+)$", path)
    if resolve:
        kind = (resolve.group(1) or "models")[:-1]
        return Target(kind, resolve.group(2), resolve.group(3), resolve.group(4))
    return None


def bare_repo_api(path: str) -> bool:
    """Whether `path` is /api/{type}s/ID with no revision (olah answers it only for repos it cached)."""
    target = parse_target(path)
    base = path.split("?", 1)[0].rstrip("/")
    return target is not None and base == f"/api/{target.repo_type}s/{target.repo_id}"


# ---------------------------------------------------------------------------- the mirror's git


def _git_ok(repo: Path, *args: str) -> bool:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True).returncode == 0


def hub_error(mirror: Path, target: Target) -> tuple[int, str, str]:
    """(status, X-Error-Code, message) the hub gives for a request olah answered 'not found'."""
    repo = repo_dir(mirror, target.repo_id, target.repo_type)
    if not (repo / ".git").exists():
        return 401, "RepoNotFound", "Repository not found"
    if target.revision and not _git_ok(repo, "rev-parse", "--verify", "-q", f"{target.revision}^{{commit}}"):
        return 404, "RevisionNotFound", f"Invalid rev id: {target.revision}"
    return 404, "EntryNotFound", "Entry not found"


# ---------------------------------------------------------------------------- the proxy


class ProxyHandler(BaseHTTPRequestHandler):
    """Forwards one request to olah, with the changes of the module docstring."""

    protocol_version = "HTTP/1.1"
    server: "HubProxy"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: `requests` records what was asked
        pass

    def do_GET(self) -> None:
        self.forward()

    def do_HEAD(self) -> None:
        self.forward()

    def do_POST(self) -> None:
        self.forward()

    def forward(self) -> None:
        hub = self.server
        if hub.down:
            hub.record(self.command, self.path, 0)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)  # the server has gone away
            return
        target = parse_target(self.path)
        if target and target.repo_id == GATED_REPO and self.headers.get("authorization") != f"Bearer {GATED_TOKEN}":
            message = (f"Access to model {GATED_REPO} is restricted. You must have access to it and be "
                       "authenticated to access it. Please log in.")
            return self.reply(401, {"X-Error-Code": "GatedRepo", "X-Error-Message": message}, message)
        status, headers, body = self.ask_olah(target)
        if status == 401 and target and (target.revision or target.file):
            status, code, message = hub_error(hub.mirror, target)
            return self.reply(status, {"X-Error-Code": code, "X-Error-Message": message}, message)
        cut = hub.cut_after(self.command, self.path, len(body))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value.replace(hub.olah_url, hub.url))
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body if cut is None else body[:cut])
        hub.record(self.command, self.path, status)
        if cut is not None:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    def ask_olah(self, target: Target | None) -> tuple[int, list[tuple[str, str]], bytes]:
        """olah's (status, headers without hop-by-hop ones, body) for this request."""
        path = self.path
        if bare_repo_api(path):
            base, _, query = path.partition("?")
            path = f"{base.rstrip('/')}/revision/main" + (f"?{query}" if query else "")
        length = int(self.headers.get("content-length") or 0)
        payload = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        conn = http.client.HTTPConnection("127.0.0.1", self.server.olah_port, timeout=60)
        try:
            conn.request(self.command, path, body=payload, headers=headers)
            response = conn.getresponse()
            body = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_HEADERS]
            if self.command == "HEAD":  # a HEAD's length is the file's, not its (empty) body's
                kept.append(("Content-Length", response.getheader("content-length", "0")))
            return response.status, kept, body
        finally:
            conn.close()

    def reply(self, status: int, headers: dict[str, str], message: str) -> None:
        body = ('{"error": "%s"}' % message.replace('"', "'")).encode()
        self.send_response(status)
        for name, value in {**headers, "Content-Type": "application/json"}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.server.record(self.command, self.path, status)


class HubProxy(ThreadingHTTPServer):
    """The loopback HTTP server the clients talk to (HF_ENDPOINT), in front of olah."""

    daemon_threads = True

    def __init__(self, olah_port: int, mirror: Path) -> None:
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        self.olah_port, self.mirror = olah_port, mirror
        self.olah_url = f"http://127.0.0.1:{olah_port}"
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.down = False
        self.failing: tuple[str, int] | None = None
        self.requests: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()

    def record(self, method: str, path: str, status: int) -> None:
        with self.lock:
            self.requests.append((method, path, status))

    def cut_after(self, method: str, path: str, size: int) -> int | None:
        """Bytes of the body to send before going away, for the download `fail_download` named; else None."""
        with self.lock:
            if method != "GET" or self.failing is None or self.failing[0] not in path or size <= self.failing[1]:
                return None
            self.down, cut, self.failing = True, self.failing[1], None
            return cut


# ---------------------------------------------------------------------------- olah + proxy


class HubServer:
    """The repos of `repos.build_mirror`, served by olah behind `HubProxy`, on 127.0.0.1 (free ports)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.mirror = self.workdir / "mirror"
        self.olah: subprocess.Popen | None = None
        self.proxy: HubProxy | None = None

    @property
    def url(self) -> str:
        assert self.proxy is not None, "HubServer.start() first"
        return self.proxy.url

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        assert self.proxy is not None
        return self.proxy.requests

    def start(self, timeout: float = 60) -> "HubServer":
        build_mirror(self.mirror)
        port = free_port()
        config = self.workdir / "olah.toml"
        config.write_text("\n".join([
            "[basic]", 'host = "127.0.0.1"', f"port = {port}", f'repos-path = "{self.workdir / "olah-cache"}"',
            f'mirrors-path = ["{self.mirror}"]', 'hf-scheme = "http"', 'hf-netloc = "127.0.0.1:9"',
            'hf-lfs-netloc = "127.0.0.1:9"', f'mirror-netloc = "127.0.0.1:{port}"', "",
            "[accessibility]", "offline = true", ""]))
        olah_cli = hub_python().parent / "olah-cli"
        self.log = (self.workdir / "olah.log").open("w")
        self.olah = subprocess.Popen([str(olah_cli), "-c", str(config)], cwd=self.workdir, stdout=self.log,
                                     stderr=subprocess.STDOUT, env={**os.environ, "NO_PROXY": "*"})
        self.proxy = HubProxy(port, self.mirror)
        threading.Thread(target=self.proxy.serve_forever, daemon=True).start()
        self._wait_until_up(port, timeout)
        return self

    def _wait_until_up(self, port: int, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.olah is not None and self.olah.poll() is not None:
                raise RuntimeError(f"olah exited ({self.olah.returncode}): {(self.workdir / 'olah.log').read_text()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/api/whoami-v2")
                conn.getresponse().read()
                conn.close()
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"olah did not answer on 127.0.0.1:{port} within {timeout} s")

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.shutdown()
            self.proxy.server_close()
        if self.olah is not None and self.olah.poll() is None:
            self.olah.terminate()
            try:
                self.olah.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.olah.kill()
                self.olah.wait()
        if getattr(self, "log", None):
            self.log.close()

    def fail_download(self, path_part: str, after_bytes: int) -> None:
        """The next GET whose path holds `path_part` (and whose body is longer than `after_bytes`) sends
        `after_bytes` of the body, then the server goes away: every later request is dropped unanswered."""
        assert self.proxy is not None
        with self.proxy.lock:
            self.proxy.failing = (path_part, after_bytes)

    def restore(self) -> None:
        """The server is back (after `fail_download`)."""
        assert self.proxy is not None
        with self.proxy.lock:
            self.proxy.down, self.proxy.failing = False, None

    def env(self, home: Path, token: str | None = None) -> dict[str, str]:
        """Environment for a child process using this hub: online, HF_HOME=home, loopback only."""
        env = {k: v for k, v in os.environ.items()
               if k.upper() not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                                    "HF_HUB_CACHE", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE", "HF_TOKEN_PATH")}
        python_path = [str(sitecustomize_dir()), str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p]
        env.update(HF_ENDPOINT=self.url, HF_HUB_OFFLINE="0", HF_DATASETS_OFFLINE="0", TRANSFORMERS_OFFLINE="0",
                   HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1",
                   NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
                   PYTHONPATH=os.pathsep.join(python_path), WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")
        if token:
            env["HF_TOKEN"] = token
        return env

    def run_saekit(self, args: list[str], home: Path, cwd: Path, token: str | None = None,
                   timeout: float = 300) -> subprocess.CompletedProcess:
        """`python -m saekit ARGS` in a child process against this hub (stdout and stderr captured)."""
        return subprocess.run([sys.executable, "-m", "saekit", *args], cwd=cwd, env=self.env(home, token),
                              capture_output=True, text=True, timeout=timeout)

    def run_python(self, code: str, home: Path, cwd: Path, token: str | None = None, timeout: float = 300,
                   extra_args: list[str] | None = None) -> subprocess.CompletedProcess:
        """`python -c CODE [EXTRA_ARGS]` in a child process against this hub."""
        return subprocess.run([sys.executable, "-c", code, *(extra_args or [])], cwd=cwd, env=self.env(home, token),
                              capture_output=True, text=True, timeout=timeout)


def clear_home(home: Path) -> None:
    """Empty an HF_HOME (the hub cache), so the next run downloads again."""
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
