"""``driver: file``: numbers in text files (sysfs such as the CPU temperature, 1-Wire sensors, files a tool
writes). One source is one directory, each tag one file holding one number."""

from __future__ import annotations

import asyncio
import math
import os
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from gateway.batch import Batch
from gateway.config.common import SourceBase, TagBase
from gateway.driver import DeviceUnavailable, Driver, DriverContext, DriverSpec, WriteError
from gateway.scaling import engineering, raw_float, raw_integer


class FileSource(SourceBase):
    driver: Literal["file"]
    directory: str = Field("/", description="Base of relative tag paths; while it is missing, the source is down")


class FileTag(TagBase):
    path: str = Field(description="The file, e.g. /sys/class/thermal/thermal_zone0/temp (millidegrees C)")
    type: Literal["int", "float"] = Field("int", description="What the file holds (and what a write puts in it)")


def check(source: FileSource, tags: list[FileTag]) -> None:
    inside = os.path.join(os.path.normpath(source.directory), "")
    for t in tags:  # '..' must not take a writable tag outside the directory
        if t.writable and not os.path.normpath(os.path.join(source.directory, t.path)).startswith(inside):
            raise ValueError(f"tag {t.name!r}: a writable file must lie inside directory {source.directory}")


class FileDriver(Driver):
    def __init__(self, source: FileSource, tags: list[FileTag], context: DriverContext) -> None:
        self.base, self.tags = Path(source.directory), {t.name: t for t in tags}
        self.paths = [self.base / t.path for t in tags]
        self.scale, self.offset = np.array([t.scale for t in tags]), np.array([t.offset for t in tags])
        context.meta.integer |= [t.type == "int" and t.scale == 1 and t.offset == 0 for t in tags]

    async def connect(self) -> None:
        if not await asyncio.to_thread(self.base.is_dir):
            raise DeviceUnavailable(f"{self.base} is not a directory")

    async def read(self) -> Batch:
        return await asyncio.to_thread(self._read)  # file I/O blocks (a 1-Wire sensor takes 750 ms)

    def _read(self) -> Batch:
        batch, raw = Batch.empty(len(self.paths), time.time_ns()), np.full(len(self.paths), np.nan)
        for i, path in enumerate(self.paths):
            try:
                raw[i] = float(path.read_text())
            except OSError as exc:
                self._gone(exc)
                batch.mark_bad([i], 1, "file cannot be read")
            except ValueError:
                batch.mark_bad([i], 2, "file holds no number")
        batch.values[:] = raw * self.scale + self.offset  # NaN stays NaN on the bad tags
        return batch

    async def write(self, tag: str, value: Any) -> Any:
        t = self.tags[tag]
        raw = raw_integer(t, value, "int", -(2**63), 2**63 - 1) if t.type == "int" else raw_float(t, value, "float", math.inf)
        back = await asyncio.to_thread(self._write, self.base / t.path, raw)
        if back != raw:
            raise WriteError(f"wrote {raw!r} to {t.path} but read back {back!r}")
        return engineering(t, int(back) if t.type == "int" else back)

    def _write(self, path: Path, raw: float) -> float:
        try:
            path.write_text(f"{raw!r}\n")
            return float(path.read_text())
        except OSError as exc:
            self._gone(exc)
            raise WriteError(f"{path}: {exc.strerror}") from exc

    def _gone(self, exc: OSError) -> None:
        if not self.base.is_dir():  # the directory itself went away (unmounted, device unplugged)
            raise DeviceUnavailable(f"{self.base} is gone") from exc

    async def close(self) -> None:
        """Nothing to release: every read opens and closes its files."""


SPEC = DriverSpec("file", FileSource, FileTag, FileDriver, check)
