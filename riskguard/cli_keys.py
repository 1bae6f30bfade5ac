"""``riskguard keys generate|sign-trust|check-trust``: Ed25519 keys and the signed trust file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from riskguard.errors import ConfigError, TrustError
from riskguard.operators.signing.crypto import Signer, generate_key_file, save_public_key
from riskguard.operators.signing.trust import RootSet, TrustStore, parse_trust, sign_trust_file


def _generate(args: argparse.Namespace) -> int:
    path = Path(args.out)
    signer = generate_key_file(path)
    if args.pub:
        save_public_key(args.pub, signer.public_key)
    sys.stdout.write(f"private key: {path} (mode 0600)\n"
                     f"public_key = \"{signer.public_key.hex()}\"\n"
                     f"key_id = \"{signer.key_id}\"\n")
    return 0


def check_trust_text(path: Path) -> None:
    """Parse the trust file the way every verifier will; TrustError if it would not load.

    A root signature over a file no verifier can parse would only fail later, at
    start-up or at a subscriber, so nothing is signed until it parses completely.
    """
    data = path.read_bytes()
    try:
        parse_trust(data.decode("utf-8"), source=str(path))
    except UnicodeDecodeError:
        raise TrustError(f"not signed: {path}: not UTF-8") from None
    except (TrustError, ConfigError) as err:
        raise TrustError(f"not signed: {err}") from None


def _sign_trust(args: argparse.Namespace) -> int:
    check_trust_text(Path(args.trust))
    signer = Signer.from_file(args.key)
    sp = sign_trust_file(args.trust, signer)
    sys.stdout.write(f"added root signature {signer.key_id} to {sp}\n")
    return 0


def _check_trust(args: argparse.Namespace) -> int:
    store = TrustStore.load(args.trust, RootSet.load(args.roots))
    sys.stdout.write(f"trust file {args.trust}: serial {store.serial}, "
                     f"{len(store.doc.keys)} key(s)\n")
    for k in store.doc.keys:
        state = "REVOKED" if k.revoked else "active"
        sys.stdout.write(f"  {k.key_id}  {k.name:<20} {k.role.value:<12} {state}\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="generate signing keys and sign/check the trust file")
    ks = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    g = ks.add_parser("generate", help="write a new Ed25519 private key (mode 0600)")
    g.add_argument("out", help="private key path (refuses to overwrite)")
    g.add_argument("--pub", help="also write the public key (hex) here")
    g.set_defaults(func=_generate)
    s = ks.add_parser("sign-trust", help="add a root signature to a trust file")
    s.add_argument("trust", help="trust.toml (signature goes to trust.toml.sig)")
    s.add_argument("--key", required=True, help="root private key")
    s.set_defaults(func=_sign_trust)
    c = ks.add_parser("check-trust", help="verify a trust file against pinned roots")
    c.add_argument("trust", help="trust.toml (its signatures are read from trust.toml.sig)")
    c.add_argument("--roots", required=True, help="roots.toml (threshold + root public keys)")
    c.set_defaults(func=_check_trust)
