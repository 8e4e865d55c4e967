"""PASETO interop for the workspace token tests: pyseto (an independent
PASETO/PASERK implementation) mints and verifies version 2 tokens.

  paseto_interop.py mint SECRET_PASERK REPL REGION EXP_RFC3339
      prints a v4.public token with footer {"kid": <pyseto's PASERK id>}
  paseto_interop.py verify PUBLIC_PASERK TOKEN
      prints the payload (JSON) and footer (JSON) pyseto verified, one a line
  paseto_interop.py pid PUBLIC_PASERK
      prints pyseto's k4.pid of the key
"""
import json
import sys

import pyseto
from pyseto import Key


def main(argv):
    cmd = argv[1]
    if cmd == "mint":
        secret, repl, region, exp = argv[2:6]
        key = Key.from_paserk(secret)
        public = Key.from_paserk(public_of(secret))
        claims = {"repl": repl, "region": region, "exp": exp}
        footer = {"kid": public.to_paserk_id()}
        token = pyseto.encode(key, json.dumps(claims).encode(), footer=json.dumps(footer).encode())
        print(token.decode())
    elif cmd == "verify":
        public, token = argv[2:4]
        t = pyseto.decode(Key.from_paserk(public), token)
        print(t.payload.decode())
        print(t.footer.decode())
    elif cmd == "pid":
        print(Key.from_paserk(argv[2]).to_paserk_id())
    else:
        raise SystemExit(f"unknown command {cmd}")


def public_of(secret):
    """The k4.public PASERK of a k4.secret one (its last 32 bytes)."""
    import base64

    raw = base64.urlsafe_b64decode(secret[len("k4.secret."):] + "==")
    return "k4.public." + base64.urlsafe_b64encode(raw[32:]).decode().rstrip("=")


if __name__ == "__main__":
    main(sys.argv)
