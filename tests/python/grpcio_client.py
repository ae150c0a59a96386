"""A client we did not write: Python grpcio (grpc's C core), with default
channel options, over a unix: target. It exercises the seed API and
containerd's images and namespaces services against a running imaged and
prints one line per check; any failure raises and exits non-zero.

Usage: grpcio_client.py SOCKET PROTO_DIR OUT_DIR
"""

import importlib
import os
import sys

import grpc
from grpc_tools import protoc

socket_path, proto_dir, out_dir = sys.argv[1:4]
protos = [
    "containerd/types/descriptor.proto",
    "containerd/v1/images.proto",
    "containerd/services/images/v1/images.proto",
    "containerd/services/namespaces/v1/namespace.proto",
]
include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
for proto in protos:
    code = protoc.main(["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", proto])
    assert code == 0, f"protoc failed on {proto}"
sys.path.insert(0, out_dir)
seed = importlib.import_module("containerd.v1.images_pb2")
seed_grpc = importlib.import_module("containerd.v1.images_pb2_grpc")
types = importlib.import_module("containerd.types.descriptor_pb2")
ctrd = importlib.import_module("containerd.services.images.v1.images_pb2")
ctrd_grpc = importlib.import_module("containerd.services.images.v1.images_pb2_grpc")
ns_pb = importlib.import_module("containerd.services.namespaces.v1.namespace_pb2")
ns_grpc = importlib.import_module("containerd.services.namespaces.v1.namespace_pb2_grpc")

# Default options: the channel sends the percent-encoded socket path as
# :authority, which imaged must accept.
channel = grpc.insecure_channel(f"unix://{socket_path}")
images = seed_grpc.ImagesStub(channel)
in_ns = [("containerd-namespace", "python")]


def target(n):
    return types.Descriptor(
        media_type="application/vnd.oci.image.manifest.v1+json",
        digest="sha256:" + f"{n:064x}",
        size=100 + n,
    )


for n in range(1, 26):
    image = seed.Image(name=f"docker.io/library/py{n:02}:latest", target=target(n), labels={"n": str(n)})
    images.Put(seed.PutRequest(image=image), metadata=in_ns)
print("put 25")

got = images.Get(seed.GetRequest(name="docker.io/library/py07:latest"), metadata=in_ns).image
assert got.name == "docker.io/library/py07:latest" and got.target.size == 107, got
print("get ok")

listed = images.List(seed.ListRequest(filters=['labels."n"==3']), metadata=in_ns)
assert [i.name for i in listed.images] == ["docker.io/library/py03:latest"], listed
print("list with a filter ok")

page = images.List(seed.ListRequest(page_size=10), metadata=in_ns)
assert len(page.images) == 10 and page.next_page_token, page
print("page ok")

streamed = [i.name for batch in images.ListStream(seed.ListRequest(page_size=7), metadata=in_ns) for i in batch.images]
assert len(streamed) == 25 and streamed == sorted(streamed), streamed
print("stream ok")

try:
    images.Get(seed.GetRequest(name="docker.io/library/missing:1"), metadata=in_ns)
    raise AssertionError("a missing image was found")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.NOT_FOUND, e
print("not found ok")

try:
    images.Put(seed.PutRequest(image=seed.Image(name="", target=target(1))), metadata=in_ns)
    raise AssertionError("an empty name was taken")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "name" in e.details(), e
print("invalid argument ok")

images.Delete(seed.DeleteRequest(name="docker.io/library/py01:latest"), metadata=in_ns)
print("delete ok")

pinned = seed.Image(name="docker.io/library/py02:latest", target=target(2), protected=True)
images.Put(seed.PutRequest(image=pinned), metadata=in_ns)
got = images.Get(seed.GetRequest(name=pinned.name), metadata=in_ns).image
assert got.HasField("protected") and got.protected and got.labels["io.cri-containerd.pinned"] == "pinned", got
try:
    images.Delete(seed.DeleteRequest(name=pinned.name), metadata=in_ns)
    raise AssertionError("a protected image was deleted")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "protected" in e.details(), e
images.Put(seed.PutRequest(image=seed.Image(name=pinned.name, target=target(2), protected=False)), metadata=in_ns)
assert not images.Get(seed.GetRequest(name=pinned.name), metadata=in_ns).image.HasField("protected")
print("protection ok")

# Repositories: one of them gains a tag, a walk in pages of 5 sees each
# once and in order, and a filter on the count finds it.
images.Put(seed.PutRequest(image=seed.Image(name="docker.io/library/py03:2", target=target(3))), metadata=in_ns)
walked, token = [], ""
while True:
    page = images.ListRepositories(seed.ListRepositoriesRequest(page_size=5, page_token=token), metadata=in_ns)
    assert len(page.repositories) <= 5 and page.revision > 0, page
    walked.extend(page.repositories)
    token = page.next_page_token
    if not token:
        break
names = [r.name for r in walked]
assert len(names) == 24 and names == sorted(set(names)), names
py03 = [r for r in walked if r.name == "docker.io/library/py03"][0]
assert py03.tags == 2 and py03.newest == "docker.io/library/py03:2" and py03.HasField("updated_at"), py03
counted = images.ListRepositories(seed.ListRepositoriesRequest(filters=["tags>=2"]), metadata=in_ns)
assert [r.name for r in counted.repositories] == ["docker.io/library/py03"], counted
one = images.List(seed.ListRequest(filters=['repository=="docker.io/library/py03"']), metadata=in_ns)
assert [i.name for i in one.images] == ["docker.io/library/py03:2", "docker.io/library/py03:latest"], one
try:
    images.ListRepositories(seed.ListRepositoriesRequest(order_by="tags"), metadata=in_ns)
    raise AssertionError("an order by tags was taken")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "order_by" in e.details(), e
images.Delete(seed.DeleteRequest(name="docker.io/library/py03:2"), metadata=in_ns)
print("repositories ok")

containerd = ctrd_grpc.ImagesStub(channel)
made = containerd.Create(
    ctrd.CreateImageRequest(image=ctrd.Image(name="docker.io/library/ctrd:1", target=target(99))), metadata=in_ns
)
assert made.image.name == "docker.io/library/ctrd:1", made
assert len(containerd.List(ctrd.ListImagesRequest(), metadata=in_ns).images) == 25
print("containerd images ok")

namespaces = ns_grpc.NamespacesStub(channel)
names = [n.name for n in namespaces.List(ns_pb.ListNamespacesRequest()).namespaces]
assert "python" in names, names
print("namespaces ok")
print("all ok")
