"""The image model (images.image) and the catalog built on it, against the real registry server:
BuildKit-style indexes with attestations and variants, annotations on the index and the child,
base labels in the config (`docker build --label`)."""
from __future__ import annotations

import pytest
from baseroll.images import image, oci
from baseroll.images.catalog import Catalog
from baseroll.images.refs import ImageRef
from baseroll.images.registry import RegistryError

from tests.integration.conftest import make_layer, new_client, push_image, push_index

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def images(registry):
    host = registry.host
    repo = ImageRef(host, "model/app")
    with new_client(host) as c:
        arm = push_image(c, repo, [make_layer({"arm": b"1"})], arch="arm64", variant="v8")
        amd = push_image(c, repo, [make_layer({"amd": b"1"}), make_layer({"amd": b"2"})])
        index = push_index(c, repo, [arm, amd], tag="multi", attestation_for=amd,
                           annotations={oci.ANNOTATION_BASE_NAME: f"{host}/bases/x:1", "org.example": "index"})
        arm_only = push_index(c, repo, [arm], tag="arm-only", attestation_for=arm)
        labelled = push_image(c, repo, [make_layer({"l": b"1"})], tag="labelled",
                              run={"Labels": {oci.ANNOTATION_BASE_NAME: f"{host}/bases/x:1",
                                              oci.ANNOTATION_BASE_DIGEST: amd.digest, "other": "no"}})
    return {"repo": repo, "arm": arm, "amd": amd, "index": index, "arm_only": arm_only, "labelled": labelled}


def test_an_index_is_read_through_its_amd64_child_never_the_attestation(images, client):
    found = image.read(client, images["repo"].with_tag("multi"))
    assert found.ref == images["index"] and found.top.is_index
    assert found.manifest.digest == images["amd"].digest
    assert found.layers == tuple(layer.digest for layer in images["amd"].layers)
    assert found.annotations[oci.ANNOTATION_BASE_NAME].endswith("/bases/x:1")
    assert image.read_config(client, found)["architecture"] == "amd64"
    # arm64 means arm64/v8: the child pushed with the variant is found by the bare platform.
    arm = image.read(client, images["repo"].with_tag("multi"), oci.Platform("linux", "arm64"))
    assert arm.manifest.digest == images["arm"].digest


def test_an_index_without_amd64_says_cloud_run_needs_it(images, client):
    with pytest.raises(image.PlatformMissing, match="has no linux/amd64 image, which Cloud Run needs"):
        image.read(client, images["repo"].with_tag("arm-only"))


def test_catalog_facts_come_from_the_model(images, client):
    catalog = Catalog(client)
    facts = catalog.facts(str(images["repo"].with_tag("multi")))
    assert facts.ref == images["index"]  # the service keeps the index digest
    assert facts.layers == tuple(layer.digest for layer in images["amd"].layers)
    assert facts.annotations["org.example"] == "index"
    labelled = catalog.facts(str(images["repo"].with_tag("labelled")))
    assert labelled.annotations == {oci.ANNOTATION_BASE_NAME: f"{images['repo'].registry}/bases/x:1",
                                    oci.ANNOTATION_BASE_DIGEST: images["amd"].digest}  # only the base keys
    unreadable = catalog.facts_many([str(images["repo"].with_tag("arm-only"))])
    assert "Cloud Run needs" in unreadable[str(images["repo"].with_tag("arm-only"))]


def test_a_missing_image_is_a_registry_error(images, client):
    with pytest.raises(RegistryError) as err:
        image.read(client, images["repo"].with_tag("nope"))
    assert err.value.status == 404
