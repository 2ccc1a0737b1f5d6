"""A real identity provider's key endpoint for tests: an HTTP server on a loopback port, in
a thread, serving a JWKS of keys generated here, and minting tokens signed with them.

Its keys can be rotated (`rotate`), its answers broken (`failing`), and it counts the
fetches it served, so a test sees what the gateway's key cache did.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm


@dataclass(frozen=True)
class SigningKey:
    """A private key, its kid and its algorithm (RS256 or ES256)."""

    kid: str
    algorithm: str
    private: Any

    @classmethod
    def new(cls, algorithm: str) -> SigningKey:
        if algorithm == "RS256":
            private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif algorithm == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        else:
            raise ValueError(algorithm)
        return cls(f"{algorithm.lower()}-{uuid.uuid4().hex[:8]}", algorithm, private)

    def jwk(self) -> dict[str, Any]:
        codec = RSAAlgorithm if self.algorithm == "RS256" else ECAlgorithm
        public = json.loads(codec.to_jwk(self.private.public_key()))
        return {**public, "kid": self.kid, "use": "sig", "alg": self.algorithm}

    def mint(
        self,
        sub: str,
        *,
        tenant: str = "default",
        issuer: str = "chatlog",
        audience: str = "chatlog",
        ttl_s: int = 3600,
        now: float | None = None,
        **claims: Any,
    ) -> str:
        issued = int(time.time() if now is None else now)
        payload = {
            "iss": issuer,
            "aud": audience,
            "sub": sub,
            "tenant": tenant,
            "iat": issued,
            "nbf": issued,
            "exp": issued + ttl_s,
            **claims,
        }
        return jwt.encode(
            payload, self.private, algorithm=self.algorithm, headers={"kid": self.kid}
        )


class JwksServer:
    """The endpoint: `url` serves the public halves of `keys`."""

    def __init__(self, keys: list[SigningKey]) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.failing = False
        self.url = ""

    def rotate(self, key: SigningKey) -> None:
        """Publish `key` beside the others (an identity provider's rotation)."""
        self.keys = [*self.keys, key]

    def body(self) -> bytes:
        return json.dumps({"keys": [k.jwk() for k in self.keys]}).encode()


@contextmanager
def running_jwks(*keys: SigningKey) -> Iterator[JwksServer]:
    """A `JwksServer` answering on 127.0.0.1 for the duration of the block."""
    server = JwksServer(list(keys))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server.fetches += 1
            if server.failing or self.path != "/.well-known/jwks.json":
                self.send_response(503 if server.failing else 404)
                self.end_headers()
                return
            body = server.body()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the test asserts on `fetches`

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}/.well-known/jwks.json"
    thread = threading.Thread(target=httpd.serve_forever, name="jwks-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
