"""Config models of a serial-instrument source and its tags (``source:`` and ``tags:`` of a serial_line asset).

``terminator`` and ``command`` are byte strings written as text: the escapes ``\\r``, ``\\n``, ``\\t``,
``\\xNN`` and ``\\\\`` are understood whether YAML already turned them into characters (double quotes) or
not (single quotes, plain), so ``'P\\r\\n'``, ``"P\\r\\n"`` and ``P\\r\\n`` all send the same three bytes.
"""

from __future__ import annotations

import codecs
import re
import warnings
from typing import Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from gateway.config.common import Claim, Duration, SerialLine, SourceBase, StrictModel, TagBase, serial_resource

ChecksumKind = Literal["xor8", "sum8", "lrc", "crc16_modbus", "crc16_ccitt"]
TagType = Literal["number", "int", "string", "bool"]

DEFAULT_TRUE = ("1", "true", "on", "yes")
DEFAULT_FALSE = ("0", "false", "off", "no")


def control_bytes(text: str) -> bytes:
    """``'P\\r\\n'`` or ``'P\r\n'`` -> ``b'P\\r\\n'``: text with C escapes as the bytes sent on the wire.

    Raises ``ValueError`` for characters above ``\\xFF`` or a broken escape such as ``\\x4``.
    """
    try:
        raw = text.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("only characters up to \\xFF are allowed; write other bytes as \\xNN") from None
    if b"\\" not in raw:
        return raw
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            return codecs.escape_decode(raw)[0]
    except (ValueError, DeprecationWarning) as e:
        raise ValueError(f"bad escape in {text!r} ({e}); use \\r, \\n, \\t, \\xNN or \\\\") from None


def _error(loc: tuple[Any, ...], kind: str, message: str, value: Any, **ctx: Any) -> ValidationError:
    """A validation error at ``loc`` below the model being validated (so the loader names that line)."""
    return ValidationError.from_exception_data(
        "serial_line", [InitErrorDetails(type=PydanticCustomError(kind, message, ctx), loc=loc, input=value)]
    )


class ChecksumConfig(StrictModel):
    """A checksum at the end of each line, written as hex digits just before the terminator.

    The covered bytes are the line from ``skip`` up to the checksum (``separator`` excluded unless
    ``covers_separator``). 8-bit kinds take 2 hex digits, 16-bit kinds 4 (most significant first);
    upper or lower case.
    """

    kind: ChecksumKind = Field(
        description="xor8 (NMEA), sum8 (sum of bytes mod 256), lrc (Modbus ASCII: two's complement of sum8), "
        "crc16_modbus (poly 0xA001 reflected, init 0xFFFF), crc16_ccitt (poly 0x1021, init 0xFFFF)"
    )
    separator: str = Field("", description="Text between the data and the checksum, e.g. '*' (NMEA)")
    skip: int = Field(0, ge=0, description="Leading characters not covered, e.g. 1 for NMEA's '$' or an STX")
    covers_separator: bool = Field(False, description="The separator is part of the covered bytes")

    @property
    def width(self) -> int:
        """Hex digits of the checksum."""
        return 4 if self.kind.startswith("crc16") else 2


class SerialLineSource(SerialLine, SourceBase):
    """A serial port with one line-oriented ASCII instrument on it."""

    # the line settings (port, baudrate, bytesize, parity, stopbits) are the common SerialLine: 9600 8N1

    driver: Literal["serial_line"]
    mode: Literal["poll", "stream"] = Field(
        "poll",
        description="poll: send `command` every `poll` interval and read one reply line; "
        "stream: the device sends lines on its own (then `poll` is the expected line interval, used to size history)",
    )
    command: str | None = Field(None, description="Poll mode: bytes sent to ask for a reading, e.g. 'P\\r\\n'")
    terminator: str = Field("\r\n", description="End of each line the device sends, e.g. '\\r\\n', '\\r', '\\x03'")
    encoding: str = Field("ascii", description="Text encoding of the lines (ascii, latin-1, utf-8, ...)")
    max_line: int = Field(256, ge=1, le=65536, description="Longest line in bytes; longer ones are discarded")
    char_timeout: Duration | None = Field(
        0.1,
        gt=0,
        description="A line that stops arriving for this long before its terminator is discarded as partial "
        "(null: never; then a partial line is merged with the next and usually fails the pattern)",
    )
    max_silence: Duration | None = Field(
        None,
        gt=0,
        description="Stream mode: the device counts as gone when no valid line arrives for this long "
        "(null: a quiet device is fine, e.g. a barcode reader)",
    )
    pattern: str = Field(
        description="Regular expression a line must match entirely (terminator and checksum removed); "
        "its named groups (?P<name>...) are the tags' values"
    )
    checksum: ChecksumConfig | None = Field(None, description="Checksum at the end of each line (default: none)")

    _regex: re.Pattern[str] = PrivateAttr()

    @field_validator("terminator", "command")
    @classmethod
    def _bytes(cls, v: str | None) -> str | None:
        if v is not None and not control_bytes(v):
            raise ValueError("must not be empty")
        return v

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v: str) -> str:
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"unknown encoding {v!r}; e.g. ascii, latin-1, utf-8, cp1252") from None
        return v

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        try:
            regex = re.compile(v)
        except re.error as e:
            where = f" at position {e.pos}" if e.pos is not None else ""
            raise ValueError(f"not a valid regular expression: {e.msg}{where}") from None
        if not regex.groupindex:
            raise ValueError(
                "the pattern has no named group; name each part that becomes a tag, e.g. (?P<weight>[-+]?\\d+\\.\\d+)"
            )
        return v

    @model_validator(mode="after")
    def _mode_fields(self) -> SerialLineSource:
        if self.mode == "poll" and self.command is None:
            raise _error(("command",), "command_required", "poll mode needs a command to send, e.g. command: 'P\\r\\n'", None)
        if self.mode == "stream" and self.command is not None:
            raise _error(("command",), "stream_command",
                         "stream mode sends no command; remove it, or use mode: poll", self.command)  # fmt: skip
        if self.max_silence is not None:
            if self.mode != "stream":
                raise _error(("max_silence",), "poll_silence",
                             "max_silence applies to stream mode only; in poll mode `timeout` bounds each reply",
                             self.max_silence)
            if self.timeout < self.max_silence:
                raise _error(
                    ("max_silence",),
                    "silence_timeout",
                    "max_silence ({silence}s) is longer than timeout ({timeout}s): on connect the driver waits up "
                    "to max_silence for a first line and timeout bounds every connect; set timeout to at least "
                    "{silence}s",
                    self.max_silence,
                    silence=f"{self.max_silence:g}",
                    timeout=f"{self.timeout:g}",
                )
        self._regex = re.compile(self.pattern)
        return self

    @property
    def regex(self) -> re.Pattern[str]:
        return self._regex

    @property
    def terminator_bytes(self) -> bytes:
        return control_bytes(self.terminator)

    @property
    def command_bytes(self) -> bytes | None:
        return None if self.command is None else control_bytes(self.command)

    def claims(self) -> tuple[Claim, ...]:
        """The serial port, opened exclusively: no other asset may name it."""
        return (Claim(serial_resource(self.port), "serial instrument", "port", shared=False),)


class SerialLineTag(TagBase):
    """One named group of the source's pattern, converted to a value."""

    group: str | None = Field(None, description="Named group of the pattern holding this tag's text (default: the tag name)")
    type: TagType = Field(
        "number", description="number (float), int, string, or bool (by true_values / false_values)"
    )
    decimal_comma: bool = Field(False, description="number: the text uses ',' as decimal separator (12,5)")
    true_values: list[str] | None = Field(
        None, description=f"bool: texts read as true, case-insensitive (default: {', '.join(DEFAULT_TRUE)})"
    )
    false_values: list[str] | None = Field(
        None, description=f"bool: texts read as false, case-insensitive (default: {', '.join(DEFAULT_FALSE)})"
    )

    @property
    def group_name(self) -> str:
        return self.group or self.name

    @model_validator(mode="after")
    def _type_fields(self) -> SerialLineTag:
        if getattr(self, "writable", False):
            raise _error(("writable",), "read_only", "serial_line tags are read-only (the driver only listens)", True)
        if self.type in ("string", "bool"):
            for key, default in (("scale", 1.0), ("offset", 0.0)):
                if getattr(self, key) != default:
                    raise _error((key,), "type_field", "{key} applies to number and int tags, not {type}",
                                 getattr(self, key), key=key, type=self.type)  # fmt: skip
        if self.decimal_comma and self.type != "number":
            raise _error(("decimal_comma",), "type_field", "decimal_comma applies to number tags only", True)
        if self.type != "bool":
            for key in ("true_values", "false_values"):
                if getattr(self, key) is not None:
                    raise _error((key,), "type_field", "{key} applies to bool tags only", getattr(self, key),
                                 key=key)
        else:
            both = {s.lower() for s in self.truthy} & {s.lower() for s in self.falsy}
            if both:
                raise _error(("false_values",), "bool_overlap", "texts both true and false: {both}",
                             self.false_values, both=", ".join(sorted(both)))  # fmt: skip
        return self

    @property
    def truthy(self) -> tuple[str, ...]:
        return tuple(self.true_values) if self.true_values is not None else DEFAULT_TRUE

    @property
    def falsy(self) -> tuple[str, ...]:
        return tuple(self.false_values) if self.false_values is not None else DEFAULT_FALSE


def check(source: SerialLineSource, tags: list[SerialLineTag]) -> None:
    """Every tag's group exists in the pattern (errors point at the tag's line)."""
    groups = source.regex.groupindex
    errors: list[InitErrorDetails] = []
    for i, tag in enumerate(tags):
        if tag.group_name not in groups:
            hint = "" if tag.group else "; set group: to one of them"
            errors.append(
                InitErrorDetails(
                    type=PydanticCustomError(
                        "unknown_group",
                        "group '{group}' is not in the source's pattern; its groups: {groups}{hint}",
                        {"group": tag.group_name, "groups": ", ".join(groups), "hint": hint},
                    ),
                    loc=("tags", i, "group"),
                    input=tag.group_name,
                )
            )
    if errors:
        raise ValidationError.from_exception_data("serial_line", errors)
