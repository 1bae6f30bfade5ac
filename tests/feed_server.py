"""A local stand-in for Binance USDT-M futures, for the feed bridge's tests.

It speaks the exchange's documented formats: ``GET /fapi/v1/exchangeInfo`` over HTTP
(the symbol list cryptofeed reads at start), and the combined websocket stream
(``wss://.../stream?streams=...``) sending ``{"stream": ..., "data": ...}`` messages
of ``aggTrade``, ``bookTicker``, ``markPriceUpdate``, ``forceOrder`` and ``kline``.
The websocket is TLS with a self-signed certificate made here (cryptofeed takes
``wss://`` addresses only). ``paused`` keeps the connections open but silent, and
:meth:`BinanceFuturesStandIn.outage` drops every connection and refuses new ones for a
while: the silence and disconnect drills.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import http.server
import ipaddress
import json
import ssl
import threading
import time
from pathlib import Path
from typing import Any

EXCHANGE_INFO = {"symbols": [
    {"symbol": "BTCUSDT", "status": "TRADING", "contractType": "PERPETUAL",
     "contractStatus": "TRADING", "baseAsset": "BTC", "quoteAsset": "USDT",
     "filters": [{"filterType": "PRICE_FILTER", "tickSize": "0.10"}]},
    {"symbol": "ETHUSDT", "status": "TRADING", "contractType": "PERPETUAL",
     "contractStatus": "TRADING", "baseAsset": "ETH", "quoteAsset": "USDT",
     "filters": [{"filterType": "PRICE_FILTER", "tickSize": "0.01"}]},
]}


def self_signed(folder: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context) for 127.0.0.1, from a fresh self-signed cert."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


class _ExchangeInfo(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(EXCHANGE_INFO).encode()
        status = 200 if self.path.startswith("/fapi/v1/exchangeInfo") else 404
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:  # quiet
        pass


class RestStandIn:
    """``GET /fapi/v1/exchangeInfo`` on 127.0.0.1, in a thread."""

    def __enter__(self) -> RestStandIn:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ExchangeInfo)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def messages(i: int, now_ms: int) -> list[dict[str, Any]]:
    """The i-th round of stream messages: one of each kind, as Binance sends them."""
    price = f"{60000 + i % 50:.1f}"
    return [
        {"stream": "btcusdt@aggTrade", "data": {
            "e": "aggTrade", "E": now_ms, "s": "BTCUSDT", "a": 1000 + i, "p": price,
            "q": "0.005", "f": 5000 + i, "l": 5000 + i, "T": now_ms - 1, "m": i % 2 == 0}},
        {"stream": "btcusdt@bookTicker", "data": {
            "e": "bookTicker", "u": 400 + i, "s": "BTCUSDT", "b": price, "B": "3.25",
            "a": f"{60000.2 + i % 50:.1f}", "A": "1.5", "T": now_ms - 1, "E": now_ms}},
        {"stream": "btcusdt@markPrice", "data": {
            "e": "markPriceUpdate", "E": now_ms, "s": "BTCUSDT", "p": price,
            "i": price, "P": price, "r": "0.00010000", "T": now_ms + 3_600_000}},
        {"stream": "btcusdt@forceOrder", "data": {
            "e": "forceOrder", "E": now_ms, "o": {
                "s": "BTCUSDT", "S": "SELL", "o": "LIMIT", "f": "IOC", "q": "0.010",
                "p": price, "ap": price, "X": "FILLED", "l": "0.010", "z": "0.010",
                "T": now_ms - 1}}},
        {"stream": "btcusdt@kline_1m", "data": {
            "e": "kline", "E": now_ms, "s": "BTCUSDT", "k": {
                "t": now_ms // 60_000 * 60_000 - 60_000,
                "T": now_ms // 60_000 * 60_000 - 1, "s": "BTCUSDT", "i": "1m",
                "f": 1, "L": 9, "o": "60000.0", "c": price, "h": "60100.0", "l": "59900.0",
                "v": "12.5", "n": 9, "x": True, "q": "750000.0", "V": "6.0", "Q": "360000.0",
                "B": "0"}}},
    ]


class BinanceFuturesStandIn:
    """The combined-stream websocket on 127.0.0.1 (TLS), one round of messages every
    ``every_s`` per connection; ``paths`` keeps each connection's request path."""

    def __init__(self, ssl_context: ssl.SSLContext, every_s: float = 0.05) -> None:
        self.ssl = ssl_context
        self.every_s = every_s
        self.port = 0
        self.paths: list[str] = []
        self.sent = 0
        self.paused = False  # True: connections stay open, nothing is sent
        self._server: Any = None

    async def start(self) -> None:
        from websockets.asyncio.server import serve

        self._server = await serve(self._handler, "127.0.0.1", self.port, ssl=self.ssl)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handler(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        self.paths.append(ws.request.path)
        with contextlib.suppress(ConnectionClosed):  # the client left, or an outage
            while True:
                if not self.paused:
                    for msg in messages(self.sent, int(time.time() * 1000)):
                        await ws.send(json.dumps(msg))
                    self.sent += 1
                await asyncio.sleep(self.every_s)

    async def outage(self, seconds: float) -> None:
        """Drop every connection, refuse connects for ``seconds``, then listen again on
        the same port."""
        self._server.close()
        await self._server.wait_closed()
        await asyncio.sleep(seconds)
        await self.start()

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()
