"""The committed protobuf modules match their .proto sources."""

import importlib

import pytest
from google.protobuf import descriptor_pb2

from fedpeft.protos import generate


@pytest.mark.parametrize("proto", sorted(p.name for p in generate.HERE.glob("*.proto")))
def test_committed_module_matches_its_proto(proto, tmp_path):
    protoc = pytest.importorskip("grpc_tools.protoc")
    out = tmp_path / "set.pb"
    args = ["protoc", f"-Ifedpeft/protos={generate.HERE}", f"--descriptor_set_out={out}", f"fedpeft/protos/{proto}"]
    assert protoc.main(args) == 0
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    _drop_json_names(compiled.message_type)  # protoc strips these from Python modules
    committed = importlib.import_module(f"fedpeft.protos.{proto.removesuffix('.proto')}_pb2")
    assert descriptor_pb2.FileDescriptorProto.FromString(committed.DESCRIPTOR.serialized_pb) == compiled, (
        f"{proto}: committed module is stale; run python -m fedpeft.protos.generate")


def _drop_json_names(messages) -> None:
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _drop_json_names(message.nested_type)
