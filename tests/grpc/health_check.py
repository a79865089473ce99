"""Calls grpc.health.v1.Health/Check CALLS times on 127.0.0.1:PORT with
Python's grpcio and prints, per call, its status code, message and metadata
(initial and trailing, merged) as a JSON list: the second gRPC
implementation that tests/tests/grpc.rs checks the rate limiter's answers
against. Run with the venv scripts/test.sh makes (grpcio,
grpcio-health-checking).

Usage: python health_check.py PORT CALLS
"""

import json
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def metadata(*parts):
    merged = {}
    for part in parts:
        for key, value in part or ():
            merged[key] = value
    return merged


def main():
    port, calls = int(sys.argv[1]), int(sys.argv[2])
    results = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(calls):
            try:
                _, call = stub.Check.with_call(health_pb2.HealthCheckRequest(), timeout=10)
                results.append(
                    {
                        "code": call.code().name,
                        "details": call.details() or "",
                        "metadata": metadata(call.initial_metadata(), call.trailing_metadata()),
                    }
                )
            except grpc.RpcError as err:
                results.append(
                    {
                        "code": err.code().name,
                        "details": err.details() or "",
                        "metadata": metadata(err.initial_metadata(), err.trailing_metadata()),
                    }
                )
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
