"""MJCF text of the custom tasks: dm_control's shipped XMLs with small edits, or our own files."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from dm_control.suite import common

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets"


def edit_xml(xml: bytes, old: str, new: str) -> bytes:
    """Replace the one occurrence of ``old`` in ``xml``; fails loudly if dm_control's file changed."""
    count = xml.count(old.encode())
    if count != 1:
        raise RuntimeError(f"expected exactly one {old!r} in the dm_control XML, found {count}")
    return xml.replace(old.encode(), new.encode())


@cache
def suite_xml(filename: str, edits: tuple[tuple[str, str], ...] = ()) -> bytes:
    """dm_control's ``suite/<filename>`` with ``(old, new)`` text edits applied."""
    xml = common.read_model(filename)
    for old, new in edits:
        xml = edit_xml(xml, old, new)
    return xml


@cache
def asset_xml(filename: str) -> bytes:
    """One of our own model files in ``pwm_core/envs/assets``."""
    return (ASSET_DIR / filename).read_bytes()
