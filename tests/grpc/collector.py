"""A small OTLP/gRPC collector for the tests, from OpenTelemetry's own protos
(PyPI opentelemetry-proto) and grpcio: serves the trace and logs services
on a loopback port, prints the port on its first line, and appends every
export it receives to the file in argv[1] ("-": none, for benchmarks), one
JSON object a line:
{"signal": "traces"|"logs", "request": <the request as protobuf JSON>}.

argv[2], when given, is seconds to stall in each export before answering,
to play a collector that cannot keep up. It stops on stdin's end.
"""

import json
import sys
import threading
import time
from concurrent import futures

import grpc
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

LOCK = threading.Lock()


def dump(path, signal, request):
    if path == "-":
        return
    line = json.dumps(
        {"signal": signal, "request": json_format.MessageToDict(request)}
    )
    with LOCK, open(path, "a") as f:
        f.write(line + "\n")


class Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, path, stall):
        self.path, self.stall = path, stall

    def Export(self, request, context):
        time.sleep(self.stall)
        dump(self.path, "traces", request)
        return trace_service_pb2.ExportTraceServiceResponse()


class Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, path, stall):
        self.path, self.stall = path, stall

    def Export(self, request, context):
        time.sleep(self.stall)
        dump(self.path, "logs", request)
        return logs_service_pb2.ExportLogsServiceResponse()


def main():
    path = sys.argv[1]
    stall = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(path, stall), server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(path, stall), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    main()
