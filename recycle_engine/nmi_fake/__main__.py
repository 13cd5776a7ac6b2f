"""`python -m recycle_engine.nmi_fake`: serve the NMI fake on loopback until interrupted."""

from __future__ import annotations

import argparse
import os
import sys

from recycle_engine.nmi_fake.server import make_server
from recycle_engine.nmi_fake.state import FakeNmi

KEY_ENV = "NMI_FAKE_SECURITY_KEY"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recycle_engine.nmi_fake", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--answer-delay-ms", type=int, default=0, help="hold each answer after charging")
    parser.add_argument("--default-code", default="100", help="response_code for vault ids not scripted")
    args = parser.parse_args(argv)
    key = os.environ.get(KEY_ENV)
    if not key:
        sys.stderr.write(f"set {KEY_ENV} to the security key the fake should accept\n")
        return 2
    fake = FakeNmi(key, answer_delay_s=args.answer_delay_ms / 1000, default_code=args.default_code)
    server = make_server(fake, args.host, args.port)
    sys.stderr.write(f"NMI fake on http://{args.host}:{server.server_address[1]}\n")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
