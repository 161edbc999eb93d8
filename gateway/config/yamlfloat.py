"""A float read from YAML that keeps its text, made by both readers of a config file (a leaf module)."""

from __future__ import annotations


class YamlFloat(float):
    """A float read from YAML that remembers its text: ``40010.10`` is ``40010.1`` with ``.text == "40010.10"``.

    Validators that care how a number was written (a Modbus bit address) read ``getattr(v, "text", None)``.
    """

    __slots__ = ("text",)
    text: str

    def __new__(cls, value: float, text: str) -> YamlFloat:
        obj = super().__new__(cls, value)
        obj.text = text
        return obj

    def __getnewargs__(self) -> tuple[float, str]:  # type: ignore[override]  # copy / pickle keep the text
        return (float(self), self.text)
