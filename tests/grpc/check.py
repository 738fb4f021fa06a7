"""Envoy's gRPC authorizer client, from Envoy's own protos (PyPI xds-protos)
and grpcio: reads a list of calls as JSON on stdin, makes each against the
address in argv[1], prints one JSON answer per call.

A call: {"http": {method, path, host, query, headers}} (absent: a Check
with no http attributes), "metadata": [[name, value], ...], "method": the
gRPC method path (default Envoy's v3 Check), "pad": bytes of padding in a
header, to exceed a size limit.
"""

import json
import sys

import grpc
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2

CHECK = "/envoy.service.auth.v3.Authorization/Check"


def request_of(call):
    req = external_auth_pb2.CheckRequest()
    http = call.get("http")
    if http is not None:
        h = req.attributes.request.http
        h.method = http.get("method", "GET")
        h.path = http.get("path", "/")
        h.host = http.get("host", "")
        h.query = http.get("query", "")
        for k, v in http.get("headers", {}).items():
            h.headers[k] = v
        if call.get("pad"):
            h.headers["x-pad"] = "p" * call["pad"]
    return req


def answer_of(resp):
    out = {"code": resp.status.code, "message": resp.status.message}
    kind = resp.WhichOneof("http_response")
    out["kind"] = kind
    if kind == "ok_response":
        headers = resp.ok_response.headers
    elif kind == "denied_response":
        headers = resp.denied_response.headers
        out["http_status"] = resp.denied_response.status.code
        out["body"] = resp.denied_response.body
    else:
        headers = []
    out["headers"] = {h.header.key: h.header.value for h in headers}
    return out


def main():
    calls = json.load(sys.stdin)
    with grpc.insecure_channel(sys.argv[1]) as channel:
        for call in calls:
            method = channel.unary_unary(
                call.get("method", CHECK),
                request_serializer=external_auth_pb2.CheckRequest.SerializeToString,
                response_deserializer=external_auth_pb2.CheckResponse.FromString,
            )
            try:
                resp = method(
                    request_of(call),
                    metadata=[tuple(m) for m in call.get("metadata", [])],
                    timeout=20,
                )
                print(json.dumps(answer_of(resp)), flush=True)
            except grpc.RpcError as e:
                print(json.dumps({"rpc_error": e.code().name, "details": e.details()}), flush=True)


if __name__ == "__main__":
    main()
