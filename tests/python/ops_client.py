"""Clients we did not write, for operations: Python's grpcio-health-checking
and grpcio-reflection, with default channel options, over a unix: target.

It checks health for the whole daemon and for every service reflection
lists, describes every method of every service through reflection alone
(no .proto files), calls one method built from those descriptors, and then
watches the daemon's health until the stream ends, printing each status.
One line per check; any failure raises and exits non-zero.

Usage: ops_client.py SOCKET
"""

import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

socket_path = sys.argv[1]
channel = grpc.insecure_channel(f"unix://{socket_path}")
health = health_pb2_grpc.HealthStub(channel)

status = health.Check(health_pb2.HealthCheckRequest(service="")).status
assert status == health_pb2.HealthCheckResponse.SERVING, status
print("health: SERVING")

try:
    health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    raise AssertionError("an unknown service was answered")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.NOT_FOUND, e
print("health: unknown service is NOT_FOUND")

database = ProtoReflectionDescriptorDatabase(channel)
pool = descriptor_pool.DescriptorPool(database)
services = sorted(database.get_services())
print("services:", " ".join(services))
methods = 0
for name in services:
    service = pool.FindServiceByName(name)
    for method in service.methods:
        # Every message a method names is described, field by field.
        for message in (method.input_type, method.output_type):
            assert message.full_name, method.full_name
            [field.name for field in message.fields]
        print("method:", f"{name}/{method.name}")
        methods += 1
    if not name.startswith("grpc.reflection."):
        answer = health.Check(health_pb2.HealthCheckRequest(service=name)).status
        assert answer == health_pb2.HealthCheckResponse.SERVING, (name, answer)
print(f"reflection: {len(services)} services, {methods} methods described")

# Reflection v1 too: its messages are v1alpha's, field for field, so the
# v1alpha classes ask it.
from grpc_reflection.v1alpha import reflection_pb2

v1 = channel.stream_stream(
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
    response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
)
answers = list(v1(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
v1_services = sorted(s.name for s in answers[0].list_services_response.service)
assert v1_services == services, (v1_services, services)
print("reflection v1: the same services")

# A call made from reflected descriptors only.
version = pool.FindServiceByName("containerd.services.version.v1.Version").methods_by_name["Version"]
request_class = message_factory.GetMessageClass(version.input_type)
response_class = message_factory.GetMessageClass(version.output_type)
call = channel.unary_unary(
    "/containerd.services.version.v1.Version/Version",
    request_serializer=request_class.SerializeToString,
    response_deserializer=response_class.FromString,
)
answer = call(request_class())
assert answer.version, answer
print("reflected call: version", answer.version)

# Watch until the daemon stops: SERVING, then NOT_SERVING, then the end.
print("watching", flush=True)
seen = []
for response in health.Watch(health_pb2.HealthCheckRequest(service="")):
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    seen.append(name)
    print("watch:", name, flush=True)
assert seen[0] == "SERVING" and seen[-1] == "NOT_SERVING", seen
print("all ok")
