"""Issue 18's poison requests, replayed through the real gateway against a real tier.

One ``mlx_lm.server`` serving the tiny test model (``mlxctl.testing.tiny_model``) behind
``python -m mlxctl.gateway`` (the sources on ``PYTHONPATH``: run it with main's and with
the fixed ones). Each case sends one request (or a few) with the key, then checks the
tier: same PID, ``/health`` 200, and a normal 1-token request answered within seconds.
A tier that crashed (libmlx's segfault), lost its generation thread or stays busy for
nobody is restarted by the runner, so the next case starts from a healthy tier.

Outcomes:

- ``VULNERABLE``: the harm the issue describes happened (the tier crashed, its generation
  thread died, it was busy for nobody, it fetched a URL, a client's template ran in it,
  a 500 or a hang at the gateway, a 1 MB echo, no header naming the tier);
- ``refused``: the gateway answered 4xx before the tier saw the request;
- ``ok``: a correct answer and an unharmed tier;
- ``forwarded``: it reached the tier and did no harm here (the issue's harm is in
  another runtime, e.g. vllm-mlx's grammar compiler).

``PYTHONPATH=src python benchmarks/adversarial_requests.py [--rows 1,3] [--json FILE]``.
Every process it starts is stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _shared import free_port, write_results

KEY = "sk-adversarial"
MSG = [{"role": "user", "content": "Hello world"}]
HEALTHY_WITHIN = 10.0  # seconds for a normal request after a case
OUR_CODES = {
    "invalid_request", "unsupported_parameter", "invalid_json", "request_too_large",
    "request_timeout", "model_not_found",
}  # fmt: skip


@dataclass
class Result:
    row: int
    case: str
    outcome: str
    seconds: float
    detail: str


class Stack:
    """A tier and the gateway in front of it, both started and stopped by PID."""

    def __init__(self, root: Path, model: Path) -> None:
        self.root, self.model = root, model
        self.tier_port, self.gw_port = free_port(), free_port()
        self.tier: subprocess.Popen[bytes] | None = None
        self.gateway: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.gw_port}"
        self.restarts: list[str] = []

    def routes(self) -> dict[str, Any]:
        from mlxctl.runtimes.gateway import Route

        route: dict[str, Any] = {"name": "fast", "port": self.tier_port,
                                 "served_model": "default_model", "max_concurrency": 2}  # fmt: skip
        if "vocab_size" in Route.model_fields:  # the fixed sources: the model's facts
            from mlxctl.desired.resolve import model_facts

            route |= {"runtime": "mlx-lm", **model_facts(self.model)}
        return {"routes": [route]}

    def start_tier(self) -> None:
        log = (self.root / "tier.log").open("ab")
        argv = [sys.executable, "-m", "mlx_lm", "server", "--model", str(self.model),
                "--port", str(self.tier_port)]  # fmt: skip
        self.tier = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip
        wait_until(lambda: self.generates(direct=True), 60, "the tier")

    def start(self) -> None:
        config = self.root / "routes.json"
        config.write_text(json.dumps(self.routes()))
        self.start_tier()
        env = {**os.environ, "LITELLM_MASTER_KEY": KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        env.pop("MLXCTL_ADMIN_SOCKET", None)
        log = (self.root / "gateway.log").open("ab")
        argv = [sys.executable, "-m", "mlxctl.gateway", "--config", str(config),
                "--host", "127.0.0.1", "--port", str(self.gw_port)]  # fmt: skip
        self.gateway = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)  # fmt: skip
        wait_until(lambda: self.generates(), 60, "the gateway")

    def generates(self, *, direct: bool = False, timeout: float = 5.0) -> bool:
        url = f"http://127.0.0.1:{self.tier_port}" if direct else self.url
        try:
            r = httpx.post(f"{url}/v1/chat/completions", headers=self.headers, timeout=timeout,
                           json={"model": "default_model" if direct else "fast",
                                 "messages": MSG, "max_tokens": 1})  # fmt: skip
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {KEY}"}

    def post(
        self, body: Any, path: str = "/v1/chat/completions", timeout: float = 30
    ) -> httpx.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {**self.headers, "Content-Type": "application/json"}
        return httpx.post(self.url + path, content=data, headers=headers, timeout=timeout)

    def harm(self, pid: int) -> str:
        """What happened to the tier ("" when unharmed); restarts it when harmed."""
        assert self.tier is not None
        code = self.tier.poll()
        if code is not None:
            why = f"the tier died (exit {code}{', SIGSEGV' if code == -11 else ''})"
        else:
            try:
                health = httpx.get(f"http://127.0.0.1:{self.tier_port}/health", timeout=5)
                status = health.status_code
            except httpx.HTTPError:
                status = 0
            began = time.monotonic()
            if status == 503:
                why = "the tier's generation thread died (/health 503)"
            elif not self.generates(timeout=HEALTHY_WITHIN):
                took = time.monotonic() - began
                why = f"the tier answered no normal request within {took:.0f} s"
            else:
                return ""
        self.restart_tier()
        return why

    def restart_tier(self) -> None:
        self.stop_tier()
        self.start_tier()

    def stop_tier(self) -> None:
        if self.tier is not None:
            stop(self.tier)

    def close(self) -> None:
        for proc in (self.gateway, self.tier):
            if proc is not None:
                stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise SystemExit(f"{what} did not answer within {timeout:.0f} s")


class Hits(http.server.BaseHTTPRequestHandler):
    """A loopback URL that records being fetched (the tier as a port scanner)."""

    hits: list[str] = []  # noqa: RUF012 - one listener per run

    def do_GET(self) -> None:
        Hits.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        self.wfile.write(b"\x89PNG\r\n")

    def log_message(self, *_args: object) -> None:
        pass


def judged(r: httpx.Response) -> tuple[str, str]:
    """``refused`` when the gateway's own 4xx answered, else what the tier said."""
    try:
        err = (
            r.json().get("error")
            if r.headers.get("content-type", "").startswith("application/json")
            else None
        )
    except ValueError:
        err = None
    code = err.get("code") if isinstance(err, dict) else None
    if 400 <= r.status_code < 500 and code in OUR_CODES:
        return "refused", f"{r.status_code} {code}: {str(err.get('message'))[:90]}"
    if r.status_code >= 500:
        return "VULNERABLE", f"{r.status_code} at the gateway: {r.text[:90]!r}"
    if r.status_code == 200:
        return "ok", "200"
    return "forwarded", f"the tier answered {r.status_code}: {r.text[:90]!r}"


def case(stack: Stack, row: int, name: str, send: Callable[[], tuple[str, str]]) -> Result:
    assert stack.tier is not None
    pid = stack.tier.pid
    began = time.monotonic()
    try:
        outcome, detail = send()
    except httpx.TimeoutException:
        outcome, detail = "VULNERABLE", "no answer before the client's timeout"
    except httpx.HTTPError as exc:
        outcome, detail = "VULNERABLE", f"{type(exc).__name__}: {exc}"[:120]
    took = time.monotonic() - began
    if harm := stack.harm(pid):
        outcome, detail = "VULNERABLE", f"{harm}; {detail}"
    print(f"  row {row:2} {name:44} {outcome:10} {took:6.2f}s  {detail[:100]}", flush=True)
    return Result(row, name, outcome, round(took, 2), detail)


def cases(stack: Stack, hits_port: int) -> list[tuple[int, str, Callable[[], tuple[str, str]]]]:
    def chat(**fields: Any) -> Callable[[], tuple[str, str]]:
        return lambda: judged(
            stack.post({"model": "fast", "messages": MSG, "max_tokens": 2, **fields})
        )

    def text(prompt: Any) -> Callable[[], tuple[str, str]]:
        body = {"model": "fast", "prompt": prompt, "max_tokens": 2}
        return lambda: judged(stack.post(body, "/v1/completions"))

    def template() -> tuple[str, str]:
        loop = "{% for i in range(300) %}{% for j in range(300) %}{% endfor %}{% endfor %}x"
        r = stack.post({"model": "fast", "messages": MSG, "max_tokens": 2,
                        "chat_template_kwargs": {"chat_template": loop}})  # fmt: skip
        outcome, detail = judged(r)
        if outcome == "ok":
            return "VULNERABLE", "the client's template ran in the tier's generation thread"
        return outcome, detail

    def remote_image() -> tuple[str, str]:
        Hits.hits.clear()
        url = f"http://127.0.0.1:{hits_port}/probe.png"
        parts = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": url}}]
        r = stack.post({"model": "fast", "messages": [{"role": "user", "content": parts}],
                        "max_tokens": 2})  # fmt: skip
        outcome, detail = judged(r)
        if Hits.hits:
            return "VULNERABLE", f"the tier fetched {url} ({r.status_code})"
        return outcome, detail

    def image_text_only() -> tuple[str, str]:
        png = (
            "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42m"
            "Nk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
        )
        parts = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": png}}]
        return judged(stack.post({"model": "fast", "max_tokens": 2,
                                  "messages": [{"role": "user", "content": parts}]}))  # fmt: skip

    def unbounded(**fields: Any) -> Callable[[], tuple[str, str]]:
        """A request mlx-lm ignores the harmful part of (vllm-mlx compiles it): a 200 means
        it reached the tier unbounded."""

        def send() -> tuple[str, str]:
            outcome, detail = chat(**fields)()
            return ("forwarded", "200: reached the tier") if outcome == "ok" else (outcome, detail)

        return send

    def schema(n: int) -> dict[str, Any]:
        props = {f"p{i}": {"type": "string"} for i in range(n)}
        return {"type": "json_schema", "json_schema": {"name": "s", "schema": {
            "type": "object", "properties": props}}}  # fmt: skip

    def abandoned() -> tuple[str, str]:
        """Four non-streamed requests for 100 000 tokens whose clients leave after 2 s,
        then a normal one: how long it waits."""
        body = {"model": "fast", "messages": MSG, "max_tokens": 100_000,
                "logit_bias": {"2": -100}}  # EOS (<|im_end|>, id 2) banned  # fmt: skip

        def leave() -> None:
            with contextlib.suppress(httpx.HTTPError):
                stack.post(body, timeout=2)

        threads = [threading.Thread(target=leave) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        began = time.monotonic()
        r = stack.post({"model": "fast", "messages": MSG, "max_tokens": 1}, timeout=60)
        took = time.monotonic() - began
        if r.status_code != 200 or took > HEALTHY_WITHIN:
            return "VULNERABLE", f"a normal request waited {took:.1f} s ({r.status_code})"
        return "ok", f"a normal request after 4 abandoned ones answered in {took:.1f} s"

    def huge_max_tokens() -> tuple[str, str]:
        r = stack.post({"model": "fast", "messages": MSG, "max_tokens": 2**70,
                        "logit_bias": {"2": -100}}, timeout=8)  # fmt: skip
        return judged(r)

    def deep() -> tuple[str, str]:
        r = stack.post(b"[" * 100_000 + b"]" * 100_000)
        if r.status_code >= 500 or not r.headers.get("content-type", "").startswith(
            "application/json"
        ):
            return "VULNERABLE", f"{r.status_code} {r.headers.get('content-type')}: {r.text[:60]!r}"
        return judged(r)

    def big_body() -> tuple[str, str]:
        began = time.monotonic()
        with socket.create_connection(("127.0.0.1", stack.gw_port), timeout=10) as sock:
            sock.sendall(
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {50 << 20}\r\n\r\n".encode()
            )
            try:
                head = sock.recv(200).decode(errors="replace").split("\r\n")[0]
            except TimeoutError:
                return "VULNERABLE", "a 50 MB Content-Length was waited for (no 413 within 10 s)"
        if " 413 " in head + " ":
            return "refused", f"{head} after {time.monotonic() - began:.2f} s, before the body"
        return "VULNERABLE", head

    def slow_body(wait: float) -> Callable[[], tuple[str, str]]:
        def send() -> tuple[str, str]:
            body = json.dumps({"model": "fast", "messages": MSG}).encode()
            with socket.create_connection(("127.0.0.1", stack.gw_port), timeout=wait) as sock:
                head = (
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                    f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body) + 100}\r\n\r\n"
                )
                sock.sendall(head.encode() + body)
                began = time.monotonic()
                try:
                    head = sock.recv(200).decode(errors="replace").split("\r\n")[0]
                except TimeoutError:
                    return "VULNERABLE", f"a body 100 bytes short was held {wait:.0f} s+"
            return "refused", f"{head} after {time.monotonic() - began:.1f} s"

        return send

    def trickled_headers(wait: float) -> tuple[str, str]:
        with socket.create_connection(("127.0.0.1", stack.gw_port), timeout=wait) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            began = time.monotonic()
            try:
                data = sock.recv(200)
            except TimeoutError:
                return "VULNERABLE", f"a connection with half its headers was held {wait:.0f} s+"
        return "refused", f"closed after {time.monotonic() - began:.1f} s ({data[:20]!r})"

    def huge_model() -> tuple[str, str]:
        r = stack.post({"model": "m" * 1_000_000, "messages": MSG})
        if len(r.content) > 10_000:
            return "VULNERABLE", f"{r.status_code}: a {len(r.content)}-byte answer echoed the name"
        return judged(r)

    def tier_header() -> tuple[str, str]:
        r = stack.post({"model": "fast", "messages": MSG, "max_tokens": 1})
        tier = r.headers.get("x-mlxctl-tier")
        if tier is None:
            return "VULNERABLE", "no header names the tier that served"
        return "ok", f"x-mlxctl-tier: {tier}"

    def nan(field: str, value: str) -> Callable[[], tuple[str, str]]:
        raw = ('{"model": "fast", "messages": [{"role": "user", "content": "hi"}], '
               f'"max_tokens": 2, "{field}": {value}}}').encode()  # fmt: skip
        return lambda: judged(stack.post(raw))

    return [
        (1, "logit_bias id 999999999", chat(logit_bias={"999999999": 100})),
        (1, "logit_bias 100 000 entries", chat(logit_bias={str(i): 1 for i in range(100_000)})),
        (1, "logit_bias id = vocab size (300)", chat(logit_bias={"300": 100})),
        (3, "completions batch prompt", text(["a", "b"])),
        (3, "completions token prompt past the vocabulary", text([1, 2, 999_999])),
        (
            3,
            "chat_template_kwargs return_tensors",
            chat(chat_template_kwargs={"return_tensors": "np"}),
        ),
        (4, "chat_template_kwargs.chat_template", template),
        (4, "chat_template field", chat(chat_template="{{ 7 * 7 }}")),
        (5, "image_url http://127.0.0.1 (fetch)", remote_image),
        (5, "data: image to a text-only tier", image_text_only),
        (6, "response_format 5000 properties", unbounded(response_format=schema(5000))),
        (
            6,
            "tool schema 30 deep",
            unbounded(
                tools=[{"type": "function", "function": {"name": "f", "parameters": nested(15)}}]
            ),
        ),
        (7, "max_tokens 2**70", huge_max_tokens),
        (7, "4 abandoned 100k-token requests", abandoned),
        (8, "JSON nested 100 000 deep", deep),
        (8, "50 MB Content-Length", big_body),
        (8, "body 100 bytes short of its length", slow_body(75)),
        (8, "headers never finished", lambda: trickled_headers(45)),
        (10, "temperature NaN", nan("temperature", "NaN")),
        (10, "top_p Infinity", nan("top_p", "Infinity")),
        (10, "max_tokens true", chat(max_tokens=True)),
        (10, "temperature -1", chat(temperature=-1)),
        (10, "top_p 5", chat(top_p=5)),
        (10, "1 MB model name", huge_model),
        (10, "a header names the tier", tier_header),
        (0, "a normal request", chat()),
    ]


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", help="comma-separated rows (default: all)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    rows = {int(r) for r in args.rows.split(",")} if args.rows else None
    from mlxctl.testing.tiny_model import build_tiny_model

    # A SIGTERM (timeout, Ctrl-C from a wrapper) still stops the tier and the gateway.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    hits = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hits)
    threading.Thread(target=hits.serve_forever, daemon=True).start()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="adv-req-") as tmp:
        root = Path(tmp)
        model = build_tiny_model(root / "tiny")
        stack = Stack(root, model)
        try:
            stack.start()
            print(f"gateway {stack.url} -> mlx_lm.server :{stack.tier_port} ({args.label})")
            for row, name, send in cases(stack, hits.server_address[1]):
                if rows is None or row in rows or row == 0:
                    results.append(case(stack, row, name, send))
        finally:
            stack.close()
            hits.shutdown()
    vulnerable = [r for r in results if r.outcome == "VULNERABLE"]
    print(f"\n{len(vulnerable)} VULNERABLE of {len(results)} cases")
    if args.json:
        write_results(
            args.json, "cases", {"label": args.label, "results": [asdict(r) for r in results]}
        )


if __name__ == "__main__":
    main()
