"""Config of an OPC UA source and its tags: node id forms, rejections, the sample config."""

from __future__ import annotations

import uuid
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from pydantic import ValidationError
from ruamel.yaml import YAML

import drivers.opcua
from drivers.opcua.config import OpcUaSource, OpcUaTag
from drivers.opcua.driver import OpcUaDriver, OpcUaSubscriber
from gateway.driver import DriverContext, StreamingDriver
from drivers.opcua.nodeid import NodeRef, parse_node_id


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("ns=2;s=Oven1.Zone1.Temperature", NodeRef(2, "s", "Oven1.Zone1.Temperature")),
        ("ns=2;s=a;b=c", NodeRef(2, "s", "a;b=c")),
        ("ns=3;i=1001", NodeRef(3, "i", 1001)),
        ("i=2258", NodeRef(0, "i", 2258)),
        ("s=Plain", NodeRef(0, "s", "Plain")),
        (
            "ns=2;g=09087e75-8e5e-499b-954f-f2a9603db28a",
            NodeRef(2, "g", uuid.UUID("09087e75-8e5e-499b-954f-f2a9603db28a")),
        ),
        ("ns=2;b=AQJvdmVu", NodeRef(2, "b", b"\x01\x02oven")),
        ("nsu=urn:acme:oven;s=Oven1.DoorOpen", NodeRef("urn:acme:oven", "s", "Oven1.DoorOpen")),
        ("nsu=http://acme.com/UA/Oven/;i=5", NodeRef("http://acme.com/UA/Oven/", "i", 5)),
    ],
)
def test_node_id_forms(text: str, ref: NodeRef) -> None:
    assert parse_node_id(text) == ref
    assert OpcUaTag(name="t", node=text).node_ref == ref
    assert ref.needs_resolution is isinstance(ref.namespace, str)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("Oven1.Zone1.Temperature", "accepted forms"),
        ("ns=2,s=Oven1", "accepted forms"),
        ("ns=2;x=Oven1", "accepted forms"),
        ("NS=2;s=Oven1", "accepted forms"),
        (" ns=2;s=Oven1", "accepted forms"),
        ("ns=two;s=Oven1", "namespace index"),
        ("ns=70000;s=Oven1", "namespace index"),
        ("ns=2;s=", "empty"),
        ("ns=2;i=12a", "numeric identifier"),
        ("ns=2;i=4294967296", "numeric identifier"),
        ("ns=2;g=not-a-guid", "GUID"),
        ("ns=2;b=***", "base64"),
        ("nsu=;s=Oven1", "namespace URI"),
    ],
)
def test_node_id_rejected_with_clear_message(text: str, says: str) -> None:
    with pytest.raises(ValidationError, match=says) as err:
        OpcUaTag(name="t", node=text)
    assert err.value.errors()[0]["loc"] == ("node",)


def test_unparsed_node_id_message_lists_accepted_forms() -> None:
    with pytest.raises(ValidationError) as err:
        OpcUaTag(name="t", node="Oven1.DoorOpen")
    msg = str(err.value)
    forms = ("ns=<index>;s=", "ns=<index>;i=", "ns=<index>;g=", "ns=<index>;b=", "nsu=<namespace uri>;", "i=<number>")
    assert all(form in msg for form in forms)


def test_source_fields() -> None:
    src = OpcUaSource(
        driver="opcua", endpoint="opc.tcp://10.0.0.5:4840/", session_timeout="2m", poll="500ms",
        security_policy="Basic256Sha256",
    )
    assert src.session_timeout == 120.0 and src.poll == 0.5
    assert src.mode == "poll" and src.security_mode == "SignAndEncrypt" and src.secured
    assert src.username is None and src.password is None and src.max_nodes_per_read is None
    creds = OpcUaSource(driver="opcua", endpoint="opc.tcp://127.0.0.1:4840", username="op", password="pw")
    assert creds.password.get_secret_value() == "pw" and "pw" not in repr(creds)
    empty = OpcUaSource(driver="opcua", endpoint="opc.tcp://127.0.0.1:4840", username="", password="")
    assert empty.username is None and empty.password is None


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"endpoint": "http://10.0.0.5:4840"}, "opc.tcp://"),
        ({"endpoint": "opc.tcp://"}, "host and a port"),
        ({"endpoint": "opc.tcp://plc-7/"}, "host and a port"),
        ({"endpoint": "opc.tcp://plc-7:99999/"}, "invalid port"),
        ({"endpoint": "opc.tcp://h:4840", "password": "pw"}, "username"),
        ({"endpoint": "opc.tcp://h:4840", "max_nodes_per_read": 0}, "greater than or equal to 1"),
        ({"endpoint": "opc.tcp://h:4840", "sesion_timeout": "1s"}, "Extra inputs"),
    ],
)
def test_source_rejected(fields: dict, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        OpcUaSource(driver="opcua", **fields)


def test_the_opcua_entry_point_builds_the_driver_and_validates_without_asyncua() -> None:
    import subprocess
    import sys

    (ep,) = [ep for ep in entry_points(group="iiot_gateway.drivers") if ep.name == "opcua"]
    spec = ep.load()
    assert spec.name == "opcua"
    assert spec.SourceConfig is OpcUaSource and spec.TagConfig is OpcUaTag
    tags = [OpcUaTag(name="t", node="ns=2;s=X")]
    poll = spec.create(OpcUaSource(driver="opcua", endpoint="opc.tcp://127.0.0.1:4840/"), tags,
                       DriverContext.detached("t", 1))
    stream = spec.create(OpcUaSource(driver="opcua", endpoint="opc.tcp://127.0.0.1:4840/", mode="subscribe"), tags,
                         DriverContext.detached("t", 1))
    assert isinstance(poll, OpcUaDriver) and not isinstance(poll, StreamingDriver)
    assert isinstance(stream, OpcUaSubscriber) and stream.writes_during_stream
    # validating a config (all driver models) must not import asyncua: half a second on a PC, more on a Pi
    code = "import sys; from gateway.config.models import config_model; config_model(); print('asyncua' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_sample_config_loads() -> None:
    sample = YAML(typ="safe").load(Path(drivers.opcua.__file__).with_name("sample.yaml"))["assets"][0]
    source = OpcUaSource(**sample["source"])
    tags = [OpcUaTag(**t) for t in sample["tags"]]
    assert source.endpoint.startswith("opc.tcp://")
    assert {t.node_ref.kind for t in tags if t.node_ref} == {"s", "i", "g"}
    assert any(t.browse_path for t in tags)
    assert any(t.node_ref.needs_resolution for t in tags)
