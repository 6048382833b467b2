"""The fs_* and http_fetch built-ins and the factory, on real files and real loopback HTTP servers.

http_fetch's servers listen on 127.0.0.1 and 127.0.0.2 (both loopback: nothing here leaves the
machine); each records the requests it got, so a refused redirect can be shown to have reached
nothing. The TLS server checks that the connection to the checked IP still carries the host's
name (SNI, Host) and that its certificate is verified against that name.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from ember.agents.tools import http_fetch as http_fetch_module
from ember.agents.tools.builtin import builtin_tools
from ember.agents.tools.builtin_config import BUILTIN_TOOL_NAMES, BuiltinToolsConfig, HttpFetchConfig
from ember.agents.tools.fs import FsListTool, FsReadTool, FsRoot, FsWriteTool
from ember.agents.tools.http_fetch import HttpFetchTool
from ember.agents.types import AgentTool

# -- the factory and the config -------------------------------------------------------------------


def test_durations_take_numbers_or_units() -> None:
    config = BuiltinToolsConfig.model_validate(
        {"shell": {"allow": ["echo"], "timeout": "2m"}, "http_fetch": {"allow_hosts": ["a.b"], "timeout": "500ms"}}
    )
    assert config.shell is not None and config.shell.timeout == 120
    assert config.http_fetch is not None and config.http_fetch.timeout == 0.5


def test_factory_builds_only_what_the_config_enables(tmp_path: Path) -> None:
    assert builtin_tools(BuiltinToolsConfig(), tmp_path) == {}
    config = BuiltinToolsConfig.model_validate(
        {"shell": {"allow": ["echo"]}, "fs": {"root": "files"}, "http_fetch": {"allow_hosts": ["127.0.0.1"]}}
    )
    tools = builtin_tools(config, tmp_path)
    assert sorted(tools) == ["fs_list", "fs_read", "http_fetch", "shell"]  # fs_write: not writable
    assert set(tools) <= set(BUILTIN_TOOL_NAMES)
    for name, tool in tools.items():
        assert tool.spec.name == name and tool.spec.source == "builtin"
        assert tool.spec.parameters["type"] == "object"
    assert config.unavailable("fs_write") == "needs writable = true in [tools.fs]"
    assert BuiltinToolsConfig().unavailable("shell") == "needs [tools.shell] in ember.toml"
    assert config.unavailable("fs_read") is None


@pytest.mark.parametrize(
    ("table", "why"),
    [
        ({"shell": {"allow": ["echo"], "bogus": 1}}, "Extra inputs"),
        ({"shell": {"allow": ["echo"], "bubblewrap": "maybe"}}, "bubblewrap"),
        ({"fs": {}}, "root"),
        ({"http_fetch": {"allow_hosts": ["http://example.com/"]}}, "no scheme, port or path"),
        ({"http_fetch": {"allow_hosts": ["127.0.0.1"], "methods": ["DELETE"]}}, "methods"),
        ({"http_fetch": {"allow_hosts": []}}, "allow_hosts"),
        ({"nope": {}}, "Extra inputs"),
        ({"shell": {"allow": ["echo"], "timeout": "soon"}}, "invalid duration"),
        ({"http_fetch": {"allow_hosts": ["a.b"], "timeout": 0}}, "greater than 0"),
    ],
)
def test_bad_tables_are_config_errors(table: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        BuiltinToolsConfig.model_validate(table)


# -- fs_* ---------------------------------------------------------------------------------------


@dataclass
class Fs:
    root: Path
    outside: Path
    read: AgentTool
    write: AgentTool
    list: AgentTool


@pytest.fixture
def fs(tmp_path: Path) -> Fs:
    root = tmp_path / "root"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "a.txt").write_text("hello")
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    (root / "leak").symlink_to(outside)
    (root / "up").symlink_to(tmp_path)
    (root / "inner").symlink_to(root / "docs" / "a.txt")
    from ember.agents.tools.builtin_config import FsConfig

    files = FsRoot(FsConfig(root="root", writable=True, max_bytes=64, max_entries=3), tmp_path)
    return Fs(root, outside, FsReadTool(files), FsWriteTool(files), FsListTool(files))


async def test_fs_read_write_list_under_the_root(fs: Fs) -> None:
    assert (await fs.read.call({"path": "docs/a.txt"})).content == "hello"
    assert (await fs.read.call({"path": "./docs/../docs/a.txt"})).content == "hello"
    assert (await fs.read.call({"path": "inner"})).content == "hello"  # a link that stays inside
    outcome = await fs.write.call({"path": "notes/new.txt", "content": "written ✓"})
    assert not outcome.is_error and outcome.content == "wrote 11 bytes to notes/new.txt"
    assert (fs.root / "notes" / "new.txt").read_text() == "written ✓"
    assert (fs.root / "notes" / "new.txt").stat().st_mode & 0o777 == 0o644
    (fs.root / "notes" / "new.txt").chmod(0o600)
    assert (await fs.write.call({"path": "notes/new.txt", "content": "again"})).content.startswith("wrote 5")
    assert (fs.root / "notes" / "new.txt").read_text() == "again"
    assert (fs.root / "notes" / "new.txt").stat().st_mode & 0o777 == 0o600  # kept
    listing = (await fs.list.call({})).content.splitlines()
    assert listing[0] == ".: 5 entries" and listing[1:4] == ["docs/", "inner@", "leak@"]
    assert listing[4] == "[cut at 3 of 5 entries]"
    assert (await fs.list.call({"path": "docs"})).content == "docs: 1 entry\na.txt (5 bytes)"
    assert not any(p.name.startswith(".ember-write-") for p in fs.root.rglob("*"))


@pytest.mark.parametrize(
    "path",
    ["../secret.txt", "leak", "up/secret.txt", "docs/../../secret.txt", "up", "up/root/docs/../../secret.txt"],
)
async def test_fs_paths_leading_outside_the_root_are_refused(fs: Fs, path: str) -> None:
    for tool, arguments in (
        (fs.read, {"path": path}),
        (fs.list, {"path": path}),
        (fs.write, {"path": path, "content": "x"}),
    ):
        outcome = await tool.call(arguments)
        assert outcome.is_error and "outside the root" in outcome.content, (tool.spec.name, outcome)
    assert fs.outside.read_text() == "secret"  # the write through `leak` did not land


async def test_fs_write_outside_the_root_creates_nothing(fs: Fs, tmp_path: Path) -> None:
    for path in ("../escaped.txt", "up/escaped.txt", "up/new_dir/escaped.txt"):
        outcome = await fs.write.call({"path": path, "content": "x"})
        assert outcome.is_error and "outside the root" in outcome.content
    assert names_in(tmp_path) == ["root", "secret.txt"]


def names_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_a_writable_root_is_made_at_first_use_a_read_only_one_is_not(tmp_path: Path) -> None:
    from ember.agents.tools.builtin_config import FsConfig

    tools = builtin_tools(BuiltinToolsConfig(fs=FsConfig(root="ro")), tmp_path)
    outcome = await tools["fs_list"].call({})
    assert outcome.is_error and "does not exist" in outcome.content
    tools = builtin_tools(BuiltinToolsConfig(fs=FsConfig(root="rw", writable=True)), tmp_path)
    assert (await tools["fs_write"].call({"path": "a", "content": "1"})).content == "wrote 1 bytes to a"
    assert (await tools["fs_list"].call({})).content == ".: 1 entry\na (1 bytes)"


async def test_fs_refusals_and_caps(fs: Fs) -> None:
    outcome = await fs.read.call({"path": "/etc/passwd"})
    assert outcome.is_error and "relative to the root" in outcome.content
    outcome = await fs.read.call({"path": "docs"})
    assert outcome.is_error and "is a directory" in outcome.content
    outcome = await fs.read.call({"path": "missing.txt"})
    assert outcome.is_error and outcome.content == "no file 'missing.txt'"
    outcome = await fs.write.call({"path": "big.txt", "content": "x" * 65})
    assert outcome.is_error and "over the limit of 64" in outcome.content
    assert not (fs.root / "big.txt").exists()
    outcome = await fs.write.call({"path": "docs", "content": "x"})
    assert outcome.is_error and "is a directory" in outcome.content
    (fs.root / "long.txt").write_text("y" * 100)
    assert (await fs.read.call({"path": "long.txt"})).content == "[cut at 64 of 100 bytes]\n" + "y" * 64
    (fs.root / "blob.bin").write_bytes(b"\x7fELF\x00\x01")
    outcome = await fs.read.call({"path": "blob.bin"})
    assert outcome.is_error and outcome.content == "'blob.bin' is a binary file (6 bytes): fs_read reads text"
    assert (await fs.read.call({"path": "a\x00b"})).content == "the path may not contain NUL characters"
    for bad in ({}, {"path": ""}, {"path": "a", "extra": 1}, {"path": 3}):
        outcome = await fs.read.call(bad)
        assert outcome.is_error and outcome.content.startswith("bad arguments:")


async def test_fs_read_refuses_a_fifo_without_blocking(fs: Fs) -> None:
    os.mkfifo(fs.root / "pipe")
    started = time.monotonic()
    outcome = await fs.read.call({"path": "pipe"})
    assert outcome.is_error and "not a regular file" in outcome.content
    assert time.monotonic() - started < 2


async def test_fs_write_failure_leaves_the_old_file_whole(fs: Fs) -> None:
    # A read-only directory: the temporary file cannot be made, the old content stays.
    target = fs.root / "docs" / "a.txt"
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    (fs.root / "docs").chmod(0o500)
    try:
        outcome = await fs.write.call({"path": "docs/a.txt", "content": "new"})
    finally:
        (fs.root / "docs").chmod(0o700)
    assert outcome.is_error and target.read_text() == "hello"


# -- http_fetch ---------------------------------------------------------------------------------


@dataclass
class Site:
    host: str
    port: int
    seen: list[dict[str, Any]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"


class _Handler(BaseHTTPRequestHandler):
    site: Site

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest's output clean
        pass

    def _answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.site.seen.append(
            {"method": self.command, "path": parts.path, "host": self.headers.get("Host"), "body": body.decode()}
        )
        if parts.path == "/ok":
            self._answer(200, "hello ✓".encode())
        elif parts.path == "/echo":
            echo = {"method": self.command, "host": self.headers.get("Host"), "body": body.decode()}
            echo["auth"] = self.headers.get("Authorization")
            self._answer(200, json.dumps(echo).encode(), {"Content-Type": "application/json"})
        elif parts.path == "/big":
            self._answer(200, b"z" * 100_000)
        elif parts.path == "/slow":
            time.sleep(2)
            with contextlib.suppress(OSError):  # the client gave up long ago
                self._answer(200, b"late")
        elif parts.path == "/redirect":
            self._answer(int(query.get("status", "302")), headers={"Location": query["to"]})
        elif parts.path == "/loop":
            self._answer(302, headers={"Location": "/loop"})
        elif parts.path == "/png":
            self._answer(200, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", {"Content-Type": "image/png"})
        elif parts.path == "/missing":
            self._answer(404, b"not here")
        else:
            self._answer(500, b"?")

    do_GET = _handle
    do_POST = _handle


def _serve(host: str) -> tuple[ThreadingHTTPServer, Site]:
    site = Site(host, 0)
    handler = type("Handler", (_Handler,), {"site": site})
    server = ThreadingHTTPServer((host, 0), handler)
    server.daemon_threads = True
    site.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, site


@pytest.fixture(scope="module")
def sites() -> Iterator[tuple[Site, Site]]:
    one, site_one = _serve("127.0.0.1")
    two, site_two = _serve("127.0.0.2")
    try:
        yield site_one, site_two
    finally:
        for server in (one, two):
            server.shutdown()
            server.server_close()


def fetcher(*allow: str, **settings: Any) -> HttpFetchTool:
    return HttpFetchTool(HttpFetchConfig(allow_hosts=allow, **settings))


async def fetch(tool: HttpFetchTool, url: str, **arguments: Any) -> tuple[dict[str, Any] | str, bool]:
    outcome = await tool.call({"url": url, **arguments})
    return (outcome.content if outcome.is_error else json.loads(outcome.content)), outcome.is_error


async def test_allowlisted_loopback_fetch_works(sites: tuple[Site, Site]) -> None:
    one, _ = sites
    body, is_error = await fetch(fetcher("127.0.0.1"), one.url("/ok"))
    assert not is_error and isinstance(body, dict)
    assert body == {
        "status": 200,
        "url": one.url("/ok"),
        "content_type": "text/plain; charset=utf-8",
        "body": "hello ✓",
    }
    body, is_error = await fetch(fetcher("127.0.0.1"), one.url("/missing"))
    assert not is_error and isinstance(body, dict) and body["status"] == 404  # a status is an answer


async def test_a_named_host_connects_to_its_checked_address_with_its_name(sites: tuple[Site, Site]) -> None:
    one, _ = sites
    tool = fetcher("localhost", methods=["GET", "POST"])
    body, is_error = await fetch(tool, f"http://localhost:{one.port}/echo", method="POST", body="hi")
    assert not is_error and isinstance(body, dict)
    assert json.loads(body["body"]) == {"method": "POST", "host": f"localhost:{one.port}", "body": "hi", "auth": None}


@pytest.mark.parametrize(
    ("allow", "host"),
    [(("127.0.0.2",), "127.0.0.1"), (("127.0.0.1",), "localhost"), (("example.com",), "127.0.0.1")],
)
async def test_a_host_not_in_the_allowlist_is_refused(
    sites: tuple[Site, Site], allow: tuple[str, ...], host: str
) -> None:
    one, _ = sites
    before = len(one.seen)
    message, is_error = await fetch(fetcher(*allow), f"http://{host}:{one.port}/ok")
    assert is_error and message == f"refused: host {host!r} is not in allow_hosts ({', '.join(allow)})"
    assert len(one.seen) == before


@pytest.mark.parametrize(
    "host",
    # The odd spellings of 127.0.0.1 (what inet_aton accepts) are resolved, then checked, too.
    [
        *("127.0.0.1", "localhost", "[::1]", "0.0.0.0", "169.254.169.254", "10.1.2.3", "100.64.0.1", "224.0.0.1"),
        *("2130706433", "0x7f.0.0.1", "127.1", "[::ffff:127.0.0.1]"),
    ],
)
async def test_wildcards_never_reach_a_non_public_address(sites: tuple[Site, Site], host: str) -> None:
    one, _ = sites
    message, is_error = await fetch(fetcher("*", "*.localhost"), f"http://{host}:{one.port}/ok")
    assert is_error and "resolves to a non-public address" in str(message) and "named exactly" in str(message)


async def test_a_redirect_to_a_host_not_allowed_is_refused(sites: tuple[Site, Site]) -> None:
    one, two = sites
    tool = fetcher("127.0.0.2")  # both are loopback; only 127.0.0.2 is allowed
    before = len(one.seen)
    for target in (one.url("/ok"), f"http://localhost:{one.port}/ok", f"http://127.0.0.1:{two.port}/ok"):
        message, is_error = await fetch(tool, two.url(f"/redirect?to={target}"))
        assert is_error and str(message).startswith("refused: host '") and "is not in allow_hosts" in str(message)
    assert len(one.seen) == before  # nothing reached the other address
    # Allowed in the list, a redirect is followed (and re-checked each hop).
    body, is_error = await fetch(fetcher("127.0.0.1", "127.0.0.2"), two.url(f"/redirect?to={one.url('/ok')}"))
    assert not is_error and isinstance(body, dict) and body["url"] == one.url("/ok") and body["body"] == "hello ✓"


async def test_redirects_are_capped_and_303_turns_a_post_into_a_get(sites: tuple[Site, Site]) -> None:
    one, _ = sites
    message, is_error = await fetch(fetcher("127.0.0.1", max_redirects=2), one.url("/loop"))
    assert is_error and "more than 2 redirects" in str(message)
    tool = fetcher("127.0.0.1", methods=["GET", "POST"])
    body, _ = await fetch(tool, one.url("/redirect?status=303&to=/echo"), method="POST", body="data")
    assert isinstance(body, dict) and json.loads(body["body"])["method"] == "GET"
    body, _ = await fetch(tool, one.url("/redirect?status=307&to=/echo"), method="POST", body="data")
    assert isinstance(body, dict) and json.loads(body["body"]) == {
        "method": "POST",
        "host": f"127.0.0.1:{one.port}",
        "body": "data",
        "auth": None,
    }


async def test_credentials_do_not_follow_a_redirect_to_another_host(sites: tuple[Site, Site]) -> None:
    one, two = sites
    tool = fetcher("127.0.0.1", "127.0.0.2")
    body, _ = await fetch(tool, two.url(f"/redirect?to={one.url('/echo')}"), headers={"Authorization": "Bearer s"})
    assert isinstance(body, dict) and json.loads(body["body"])["auth"] is None
    body, _ = await fetch(tool, one.url("/redirect?to=/echo"), headers={"Authorization": "Bearer s"})
    assert isinstance(body, dict) and json.loads(body["body"])["auth"] == "Bearer s"  # same host: kept


async def test_binary_content_is_not_shown(sites: tuple[Site, Site]) -> None:
    one, _ = sites
    body, is_error = await fetch(fetcher("127.0.0.1"), one.url("/png"))
    assert not is_error and isinstance(body, dict)
    assert body["body"] == "" and body["body_note"] == "binary content (16 bytes), not shown"


async def test_body_size_cap_and_timeout(sites: tuple[Site, Site]) -> None:
    one, _ = sites
    body, is_error = await fetch(fetcher("127.0.0.1", max_bytes=1000), one.url("/big"))
    assert not is_error and isinstance(body, dict)
    assert body["body"] == "z" * 1000 and body["body_note"] == "cut at 1000 bytes"
    started = time.monotonic()
    message, is_error = await fetch(fetcher("127.0.0.1", timeout=0.5), one.url("/slow"))
    assert is_error and message == "the fetch took longer than 0.5 s"
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize(
    ("arguments", "why"),
    [
        ({"url": "ftp://127.0.0.1/x"}, "only http and https"),
        ({"url": "file:///etc/passwd"}, "only http and https"),
        ({"url": "http://user:pw@127.0.0.1/"}, "credentials in the URL"),
        ({"url": "http:///nohost"}, "has no host"),
        ({"url": "http://127.0.0.1/", "method": "POST"}, "method POST is not allowed"),
        ({"url": "http://127.0.0.1/", "body": "x"}, "a GET has no body"),
        ({"url": "http://127.0.0.1/", "headers": {"Host": "evil"}}, "set by the tool"),
        ({"url": "http://127.0.0.1/", "headers": {"X": "a\r\nInjected: 1"}}, "bad header 'X'"),
        ({"url": "http://127.0.0.1/", "headers": {"X": "é"}}, "bad header 'X'"),
        ({"url": "http://127.0.0.1/", "headers": {"X Y": "1"}}, "bad header 'X Y'"),
        ({"url": "http://127.0.0.1:99999/"}, "Port out of range"),
        ({"url": "http://[::1"}, "bad URL"),
        ({"url": "http://127.0.0.1/", "method": "DELETE"}, "bad arguments"),
        ({"uri": "http://127.0.0.1/"}, "bad arguments"),
    ],
)
async def test_bad_fetches_are_tool_errors(arguments: dict[str, Any], why: str) -> None:
    outcome = await fetcher("127.0.0.1").call(arguments)
    assert outcome.is_error and why in outcome.content


async def test_https_connects_to_the_checked_ip_with_the_hosts_name_and_verifies_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cryptography = pytest.importorskip("cryptography")
    del cryptography
    cert, key = _self_signed(tmp_path, "localhost")
    names: list[str | None] = []
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    server_ctx.sni_callback = lambda sock, name, ctx: names.append(name)  # type: ignore[assignment,func-returns-value]
    server, site = _serve("127.0.0.1")
    server.socket = server_ctx.wrap_socket(server.socket, server_side=True)
    try:
        url = f"https://localhost:{site.port}/echo"
        # The default trust store does not know this certificate: verification is on.
        message, is_error = await fetch(fetcher("localhost"), url)
        assert is_error and "CERTIFICATE_VERIFY_FAILED" in str(message)
        trusting = ssl.create_default_context(cafile=str(cert))
        monkeypatch.setattr(http_fetch_module, "_tls", lambda: trusting)
        body, is_error = await fetch(fetcher("localhost"), url)
        assert not is_error and isinstance(body, dict)
        assert json.loads(body["body"])["host"] == f"localhost:{site.port}"
        assert names and set(names) == {"localhost"}  # SNI carries the name, not the IP
    finally:
        server.shutdown()
        server.server_close()


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_fs_write_failing_midway_leaves_no_partial_file(fs: Fs, monkeypatch: pytest.MonkeyPatch) -> None:
    # The disk fills up after the bytes were written, before the rename: nothing half-written.
    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    for path in ("docs/a.txt", "docs/new.txt"):
        outcome = await fs.write.call({"path": path, "content": "partial"})
        assert outcome.is_error and outcome.content == "fs_write failed: No space left on device"
    monkeypatch.undo()
    assert names_in(fs.root / "docs") == ["a.txt"] and (fs.root / "docs" / "a.txt").read_text() == "hello"
