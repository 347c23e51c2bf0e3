"""Unit tests of manifest_service.media_types: reading pushed manifests."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from manifest_service.media_types import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    ParsedManifest,
    parse,
)
from shared.errors import ErrorCode, RegistryError

CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_TYPE = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_NONDISTRIBUTABLE_TYPE = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
SIGNATURE_TYPE = "application/vnd.example.signature.v1"

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64
D4 = "sha512:" + "4" * 128
D5 = "sha256:" + "5" * 64


def _descriptor(media_type: str, digest: str, size: int) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": size}


def oci_manifest(**extra: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _descriptor(CONFIG_TYPE, D1, 10),
        "layers": [_descriptor(LAYER_TYPE, D2, 20), _descriptor(LAYER_TYPE, D4, 40)],
    }
    document.update(extra)
    return document


def oci_index(**extra: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {**_descriptor(OCI_MANIFEST, D1, 100), "platform": {"os": "linux"}},
            _descriptor(DOCKER_MANIFEST, D2, 200),
        ],
    }
    document.update(extra)
    return document


def encode(document: Any) -> bytes:
    return json.dumps(document).encode()


def invalid(body: bytes, content_type: str | None = None) -> RegistryError:
    with pytest.raises(RegistryError) as info:
        parse(body, content_type)
    return info.value


def assert_manifest_invalid(body: bytes, content_type: str | None = None) -> None:
    error = invalid(body, content_type)
    assert error.code is ErrorCode.MANIFEST_INVALID
    assert error.status == 400


EXPECTED_OCI_BLOBS = [
    Descriptor(CONFIG_TYPE, D1, 10),
    Descriptor(LAYER_TYPE, D2, 20),
    Descriptor(LAYER_TYPE, D4, 40),
]
EXPECTED_INDEX_CHILDREN = [Descriptor(OCI_MANIFEST, D1, 100), Descriptor(DOCKER_MANIFEST, D2, 200)]


# --- accepted manifests -----------------------------------------------------------------------


def test_oci_manifest() -> None:
    assert parse(encode(oci_manifest()), OCI_MANIFEST) == ParsedManifest(
        media_type=OCI_MANIFEST,
        blobs=EXPECTED_OCI_BLOBS,
        manifests=[],
        subject=None,
        artifact_type=CONFIG_TYPE,
        annotations=None,
    )


def test_unknown_fields_and_nulls_are_accepted() -> None:
    document = oci_manifest(
        annotations=None,
        subject=None,
        artifactType=None,
        unknownField={"nested": [1, None, "x"]},
        another=None,
    )
    document["config"].update(urls=None, annotations=None, data=None, extra={"a": None})
    document["layers"][0].update(urls=None, annotations=None, platform=None, whatever=7)
    assert parse(encode(document), OCI_MANIFEST) == ParsedManifest(
        media_type=OCI_MANIFEST,
        blobs=EXPECTED_OCI_BLOBS,
        manifests=[],
        subject=None,
        artifact_type=CONFIG_TYPE,
        annotations=None,
    )


def test_index_with_unknown_fields_and_nulls_is_accepted() -> None:
    document = oci_index(annotations=None, subject=None, artifactType=None, extra=[None])
    document["manifests"][1].update(platform=None, annotations=None, future={"x": 1})
    parsed = parse(encode(document), OCI_INDEX)
    assert parsed == ParsedManifest(
        media_type=OCI_INDEX,
        blobs=[],
        manifests=EXPECTED_INDEX_CHILDREN,
        subject=None,
        artifact_type=None,
        annotations=None,
    )


def test_layers_may_be_absent() -> None:
    document = oci_manifest()
    del document["layers"]
    assert parse(encode(document), None).blobs == [Descriptor(CONFIG_TYPE, D1, 10)]


def test_empty_layers_and_empty_index() -> None:
    assert parse(encode(oci_manifest(layers=[])), None).blobs == [Descriptor(CONFIG_TYPE, D1, 10)]
    parsed = parse(encode(oci_index(manifests=[])), None)
    assert parsed.manifests == []
    assert parsed.media_type == OCI_INDEX


def test_null_layers_are_no_layers() -> None:
    assert parse(encode(oci_manifest(layers=None)), None).blobs == [Descriptor(CONFIG_TYPE, D1, 10)]


def test_null_manifests_are_an_empty_index() -> None:
    assert parse(encode(oci_index(manifests=None)), OCI_INDEX).manifests == []


def test_docker_manifest() -> None:
    document = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": _descriptor(DOCKER_CONFIG_TYPE, D1, 1),
        "layers": [_descriptor(DOCKER_LAYER_TYPE, D2, 2)],
    }
    assert parse(encode(document), DOCKER_MANIFEST) == ParsedManifest(
        media_type=DOCKER_MANIFEST,
        blobs=[Descriptor(DOCKER_CONFIG_TYPE, D1, 1), Descriptor(DOCKER_LAYER_TYPE, D2, 2)],
        artifact_type=DOCKER_CONFIG_TYPE,
    )


def test_docker_manifest_list() -> None:
    document = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST_LIST,
        "manifests": [_descriptor(DOCKER_MANIFEST, D3, 3)],
    }
    assert parse(encode(document), DOCKER_MANIFEST_LIST) == ParsedManifest(
        media_type=DOCKER_MANIFEST_LIST,
        manifests=[Descriptor(DOCKER_MANIFEST, D3, 3)],
        artifact_type=None,
    )


def test_zero_sized_descriptor_is_accepted() -> None:
    document = oci_manifest(layers=[_descriptor(LAYER_TYPE, D2, 0)])
    assert parse(encode(document), None).blobs[1] == Descriptor(LAYER_TYPE, D2, 0)


def test_the_largest_int64_size_is_accepted() -> None:
    # The image spec's sizes are int64; one more is no size (refused with the bad descriptors).
    largest = 2**63 - 1
    document = oci_manifest(layers=[_descriptor(LAYER_TYPE, D2, largest)])
    assert parse(encode(document), None).blobs[1] == Descriptor(LAYER_TYPE, D2, largest)


def test_annotations_are_extracted() -> None:
    annotations = {"org.opencontainers.image.created": "2024-01-01T00:00:00Z", "a": ""}
    assert parse(encode(oci_manifest(annotations=annotations)), None).annotations == annotations
    assert parse(encode(oci_index(annotations=annotations)), None).annotations == annotations


# --- media type -------------------------------------------------------------------------------


def test_missing_media_type_is_inferred_as_image_manifest() -> None:
    document = oci_manifest()
    del document["mediaType"]
    parsed = parse(encode(document), None)
    assert parsed.media_type == OCI_MANIFEST
    assert parsed.blobs == EXPECTED_OCI_BLOBS


def test_missing_media_type_is_inferred_as_index() -> None:
    document = oci_index()
    del document["mediaType"]
    parsed = parse(encode(document), None)
    assert parsed.media_type == OCI_INDEX
    assert parsed.manifests == EXPECTED_INDEX_CHILDREN


def test_null_media_type_is_inferred() -> None:
    assert parse(encode(oci_manifest(mediaType=None)), None).media_type == OCI_MANIFEST
    assert parse(encode(oci_index(mediaType=None)), None).media_type == OCI_INDEX


@pytest.mark.parametrize("content_type", [OCI_MANIFEST, DOCKER_MANIFEST])
def test_missing_media_type_takes_the_content_type(content_type: str) -> None:
    document = oci_manifest()
    del document["mediaType"]
    assert parse(encode(document), content_type).media_type == content_type


def test_content_type_without_media_type_decides_the_kind() -> None:
    # An image manifest pushed as an index is read as an index, which it is not.
    document = oci_manifest()
    del document["mediaType"]
    assert_manifest_invalid(encode(document), OCI_INDEX)


def test_media_type_without_content_type() -> None:
    assert parse(encode(oci_manifest()), None).media_type == OCI_MANIFEST
    assert parse(encode(oci_manifest()), "").media_type == OCI_MANIFEST


@pytest.mark.parametrize(
    "content_type",
    [
        OCI_MANIFEST + "; charset=utf-8",
        OCI_MANIFEST.upper(),
        "  " + OCI_MANIFEST + "  ",
        "Application/Vnd.Oci.Image.Manifest.V1+Json;q=1",
    ],
)
def test_content_type_parameters_and_case_are_ignored(content_type: str) -> None:
    assert parse(encode(oci_manifest()), content_type).media_type == OCI_MANIFEST


@pytest.mark.parametrize(
    ("document", "content_type"),
    [
        (oci_manifest(), OCI_INDEX),
        (oci_manifest(), DOCKER_MANIFEST),
        (oci_index(), OCI_MANIFEST),
        (oci_index(), DOCKER_MANIFEST_LIST),
        (oci_manifest(mediaType=DOCKER_MANIFEST), OCI_MANIFEST),
    ],
)
def test_content_type_media_type_mismatch(document: dict[str, Any], content_type: str) -> None:
    error = invalid(encode(document), content_type)
    assert error.code is ErrorCode.MANIFEST_INVALID
    assert error.status == 400
    assert error.detail is not None
    assert "does not match" in error.detail


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/octet-stream",
        "text/plain",
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.oci.artifact.manifest.v1+json",
        "x",
    ],
)
def test_unsupported_content_type_is_415(content_type: str) -> None:
    error = invalid(encode(oci_manifest()), content_type)
    assert error.code is ErrorCode.MANIFEST_INVALID
    assert error.status == 415


@pytest.mark.parametrize(
    "media_type",
    [
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.oci.artifact.manifest.v1+json",
        "application/json",
    ],
)
def test_unsupported_media_type_without_content_type_is_415(media_type: str) -> None:
    error = invalid(encode(oci_manifest(mediaType=media_type)), None)
    assert error.code is ErrorCode.MANIFEST_INVALID
    assert error.status == 415


@pytest.mark.parametrize("media_type", [1, True, [], {}, [OCI_MANIFEST]])
def test_non_string_media_type(media_type: Any) -> None:
    assert_manifest_invalid(encode(oci_manifest(mediaType=media_type)), OCI_MANIFEST)


# --- refused documents ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b" ",
        b"{",
        b"{'schemaVersion': 2}",
        b'{"schemaVersion": 2,}',
        b"\xff\xfe\xfd",
        b"\x80abc",
        b"nul",
        encode(oci_manifest()) + b"x",
    ],
)
def test_invalid_json(body: bytes) -> None:
    assert_manifest_invalid(body, OCI_MANIFEST)
    assert_manifest_invalid(body, None)


@pytest.mark.parametrize("body", [b"[]", b"null", b"2", b'"manifest"', b"true", b"[{}]", b"1.5"])
def test_json_that_is_not_an_object(body: bytes) -> None:
    assert_manifest_invalid(body, OCI_MANIFEST)
    assert_manifest_invalid(body, None)


@pytest.mark.parametrize("version", [None, 1, 3, 0, -2, "2", True, [2], {"v": 2}])
@pytest.mark.parametrize("builder", [oci_manifest, oci_index])
def test_schema_version_must_be_2(version: Any, builder: Any) -> None:
    assert_manifest_invalid(encode(builder(schemaVersion=version)), None)


@pytest.mark.parametrize("builder", [oci_manifest, oci_index])
def test_schema_version_is_required(builder: Any) -> None:
    document = builder()
    del document["schemaVersion"]
    assert_manifest_invalid(encode(document), None)


def test_schema_version_must_be_an_integer() -> None:
    assert_manifest_invalid(b'{"schemaVersion": 2.0, "manifests": []}', OCI_INDEX)


BAD_DESCRIPTORS: list[Any] = [
    None,
    "sha256:" + "1" * 64,
    [],
    42,
    {},
    {"digest": D1, "size": 1},
    {"mediaType": "", "digest": D1, "size": 1},
    {"mediaType": None, "digest": D1, "size": 1},
    {"mediaType": 7, "digest": D1, "size": 1},
    {"mediaType": LAYER_TYPE, "size": 1},
    {"mediaType": LAYER_TYPE, "digest": None, "size": 1},
    {"mediaType": LAYER_TYPE, "digest": 7, "size": 1},
    {"mediaType": LAYER_TYPE, "digest": "", "size": 1},
    {"mediaType": LAYER_TYPE, "digest": "sha256:" + "1" * 63, "size": 1},
    {"mediaType": LAYER_TYPE, "digest": "sha256:" + "1" * 65, "size": 1},
    {"mediaType": LAYER_TYPE, "digest": "sha256:" + "A" * 64, "size": 1},
    {"mediaType": LAYER_TYPE, "digest": "sha512:" + "1" * 64, "size": 1},
    {"mediaType": LAYER_TYPE, "digest": "md5:" + "1" * 32, "size": 1},
    {"mediaType": LAYER_TYPE, "digest": "1" * 64, "size": 1},
    {"mediaType": LAYER_TYPE, "digest": D1},
    {"mediaType": LAYER_TYPE, "digest": D1, "size": None},
    {"mediaType": LAYER_TYPE, "digest": D1, "size": -1},
    {"mediaType": LAYER_TYPE, "digest": D1, "size": 2**63},
    {"mediaType": LAYER_TYPE, "digest": D1, "size": 10**40},
    {"mediaType": LAYER_TYPE, "digest": D1, "size": -(2**63) - 1},
    {"mediaType": LAYER_TYPE, "digest": D1, "size": "1"},
    {"mediaType": LAYER_TYPE, "digest": D1, "size": 1.5},
    {"mediaType": LAYER_TYPE, "digest": D1, "size": 1.0},
    {"mediaType": LAYER_TYPE, "digest": D1, "size": True},
    {"mediaType": LAYER_TYPE, "digest": D1, "size": False},
    {"mediaType": LAYER_TYPE, "digest": D1, "size": [1]},
]


@pytest.mark.parametrize("descriptor", BAD_DESCRIPTORS)
def test_bad_config(descriptor: Any) -> None:
    assert_manifest_invalid(encode(oci_manifest(config=descriptor)), OCI_MANIFEST)


@pytest.mark.parametrize("descriptor", BAD_DESCRIPTORS)
def test_bad_layer(descriptor: Any) -> None:
    document = oci_manifest()
    document["layers"].append(descriptor)
    assert_manifest_invalid(encode(document), OCI_MANIFEST)


@pytest.mark.parametrize("descriptor", BAD_DESCRIPTORS)
def test_bad_index_child(descriptor: Any) -> None:
    document = oci_index()
    document["manifests"].insert(0, descriptor)
    assert_manifest_invalid(encode(document), OCI_INDEX)


@pytest.mark.parametrize("descriptor", [d for d in BAD_DESCRIPTORS if d is not None])
@pytest.mark.parametrize("builder", [oci_manifest, oci_index])
def test_bad_subject(descriptor: Any, builder: Any) -> None:
    assert_manifest_invalid(encode(builder(subject=descriptor)), None)


def test_bad_foreign_layer_is_still_checked() -> None:
    document = oci_manifest()
    document["layers"].append(_descriptor(DOCKER_FOREIGN_TYPE, "sha256:xyz", 1))
    assert_manifest_invalid(encode(document), OCI_MANIFEST)


def test_image_manifest_needs_a_config() -> None:
    document = oci_manifest()
    del document["config"]
    assert_manifest_invalid(encode(document), OCI_MANIFEST)


@pytest.mark.parametrize("layers", [{}, "layers", 1, {"0": _descriptor(LAYER_TYPE, D2, 2)}])
def test_layers_must_be_a_list(layers: Any) -> None:
    assert_manifest_invalid(encode(oci_manifest(layers=layers)), OCI_MANIFEST)


@pytest.mark.parametrize("manifests", [{}, "manifests", 1])
def test_index_manifests_must_be_a_list(manifests: Any) -> None:
    assert_manifest_invalid(encode(oci_index(manifests=manifests)), OCI_INDEX)


def test_index_needs_manifests() -> None:
    document = oci_index()
    del document["manifests"]
    assert_manifest_invalid(encode(document), OCI_INDEX)


@pytest.mark.parametrize(
    "annotations", [[], "a", 1, {"a": 1}, {"a": None}, {"a": ["b"]}, {"a": {"b": "c"}}]
)
@pytest.mark.parametrize("builder", [oci_manifest, oci_index])
def test_annotations_must_map_strings_to_strings(annotations: Any, builder: Any) -> None:
    assert_manifest_invalid(encode(builder(annotations=annotations)), None)


@pytest.mark.parametrize("artifact_type", [1, True, ["a"], {"a": "b"}])
@pytest.mark.parametrize("builder", [oci_manifest, oci_index])
def test_artifact_type_must_be_a_string(artifact_type: Any, builder: Any) -> None:
    assert_manifest_invalid(encode(builder(artifactType=artifact_type)), None)


@pytest.mark.parametrize("artifact_type", [False, 0, [], {}])
def test_falsy_non_string_artifact_type_is_refused(artifact_type: Any) -> None:
    assert_manifest_invalid(encode(oci_manifest(artifactType=artifact_type)), OCI_MANIFEST)


@pytest.mark.parametrize("artifact_type", [False, 0, [], {}])
def test_falsy_non_string_artifact_type_is_refused_in_an_index(artifact_type: Any) -> None:
    assert_manifest_invalid(encode(oci_index(artifactType=artifact_type)), OCI_INDEX)


# --- subject and artifactType -----------------------------------------------------------------


def test_subject_and_artifact_type_of_an_image_manifest() -> None:
    subject = {**_descriptor(OCI_MANIFEST, D3, 300), "annotations": {"x": "y"}}
    document = oci_manifest(subject=subject, artifactType=SIGNATURE_TYPE)
    parsed = parse(encode(document), OCI_MANIFEST)
    assert parsed.subject == Descriptor(OCI_MANIFEST, D3, 300)
    assert parsed.artifact_type == SIGNATURE_TYPE
    assert parsed.blobs == EXPECTED_OCI_BLOBS


def test_subject_and_artifact_type_of_an_index() -> None:
    subject = _descriptor(OCI_INDEX, D4, 400)
    document = oci_index(subject=subject, artifactType=SIGNATURE_TYPE)
    parsed = parse(encode(document), OCI_INDEX)
    assert parsed.subject == Descriptor(OCI_INDEX, D4, 400)
    assert parsed.artifact_type == SIGNATURE_TYPE
    assert parsed.manifests == EXPECTED_INDEX_CHILDREN
    assert parsed.blobs == []


def test_subject_is_not_a_required_blob() -> None:
    parsed = parse(encode(oci_manifest(subject=_descriptor(OCI_MANIFEST, D3, 3))), None)
    assert Descriptor(OCI_MANIFEST, D3, 3) not in parsed.blobs
    assert parsed.manifests == []


@pytest.mark.parametrize("artifact_type", [None, ""])
def test_artifact_type_falls_back_to_the_config_media_type(artifact_type: str | None) -> None:
    document = oci_manifest(artifactType=artifact_type)
    document["config"]["mediaType"] = SIGNATURE_TYPE
    assert parse(encode(document), None).artifact_type == SIGNATURE_TYPE


def test_artifact_type_falls_back_when_absent() -> None:
    assert parse(encode(oci_manifest()), None).artifact_type == CONFIG_TYPE


def test_index_without_artifact_type_has_none() -> None:
    assert parse(encode(oci_index()), None).artifact_type is None
    assert parse(encode(oci_index(artifactType=None)), None).artifact_type is None


# --- foreign layers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "foreign",
    [
        DOCKER_FOREIGN_TYPE,
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        OCI_NONDISTRIBUTABLE_TYPE,
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    ],
)
def test_foreign_layers_are_not_required_blobs(foreign: str) -> None:
    document = oci_manifest()
    document["layers"] = [
        _descriptor(foreign, D3, 30),
        _descriptor(LAYER_TYPE, D2, 20),
        {**_descriptor(foreign, D5, 50), "urls": ["https://example.com/layer"]},
        _descriptor(LAYER_TYPE, D4, 40),
    ]
    assert parse(encode(document), OCI_MANIFEST).blobs == EXPECTED_OCI_BLOBS


def test_docker_foreign_layer_in_a_docker_manifest() -> None:
    document = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": _descriptor(DOCKER_CONFIG_TYPE, D1, 1),
        "layers": [
            _descriptor(DOCKER_FOREIGN_TYPE, D2, 2),
            _descriptor(DOCKER_LAYER_TYPE, D3, 3),
        ],
    }
    assert parse(encode(document), DOCKER_MANIFEST).blobs == [
        Descriptor(DOCKER_CONFIG_TYPE, D1, 1),
        Descriptor(DOCKER_LAYER_TYPE, D3, 3),
    ]


# --- robustness -------------------------------------------------------------------------------

content_types = st.none() | st.sampled_from(
    [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, "", "application/json"]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


def _only_registry_errors(body: bytes, content_type: str | None) -> None:
    try:
        parsed = parse(body, content_type)
    except RegistryError as error:
        assert error.code is ErrorCode.MANIFEST_INVALID
        assert error.status in (400, 415)
        return
    assert isinstance(parsed, ParsedManifest)


@given(st.binary(max_size=512), content_types | st.text(max_size=20))
def test_arbitrary_bytes_raise_only_registry_errors(body: bytes, content_type: str | None) -> None:
    _only_registry_errors(body, content_type)


@given(json_values, content_types)
def test_arbitrary_json_raises_only_registry_errors(
    document: Any, content_type: str | None
) -> None:
    _only_registry_errors(encode(document), content_type)


_TEMPLATES = [oci_manifest(), oci_index(), oci_manifest(subject=_descriptor(OCI_MANIFEST, D3, 3))]


@given(
    st.sampled_from(range(len(_TEMPLATES))),
    st.lists(st.tuples(st.integers(min_value=0), json_values), min_size=1, max_size=4),
    content_types,
)
def test_mutated_manifests_raise_only_registry_errors(
    template: int, mutations: list[tuple[int, Any]], content_type: str | None
) -> None:
    document = copy.deepcopy(_TEMPLATES[template])
    for where, value in mutations:
        # Replace one value somewhere in the document (top level or inside a descriptor).
        containers: list[dict[str, Any]] = [document]
        for item in document.values():
            if isinstance(item, dict):
                containers.append(item)
            elif isinstance(item, list):
                containers.extend(x for x in item if isinstance(x, dict))
        container = containers[where % len(containers)]
        keys = sorted(container)
        if keys:
            container[keys[where % len(keys)]] = value
    _only_registry_errors(encode(document), content_type)


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 100_000])
def test_deeply_nested_json_is_manifest_invalid(body: bytes) -> None:
    assert_manifest_invalid(body, OCI_MANIFEST)
