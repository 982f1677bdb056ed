"""Checks of the files a benchmark writes, shared by the comparison tests: a CSV read back against
the JSON it was written with, and a PNG that is a real, readable, non-blank image."""

from __future__ import annotations

import csv
import math
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN_PNG_BYTES = 5_000
"""A matplotlib figure with axes, lines and text is tens of kB; an empty canvas is a few hundred bytes."""


def _parsed(text: str, like: Any) -> Any:
    """A CSV cell read as the type of the JSON value it stands for (csv writes ``str(value)``)."""
    if isinstance(like, bool):
        assert text in ("True", "False"), f"{text!r} is not a boolean"
        return text == "True"
    if isinstance(like, int):
        return int(text)
    if isinstance(like, float):
        return float(text)
    return text


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def assert_csv_matches_json(csv_path: Path, json_rows: list[dict[str, Any]], left_out: Iterable[str] = ()) -> None:
    """Every row and column of ``csv_path`` equals ``json_rows`` (the columns in the JSON's order,
    except ``left_out``: lists, which a CSV cell does not hold)."""
    left_out = set(left_out)
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        csv_rows = list(reader)
    assert json_rows, f"no rows to compare {csv_path} with"
    assert header == [key for key in json_rows[0] if key not in left_out], f"{csv_path} columns {header}"
    assert len(csv_rows) == len(json_rows), f"{csv_path} has {len(csv_rows)} rows, the JSON {len(json_rows)}"
    for number, (csv_row, json_row) in enumerate(zip(csv_rows, json_rows)):
        for key in header:
            value = _parsed(csv_row[key], json_row[key])
            assert _same(json_row[key], value), f"{csv_path} row {number} {key}: CSV {csv_row[key]!r}, JSON {json_row[key]!r}"


def assert_png(path: Path) -> tuple[int, int]:
    """``path`` is a PNG (signature and IHDR), of a non-trivial size, that matplotlib reads back
    as an image of the header's size with more than a few colours (not a blank canvas); returns
    (width, height)."""
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR", f"{path}: the first chunk is not IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100, f"{path} is {width}x{height}"
    assert len(data) > MIN_PNG_BYTES, f"{path} is only {len(data)} bytes"
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (height, width), f"{path}: read {image.shape}, header {width}x{height}"
    colours = np.unique(image.reshape(-1, image.shape[-1]), axis=0)
    assert len(colours) > 8, f"{path} has {len(colours)} colours: blank"
    return width, height
