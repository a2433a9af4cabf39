#!/usr/bin/python3
"""Streams one completion from a running cluster and prints it as it arrives.

    /usr/bin/python3 clients/python/example.py [--server 127.0.0.1:50051] [--max-tokens 64] "ROMEO:"

Needs the generated protos: $MOE_PYTHON_PROTO_DIR, or build/python of this checkout.
"""

import argparse
import sys

import grpc

from moe_client import FINISH_REASONS, MoeClient


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prompt", nargs="?", default="ROMEO:")
    ap.add_argument("--server", default="127.0.0.1:50051")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    with MoeClient(args.server) as client:
        try:
            print(f"[{client.health()}] {', '.join(client.list_services())}", file=sys.stderr)
            sys.stdout.write(args.prompt)
            finish, usage = "", None
            for chunk in client.generate(args.prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                                         seed=args.seed):
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
                if chunk.finish_reason:
                    finish, usage = chunk.finish_reason, chunk.usage
            print()
            print(f"[finish_reason: {FINISH_REASONS[finish]}, {usage.prompt_tokens} prompt + "
                  f"{usage.completion_tokens} completion tokens]", file=sys.stderr)
        except grpc.RpcError as e:
            print(f"example: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
