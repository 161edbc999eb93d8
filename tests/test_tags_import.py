"""``iiot-gateway tags import``: a Kepware CSV export becomes tag lines that validate and read right.

What a user relies on: the printed lines, put under an asset's ``tags:``, pass ``validate`` and read the
values the Kepware project read (against the bundled Modbus simulator); every row that cannot be mapped is
named with its line number and the exit code says so; writes stay off unless asked for.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import gateway_config

from drivers.modbus.kepware import import_csv, yaml_scalar
from drivers.modbus.tcp import ModbusTcpDriver
from gateway.config import load_config
from gateway.driver import DriverContext

HEADING = ('"Tag Name","Address","Data Type","Respect Data Type","Client Access","Scan Rate","Scaling","Raw Low",'
           '"Raw High","Scaled Low","Scaled High","Scaled Data Type","Clamp Low","Clamp High","Eng Units",'
           '"Description","Negate Value"')

#: rows as Kepware writes them, for points of the bundled plant (config/simulator.yaml); line 2 is the first
GOOD = [
    '"pressure","400001","Float","1","R/W","100","None","","","","","Float","0","0","bar","Main cylinder, hydraulic","0"',
    '"motor_current","400005","Word","1","RO","100","Linear","0","10000","0","100","Float","0","0","A","","0"',
    '"fault","400010.1","Boolean","1","RO","100","None","","","","","Boolean","0","0","","Press fault","0"',
    '"recipe","400020.16H","String","1","RO","1000","None","","","","","String","0","0","","",""',
    '"oil_temp","300001","Short","1","RO","100","Linear","0","1000","0","100","Float","1","1","degC","","0"',
    '"running","000001","Boolean","1","R/W","100","","","","","","","","","","","0"',
    '"estop_ok","100001","Boolean","1","RO","100","","","","","","","","","","",""',
    '"b_scaled","40235","Short","1","RO","100","Linear","0","1000","-50","50","Float","0","0","","","0"',
    '"b_float32_cdab","4133","Float","1","RO","100","None","","","","","","","","","",""',
]
BAD = [
    ('"counter_bcd","400050","BCD","1","RO","100","","","","","","","","","","",""', "BCD"),
    ('"Tank Level","400060","Word","1","RO","100","","","","","","","","","","",""', "'Tank_Level'"),
    ('"levels","400070[4]","Word Array","1","RO","100","","","","","","","","","","",""', "array"),
    ('"flow","400080","Word","1","RO","100","Square Root","0","100","0","10","","","","","",""', "Square Root"),
    ('"speed","400090","Flaot","1","RO","100","","","","","","","","","","",""', "did you mean float32?"),
    ('"level_raw","400095","float","1","RO","100","","","","","","","","","","",""', "did you mean float32?"),
    ('"coil_word","000010","Word","1","RO","100","","","","","","","","","","",""', "use type bool"),
]


def export(rows: list[str], *, bom: bool = True) -> bytes:
    """A CSV export as Kepware on Windows writes it: UTF-8 BOM, CRLF line ends."""
    text = "\r\n".join([HEADING, *rows]) + "\r\n"
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8")


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "gateway.cli", *map(str, args)], check=False, capture_output=True,
                          text=True, env=env, timeout=60)


def press_config(tmp_path: Path, port: int, tags_yaml: str) -> Path:
    """A gateway config whose one asset, on the Modbus device at ``port``, has the tag lines ``tags_yaml``."""
    press = (f"- id: press-3\n  source: {{driver: modbus_tcp, host: 127.0.0.1, port: {port}, unit: 1, timeout: 2s}}\n"
             "  tags:\n") + textwrap.indent(tags_yaml, "    ")
    return gateway_config(tmp_path, assets_yaml=press, name="plant.yaml")


async def test_imported_tags_validate_and_read_the_plant(tmp_path, modbus_sim) -> None:
    csv_file = tmp_path / "press.csv"
    csv_file.write_bytes(export(GOOD + [row for row, _ in BAD]))
    done = cli("tags", "import", csv_file, "--driver", "modbus_tcp", "--byte-order", "CDAB")
    assert done.returncode == 1, done.stderr  # some rows failed
    errors = [line for line in done.stderr.splitlines() if ": tag " in line]
    first_bad = 2 + len(GOOD)
    assert len(errors) == len(BAD), done.stderr
    for i, ((_, says), line) in enumerate(zip(BAD, errors)):
        assert line.startswith(f"{csv_file}:{first_bad + i}: tag "), line
        assert says in line, line
    assert "9 tags imported, 7 rows failed" in done.stderr

    cfg_path = press_config(tmp_path, modbus_sim.port, done.stdout)
    valid = cli("validate", cfg_path)
    assert valid.returncode == 0, valid.stderr + cfg_path.read_text()
    assert "9 tags" in valid.stdout

    asset = load_config(str(cfg_path)).assets[0]
    tags = {t.name: t for t in asset.tags}
    assert not any(t.writable for t in asset.tags)  # Kepware R/W is only a comment without --writable
    assert "writable in Kepware" in done.stdout
    assert tags["motor_current"].scale == pytest.approx(0.01) and tags["motor_current"].unit == "A"
    assert tags["pressure"].description == "Main cylinder, hydraulic"

    driver = ModbusTcpDriver(asset.source, list(asset.tags), DriverContext.detached("test", len(list(asset.tags))))
    await driver.connect()
    try:
        batch = await driver.read()
    finally:
        await driver.close()
    assert (batch.quality == 0).all(), batch.error_text
    value = dict(zip(driver.plan.names, batch.values.tolist()))
    assert 100 <= value["pressure"] <= 180  # float32 CDAB, sine 100..180 bar
    assert 18 <= value["motor_current"] <= 26  # raw 1800..2600, Linear 0..10000 -> 0..100
    assert 42 <= value["oil_temp"] <= 48
    assert value["b_scaled"] == pytest.approx(21.5)  # raw 715, Linear 0..1000 -> -50..50
    assert value["b_float32_cdab"] == -1234.5  # Kepware's short form 4133 is 40133
    assert value["estop_ok"] == 1.0
    assert batch.strings[driver.plan.names.index("recipe")] == "RCP-0042"


def test_writable_only_when_asked(tmp_path) -> None:
    result = import_csv(export(GOOD[:1]), writable=True)
    assert result.tags[0].fields["writable"] is True and not result.tags[0].comments
    result = import_csv(export(GOOD[:1]))
    assert "writable" not in result.tags[0].fields


def test_column_order_semicolons_and_no_bom(tmp_path) -> None:
    data = ('Description;Data Type;Address;Tag Name;Eng. Units\n'
            '"level; tank 1";Word;400007;"level";m\n').encode("cp1252")
    result = import_csv(data)
    assert not result.errors
    assert result.tags[0].fields == {"name": "level", "address": "400007", "type": "uint16", "unit": "m",
                                     "description": "level; tank 1"}


def test_fix_names_keeps_the_exported_name_in_a_comment() -> None:
    result = import_csv(export(['"Tank Level","400060","Word","1","RO","100","","","","","","","","","","",""']),
                        fix_names=True)
    assert result.tags[0].fields["name"] == "Tank_Level"
    assert "Kepware name: Tank Level" in result.tags[0].comments


def test_yaml_quotes_what_yaml_would_misread() -> None:
    assert yaml_scalar("000001") == '"000001"' and yaml_scalar("on") == '"on"' and yaml_scalar("a: b") == '"a: b"'
    assert yaml_scalar("press-3.speed") == "press-3.speed"


@pytest.mark.parametrize("content", [b"", b"\x00\x01binary", b"name,value\nx,1\n"])
def test_a_file_that_is_no_tag_export_exits_2(tmp_path, content) -> None:
    path = tmp_path / "other.csv"
    path.write_bytes(content)
    done = cli("tags", "import", path, "--driver", "modbus_tcp")
    assert done.returncode == 2 and done.stdout == "", done
    assert str(path) in done.stderr


def test_validate_suggests_float32_for_type_float(tmp_path) -> None:
    path = press_config(tmp_path, 5020, '- {name: level, address: "40001", type: float}\n')
    done = cli("validate", path)
    assert done.returncode == 2
    assert "did you mean 'float32'?" in done.stderr, done.stderr


def test_any_row_is_a_tag_that_validates_or_an_error_never_a_crash() -> None:
    import random

    from ruamel.yaml import YAML

    from drivers.modbus.config import ModbusTag

    rng = random.Random(11)
    addresses = ["400001", "40001", "41", "4001", "300001", "000001", "100001", "400010.3", "400010.16", "400020.16H",
                 "400020.7L", "4x0001", "hr:0", "465536", "465537", "400001[2]", "", "abc", "40001.", "500001", "3"]
    types = ["Float", "Double", "Word", "Short", "DWord", "Long", "LLong", "QWord", "Boolean", "String", "Default",
             "BCD", "float", "", "Float Array", "int16", "bogus"]
    names = ["t", "T-1", "a b", "_x", ".bad", "x" * 70, "ok.name", "", '"quoted"', "a\nb", "on", "1e3"]
    rows = []
    for i in range(300):
        scaling = rng.choice(["", "None", "Linear", "Square Root", "Linear"])
        low, high = rng.choice([("0", "100"), ("5", "5"), ("x", "1"), ("-10", "10")])
        name = rng.choice(names) + (str(i) if rng.random() < 0.8 else "")
        cells = [name, rng.choice(addresses), rng.choice(types), rng.choice(["RO", "R/W", "", "Read/Write"]),
                 scaling, low, high, "0", rng.choice(["1", "100", ""]), rng.choice(["", "bar", "°C"]), "d, \"q\""]
        rows.append(",".join('"' + c.replace('"', '""') + '"' for c in cells))
    heading = "Tag Name,Address,Data Type,Client Access,Scaling,Raw Low,Raw High,Scaled Low,Scaled High,Eng Units,Description"
    data = ("\r\n".join([heading, *rows]) + "\r\n").encode("utf-8")
    for fix_names in (False, True):
        result = import_csv(data, writable=True, byte_order="DCBA", fix_names=fix_names)
        assert len(result.tags) + len(result.errors) == len(rows)
        assert result.tags and result.errors
        loaded = YAML(typ="safe").load(result.yaml("x.csv"))
        assert [t["name"] for t in loaded] == [t.fields["name"] for t in result.tags]
        for item in loaded:
            ModbusTag(**item)
