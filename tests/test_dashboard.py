"""The dashboard and the API docs in a real browser, with every request off the gateway blocked.

Debian's ``chromium`` driven by Playwright (pip ``playwright``, the test extra; never its own browser
download). The gateway runs in-process on ``config/demo.yaml`` (ports moved to free ones) against the bundled
Modbus TCP and OPC UA simulators and a real broker. Without chromium or playwright the browser tests are
skipped, and fail under ``CI=true``. Screenshots are saved in the test's tmp dir and, when ``IIOT_ARTIFACTS``
is set, in that folder too.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from e2e.harness import running_gateway
from helpers import free_port, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
DEMO = Path(__file__).resolve().parent.parent / "config" / "demo.yaml"
TOKEN = "dashboard-test-token-0123456789"
TITLE = "iiot-gateway status API"


def demo_config(tmp_path: Path, broker, modbus_sim, opcua_sim) -> Path:
    """config/demo.yaml on this test's ports, with an API token and one writable setpoint added."""
    text = DEMO.read_text()
    edits = [
        ("  id: line1-gw\n", f"  id: line1-gw\n  state_dir: {tmp_path / 'state'}\n"),
        ("  port: 1883\n", f"  port: {broker.port}\n"),
        ("  listen: 127.0.0.1:8080\n", f"  listen: 127.0.0.1:{free_port()}\n  token: {TOKEN}\n"),
        ("      port: 5020\n", f"      port: {modbus_sim.port}\n"),
        ("endpoint: opc.tcp://127.0.0.1:4840/", f"endpoint: {opcua_sim.endpoint}"),
        (
            "      - {name: recipe, address: 40020, type: string, length: 8}\n",
            (
                "      - {name: recipe, address: 40020, type: string, length: 8}\n"
                "      - {name: pressure_sp, address: 40133, type: float32, byte_order: CDAB, unit: bar, writable: true,"
                " min: 0, max: 250}\n"
            ),
        ),
    ]
    for old, new in edits:
        assert text.count(old) == 1, f"config/demo.yaml changed: {old!r} not found once"
        text = text.replace(old, new)
    path = tmp_path / "demo.yaml"
    path.write_text(text)
    return path


def need_browser() -> None:
    """Skip without chromium or playwright; under CI=true fail instead, since .ci/run installs both."""
    missing = []
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        missing.append("the pip package playwright (pip install -e '.[test]')")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if missing:
        text = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(text)
        pytest.skip(text)


@pytest.fixture
async def browser():
    need_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def demo_gateway(tmp_path, mqtt_broker, modbus_sim, opcua_sim):
    async with running_gateway(demo_config(tmp_path, mqtt_broker, modbus_sim, opcua_sim)) as rg:
        assert await wait_until(lambda: all(a.status.state == "connected" for a in rg.gw.assets.values()), 15)
        yield rg


class OfflinePage:
    """A browser page that may reach only ``origin``: every other request that reaches the network layer is
    aborted and recorded (``blocked``); every request the page makes is recorded too, and which of them the
    page's own Content-Security-Policy stopped before any network access (``csp``)."""

    def __init__(self, page, origin: str) -> None:
        self.page, self.origin = page, origin
        self.blocked: list[str] = []
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.csp: list[str] = []

    @classmethod
    async def open(cls, browser, origin: str, *, width: int = 1280, height: int = 800) -> OfflinePage:
        context = await browser.new_context(viewport={"width": width, "height": height})
        page = await context.new_page()
        self = cls(page, origin)

        async def route(r) -> None:
            if self._own(r.request.url):
                await r.continue_()
            else:
                self.blocked.append(r.request.url)
                await r.abort("internetdisconnected")

        await context.route("**/*", route)
        page.on("request", lambda req: self.requests.append(req.url))
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("requestfailed", lambda req: self.csp.append(req.url) if req.failure == "csp" else None)
        return self

    def _own(self, url: str) -> bool:
        parts = urlsplit(url)
        return parts.scheme in ("data", "blob") or f"{parts.scheme}://{parts.netloc}" == self.origin

    def foreign(self) -> list[str]:
        """Every URL off the gateway that the browser tried to fetch over the network."""
        return self.blocked + [
            u for u in self.requests if not self._own(u) and u not in self.blocked and u not in self.csp
        ]

    async def close(self) -> None:
        await self.page.context.close()


def save_artifact(path: Path) -> None:
    folder = os.environ.get("IIOT_ARTIFACTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / path.name)


def events_hub(rg):
    return rg.gw._api_server.config.app.state.events


# --------------------------------------------------------------------------------------------- offline


async def test_docs_redoc_and_dashboard_render_with_the_network_blocked(browser, demo_gateway, tmp_path):
    origin = f"http://127.0.0.1:{demo_gateway.api_port}"
    pages = {
        "/docs": ".swagger-ui .opblock-summary-path",  # Swagger UI drew the operations from /openapi.json
        "/redoc": "[data-section-id] h2",  # ReDoc drew its sections
        "/": '[data-asset="press-3"] tr[data-tag="pressure"] .v',
    }
    for path, rendered in pages.items():
        p = await OfflinePage.open(browser, origin)
        try:
            await p.page.goto(origin + path)
            try:
                await p.page.wait_for_selector(rendered, timeout=15000)
            except Exception as exc:
                raise AssertionError(f"{path} did not render; requests off the gateway: {p.foreign()}") from exc
            if path == "/docs":
                assert TITLE in await p.page.inner_text(".swagger-ui .info .title")
                assert await p.page.locator(".opblock").count() >= 6
                # the write endpoint's bearer scheme is declared: an Authorize button for the token
                assert await p.page.locator(".swagger-ui .auth-wrapper .authorize").count() == 1
            elif path == "/redoc":
                assert TITLE in await p.page.inner_text("h1")
            else:
                await p.page.wait_for_function(
                    '() => document.querySelector(\'[data-asset="press-3"] tr[data-tag="pressure"] .v\')'
                    ".textContent !== '—'",
                    timeout=15000,
                )
            await p.page.wait_for_load_state("networkidle")
            await p.page.screenshot(path=tmp_path / f"offline{path.replace('/', '_') or '_root'}.png")
            assert p.foreign() == [], f"{path} tried to leave the gateway: {p.foreign()}"
            assert p.errors == [], f"{path}: script errors {p.errors}"
        finally:
            await p.close()


# ------------------------------------------------------------------------------------------- dashboard


async def test_dashboard_shows_assets_live_values_bad_tags_and_writes_a_setpoint(
    browser, demo_gateway, tmp_path, opcua_sim
):
    origin = f"http://127.0.0.1:{demo_gateway.api_port}"
    p = await OfflinePage.open(browser, origin)
    page = p.page
    try:
        await page.goto(origin + "/")
        press, oven = page.locator('[data-asset="press-3"]'), page.locator('[data-asset="oven-1"]')
        pressure = press.locator('tr[data-tag="pressure"] .v')
        await page.wait_for_function(
            '() => { const e = document.querySelector(\'[data-asset="press-3"] tr[data-tag="pressure"] .v\');'
            " return e && e.textContent !== '—'; }",
            timeout=15000,
        )
        assert await press.locator(".a-state").text_content() == "connected"
        assert await oven.locator(".a-state").text_content() == "connected"
        assert await press.locator('tr[data-tag="recipe"] .v').inner_text() == "RCP-0042"
        assert await press.locator('tr[data-tag="oil_temp"] .unit').inner_text() == "degC"
        uplink = page.locator('[data-uplink="mqtt"]')
        assert await uplink.locator(".u-state").text_content() == "connected"
        assert "active link: default" in await uplink.locator(".u-active").inner_text()
        assert "Spool backlog: 0 messages" in await uplink.locator(".spool").inner_text()

        # the value changes on its own (the simulated press runs): live updates, no reload
        first = await pressure.inner_text()
        await page.wait_for_function(
            '(first) => document.querySelector(\'[data-asset="press-3"] tr[data-tag="pressure"] .v\')'
            ".textContent !== first",
            arg=first,
            timeout=15000,
        )
        # the sparkline has points (history from the ring buffer plus the live values)
        await page.wait_for_function(
            '() => (document.querySelector(\'[data-asset="press-3"] tr[data-tag="pressure"] polyline\')'
            ".getAttribute('points') || '').split(' ').length >= 3",
            timeout=15000,
        )
        # only the writable tag has a write control
        assert await press.locator("button.w-btn").count() == 1
        assert await press.locator('tr[data-tag="pressure_sp"] button.w-btn').count() == 1

        # the filter box
        await page.fill("#filter", "oil")
        assert await press.locator("tbody tr:visible").count() == 1
        assert await oven.is_hidden()
        await page.fill("#filter", "")
        assert await press.locator("tbody tr:visible").count() == 7 and await oven.is_visible()
        await page.screenshot(path=tmp_path / "dashboard.png", full_page=True)

        # a write asks for the token: a wrong one is refused, the right one writes and reads back
        await press.locator('tr[data-tag="pressure_sp"] button.w-btn').click()
        await page.fill("#w-value", "142.5")
        await page.fill("#w-token", "wrong-token-wrong-token")
        await page.click("#w-submit")
        await page.wait_for_function("() => document.querySelector('#w-result').textContent.startsWith('Refused')")
        assert "401" in await page.inner_text("#w-result")
        await page.fill("#w-token", TOKEN)
        await page.click("#w-submit")
        await page.wait_for_function(
            "() => document.querySelector('#w-result').classList.contains('ok')", timeout=10000
        )
        assert "reads back 142.5" in await page.inner_text("#w-result")
        await page.click("#w-cancel")
        await page.wait_for_function(
            '() => document.querySelector(\'[data-asset="press-3"] tr[data-tag="pressure_sp"] .v\')'
            ".textContent === '142.5'",
            timeout=10000,
        )

        # a device goes away: its card says so, its tags turn bad, and "bad only" shows just those
        await opcua_sim.stop()
        await page.wait_for_function(
            "() => document.querySelector('[data-asset=\"oven-1\"] .a-state').textContent !== 'connected'",
            timeout=20000,
        )
        await page.wait_for_function(
            '() => document.querySelector(\'[data-asset="oven-1"] tr[data-tag="zone1_temp"] .q\')'
            ".textContent === 'bad'",
            timeout=20000,
        )
        assert await oven.locator(".last-error").is_visible()
        await page.check("#bad-only")
        assert await press.locator("tbody tr:visible").count() == 0
        assert await press.locator(".none").is_visible()
        assert await oven.locator("tbody tr:visible").count() == 2
        await page.uncheck("#bad-only")
        await page.screenshot(path=tmp_path / "dashboard-device-down.png", full_page=True)
        assert p.foreign() == [] and p.errors == []
    finally:
        await p.close()

    phone = await OfflinePage.open(browser, origin, width=390, height=844)
    try:
        await phone.page.goto(origin + "/")
        await phone.page.wait_for_selector('[data-asset="oven-1"] .a-state')
        await phone.page.wait_for_load_state("networkidle")
        # one column: the oven card is below the press card, and nothing is wider than the screen
        boxes = [await phone.page.locator(f'[data-asset="{a}"]').bounding_box() for a in ("press-3", "oven-1")]
        assert boxes[0] and boxes[1] and boxes[1]["y"] > boxes[0]["y"] + boxes[0]["height"] - 1
        assert await phone.page.evaluate("document.documentElement.scrollWidth") <= 390
        await phone.page.screenshot(path=tmp_path / "dashboard-phone.png", full_page=True)
    finally:
        await phone.close()
    for name in ("dashboard.png", "dashboard-device-down.png", "dashboard-phone.png"):
        save_artifact(tmp_path / name)


# ---------------------------------------------------------------------------------------- event stream


async def read_event(lines) -> tuple[str, str]:
    """The next server-sent event as (name, data)."""
    name, data = "", ""
    async for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and name:
            return name, data
    raise EOFError("the event stream ended")


async def test_event_stream_pushes_snapshots_and_ends_when_the_client_goes_or_the_gateway_stops(demo_gateway):
    import orjson

    rg = demo_gateway
    hub = events_hub(rg)
    url = f"http://127.0.0.1:{rg.api_port}/api/v1/events"
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("GET", url) as resp:
            assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
            lines = resp.aiter_lines()
            name, data = await read_event(lines)
            meta = orjson.loads(data)
            assert name == "meta" and [a["id"] for a in meta["assets"]] == ["press-3", "oven-1"]
            assert [t["name"] for t in meta["assets"][0]["tags"] if t.get("writable")] == ["pressure_sp"]
            snaps = [orjson.loads((await read_event(lines))[1]) for _ in range(3)]
            assert len({s["t"] for s in snaps}) == 3  # three distinct snapshots, one per interval
            press = snaps[-1]["assets"]["press-3"]
            assert press["state"] == "connected" and press["v"][5] == "RCP-0042" and press["q"][0] == 0
            assert snaps[-1]["uplinks"]["mqtt"]["connected"] is True
            assert hub.clients == 1

            hub.max_clients = 1  # bounded: one more stream than allowed is refused
            busy = await client.get(url)
            assert busy.status_code == 503 and busy.json()["error"] == "busy"
        # the client went away: its stream task ends
        assert await wait_until(lambda: hub.clients == 0, 10)

        # a stream open while the gateway stops ends cleanly (no cut connection, no wait for the API timeout)
        hub.max_clients = 8
        async with client.stream("GET", url) as resp:
            lines = resp.aiter_lines()
            assert (await read_event(lines))[0] == "meta"
            stopping = asyncio.create_task(rg.stop())
            with pytest.raises(EOFError):
                async with asyncio.timeout(10):  # without the end of stream it would go on for ever
                    while True:
                        await read_event(lines)
            await stopping
    assert hub.clients == 0


# ---------------------------------------------------------------------------------------------- package


def test_every_web_file_is_package_data_so_an_installed_gateway_serves_it():
    """The dashboard and the docs bundles are not Python modules: a wheel carries them only if pyproject's
    package-data names them (checked here from the patterns, without building a wheel)."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parent.parent
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["gateway"]
    web = root / "gateway" / "web"
    files = [p.relative_to(root / "gateway").as_posix() for p in web.rglob("*") if p.is_file()]
    assert {
        "web/static/index.html",
        "web/vendor/swagger-ui/swagger-ui-bundle.js",
        "web/vendor/redoc/redoc.standalone.js",
        "web/vendor/redoc/LICENSE",
    } <= set(files)
    # setuptools globs: '*' does not cross a '/'
    missing = [f for f in files if not any(fnmatch.fnmatch(f, p) and f.count("/") == p.count("/") for p in patterns)]
    assert missing == [], f"not in [tool.setuptools.package-data] gateway: {missing}"
