"""Requests protobuf cannot parse, sent as hand-built wire bytes: every RPC of ModelService and
InferenceService answers INVALID_ARGUMENT naming the field (not gRPC's bare UNIMPLEMENTED, which
clients read as "this server lacks the RPC"). The cases come from the proto descriptors, so a new
RPC or string field is covered without editing this file."""

import grpc
import pytest

from conftest import requires_kbitd

pytestmark = requires_kbitd

BAD_UTF8 = b"\xff\xfe"
# Field 1 announces 5 bytes but the message ends after 2.
TRUNCATED = b"\x0a\x05ab"


def varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def length_delimited(number, payload):
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def bad_string_cases(message, prefix=None, depth=0):
    """(name protobuf's C++ parser should report, wire bytes) for every string field reachable from
    `message`: the field holds invalid UTF-8; a repeated one has a valid element before it."""
    from google.protobuf.descriptor import FieldDescriptor

    prefix = prefix or message.full_name
    for field in message.fields:
        index = "[0]" if field.is_repeated else ""
        if field.type == FieldDescriptor.TYPE_STRING:
            if field.is_repeated:
                yield (f"{prefix}.{field.name}[1]",
                       length_delimited(field.number, b"ok") +
                       length_delimited(field.number, BAD_UTF8))
            else:
                yield f"{prefix}.{field.name}", length_delimited(field.number, BAD_UTF8)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and depth < 4:
            for name, inner in bad_string_cases(field.message_type,
                                                f"{prefix}.{field.name}{index}", depth + 1):
                yield name, length_delimited(field.number, inner)


def rpcs(pb):
    for module in (pb.model, pb.inference):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                yield service, method


def call_raw(daemon, service, method, payload):
    """Sends `payload` as the request bytes; returns (code, details)."""
    path = f"/{service.full_name}/{method.name}"
    kwargs = dict(request_serializer=lambda raw: raw, response_deserializer=lambda raw: raw)
    try:
        if method.server_streaming:
            list(daemon.channel.unary_stream(path, **kwargs)(payload, metadata=daemon.admin(),
                                                             timeout=30))
        else:
            daemon.channel.unary_unary(path, **kwargs)(payload, metadata=daemon.admin(),
                                                       timeout=30)
    except grpc.RpcError as e:
        return e.code(), e.details()
    return grpc.StatusCode.OK, ""


def test_invalid_utf8_in_every_string_field_is_named(daemon):
    failures, checked = [], 0
    for service, method in rpcs(daemon.pb):
        for name, payload in bad_string_cases(method.input_type):
            code, details = call_raw(daemon, service, method, payload)
            checked += 1
            if code != grpc.StatusCode.INVALID_ARGUMENT or \
                    f"field {name} is not valid UTF-8" not in details:
                failures.append(f"{method.full_name} {name}: {code} {details!r}")
    assert checked >= 15, checked  # every request type with a string field, nested ones too
    assert not failures, "\n".join(failures)


def test_malformed_request_of_every_rpc_is_invalid_argument(daemon):
    failures = []
    for service, method in rpcs(daemon.pb):
        code, details = call_raw(daemon, service, method, TRUNCATED)
        if code != grpc.StatusCode.INVALID_ARGUMENT or \
                f"{method.input_type.full_name} could not be parsed" not in details:
            failures.append(f"{method.full_name}: {code} {details!r}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("payload,expected", [
    (length_delimited(1, b"tiny") + length_delimited(2, b"hi") + length_delimited(6, b"\n") +
     length_delimited(6, b"ab" + BAD_UTF8), "field kbitd.v1.GenerateRequest.stop[1] is not valid"),
    (length_delimited(1, b"ti" + BAD_UTF8) + length_delimited(2, b"hi"),
     "field kbitd.v1.GenerateRequest.model is not valid UTF-8 (byte 0xff at offset 2)"),
    (length_delimited(1, b"tiny") + length_delimited(5, TRUNCATED),
     "field kbitd.v1.GenerateRequest.sampling is not a valid kbitd.v1.SamplingParams message"),
], ids=["stop[1]", "model", "nested malformed"])
def test_generate_names_the_bad_field_and_keeps_serving(daemon, payload, expected):
    service = daemon.pb.inference.DESCRIPTOR.services_by_name["InferenceService"]
    code, details = call_raw(daemon, service, service.methods_by_name["Generate"], payload)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and expected in details, (code, details)
    # The same request with valid text still works.
    valid = length_delimited(1, b"tiny") + length_delimited(2, b"hi") + b"\x20\x02"
    assert call_raw(daemon, service, service.methods_by_name["Generate"], valid)[0] == \
        grpc.StatusCode.OK


def test_health_service_refuses_invalid_utf8_without_unimplemented(daemon):
    """grpc.health.v1 is gRPC's own service (raw handlers that parse the request themselves): Check
    answers INVALID_ARGUMENT, Watch INTERNAL (gRPC 1.51), both "could not parse request"."""
    from grpc_health.v1 import health_pb2

    service = health_pb2.DESCRIPTOR.services_by_name["Health"]
    code, details = call_raw(daemon, service, service.methods_by_name["Check"],
                             length_delimited(1, BAD_UTF8))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "could not parse" in details, details
    code, details = call_raw(daemon, service, service.methods_by_name["Watch"],
                             length_delimited(1, BAD_UTF8))
    assert code not in (grpc.StatusCode.OK, grpc.StatusCode.UNIMPLEMENTED), (code, details)
