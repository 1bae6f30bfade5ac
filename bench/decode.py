"""Decode + validate per record through the wire contract, against orjson.loads alone.

Goal: at most 2.5x the cost of orjson.loads on the same bytes.

    python bench/decode.py [--n 200000]
"""

from __future__ import annotations

import argparse
import time

import orjson
from riskguard.schemas import Codec, OptionQuote, Quote, Trade, encode


def corpus(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        k = i % 3
        if k == 0:
            rec = Trade(id=f"t{i}", venue="binance", instrument="BTC-USDT",
                        ts=1_700_000_000_000_000_000 + i, recv_ts=1_700_000_000_000_100_000 + i,
                        price=65000.5 + i % 100, qty=0.01, side="buy")
        elif k == 1:
            rec = Quote(id=f"q{i}", venue="okx", instrument="ETH-USDT",
                        ts=1_700_000_000_000_000_000 + i,
                        bid=3000.1, bid_size=4.0, ask=3000.2, ask_size=5.5)
        else:
            rec = OptionQuote(id=f"o{i}", venue="deribit", instrument="BTC-27DEC-70000-C",
                              ts=1_700_000_000_000_000_000 + i, underlying="BTC",
                              expiry=1_735_000_000_000_000_000, strike=70000.0, option_type="call",
                              bid=0.05, ask=0.051, mark_price=0.0505, mark_iv=0.62,
                              underlying_price=65000.0, delta=0.41, gamma=0.0001, vega=12.0,
                              theta=-3.0)
        out.append(encode(rec))
    return out


def best_of(fn, data: list[bytes], repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for d in data:
            fn(d)
        best = min(best, time.perf_counter() - t0)
    return best / len(data)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=200_000)
    args = p.parse_args()
    data = corpus(args.n)
    codec = Codec()
    decode = codec.decode
    base = best_of(orjson.loads, data)
    ours = best_of(lambda d: decode("market", d), data)
    print(f"orjson.loads           {base * 1e6:7.3f} us/record  (baseline)")
    print(f"riskguard decode       {ours * 1e6:7.3f} us/record  "
          f"ratio {ours / base:.2f}x  (goal <= 2.5x)")


if __name__ == "__main__":
    main()
