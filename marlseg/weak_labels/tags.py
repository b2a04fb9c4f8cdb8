"""Image-level tags: which 2D crops of which EM volume contain the ROI (1) or not (0).

Read from a CSV (:func:`read_tags`, validated row by row against the datasets it names) or
derived from a voxel-truth mask by a documented rule (:func:`derive_tags`, for benchmarks and
demos); :func:`load_crops` turns them into the detector's training crops.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from marlseg.config import DatasetRef
from marlseg.errors import ConfigError
from marlseg.volumes import open_volume

TAG_HEADER_3D = ("path", "dataset", "z0", "y0", "x0", "z1", "y1", "x1", "tag")
TAG_HEADER_2D = ("path", "dataset", "z", "y0", "x0", "y1", "x1", "tag")


@dataclass(frozen=True)
class Tag:
    """One tagged box: every z-section of ``box`` is a 2D crop tagged ``tag``."""

    path: Path
    dataset: str
    box: tuple[int, int, int, int, int, int]
    """``z0, y0, x0, z1, y1, x1`` in voxels of the dataset, half-open."""
    tag: int
    where: str = ""
    """Origin, for messages (``file, line N``)."""

    @property
    def num_crops(self) -> int:
        return self.box[3] - self.box[0]


def read_tags(csv_path: str | Path) -> list[Tag]:
    """Read and validate a tags CSV (format: ``WeakLabelsConfig.tags``).

    Every row is checked against its dataset (file, dataset, box inside it, tag 0/1); any
    problem is a one-line :class:`ConfigError` naming the file and line.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ConfigError("weak_labels.tags", f"tags file not found: {csv_path}")
    try:
        text = csv_path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(csv_path), f"cannot read: {e}") from None
    header: tuple[str, ...] | None = None
    shapes: dict[tuple[Path, str], tuple[int, ...]] = {}
    tags: list[Tag] = []
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        where = f"{csv_path}, line {lineno}"
        cells = [c.strip() for c in row]
        if not cells or all(not c for c in cells) or cells[0].startswith("#"):
            continue
        if header is None:
            header = tuple(c.lower() for c in cells)
            if header not in (TAG_HEADER_3D, TAG_HEADER_2D):
                raise ConfigError(
                    where,
                    f"header must be {','.join(TAG_HEADER_3D)} or {','.join(TAG_HEADER_2D)}, "
                    f"got {','.join(cells)}",
                )
            continue
        if len(cells) != len(header):
            raise ConfigError(where, f"expected {len(header)} columns, got {len(cells)}")
        path_s, dataset = cells[0], cells[1]
        if not path_s or not dataset:
            raise ConfigError(where, "empty path or dataset")
        try:
            nums = [int(c) for c in cells[2:]]
        except ValueError:
            bad = next(c for c in cells[2:] if not _is_int(c))
            raise ConfigError(
                where, f"expected whole numbers for the box and tag, got {bad!r}"
            ) from None
        *coords, tag = nums
        if tag not in (0, 1):
            raise ConfigError(where, f"tag must be 0 or 1, got {tag}")
        if header == TAG_HEADER_2D:
            z, y0, x0, y1, x1 = coords
            box = (z, y0, x0, z + 1, y1, x1)
        else:
            box = tuple(coords)  # type: ignore[assignment]
        if any(b < 0 for b in box) or any(box[i + 3] <= box[i] for i in range(3)):
            raise ConfigError(where, f"empty or negative box {list(box)} (z0,y0,x0,z1,y1,x1)")
        if box[4] - box[1] < 4 or box[5] - box[2] < 4:
            raise ConfigError(where, f"crop {list(box)} is smaller than 4 x 4 voxels in y, x")
        path = Path(path_s)
        if not path.is_absolute():
            path = csv_path.parent / path
        key = (path, dataset)
        if key not in shapes:
            try:
                arr = open_volume(DatasetRef(path=path, dataset=dataset))
            except ConfigError as e:
                raise ConfigError(where, e.what) from None
            if arr.channel_dims or len(arr.shape) != 3:
                raise ConfigError(where, f"{path}:{dataset} is not a 3D (z, y, x) volume")
            shapes[key] = tuple(arr.shape)
        shape = shapes[key]
        if any(box[i + 3] > shape[i] for i in range(3)):
            raise ConfigError(
                where, f"box {list(box)} reaches outside {path}:{dataset} of shape {list(shape)}"
            )
        tags.append(Tag(path, dataset, box, tag, where))  # type: ignore[arg-type]
    if header is None:
        raise ConfigError(str(csv_path), "no header and no rows")
    counts = {t: sum(x.num_crops for x in tags if x.tag == t) for t in (0, 1)}
    if not counts[0] or not counts[1]:
        raise ConfigError(
            str(csv_path),
            f"needs crops tagged 0 and crops tagged 1, got {counts[0]} and {counts[1]}",
        )
    return tags


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


def derive_tags(
    raw: DatasetRef,
    truth: DatasetRef,
    crop_shape: Sequence[int],
    min_fraction: float,
    z_range: tuple[int, int] | None = None,
) -> list[Tag]:
    """Tags by the documented rule (``DeriveTagsConfig``): every section of ``raw`` is cut into
    ``crop_shape`` crops; crop ``i`` of section ``z`` is 1 when at least ``min_fraction`` of it
    is ROI in ``truth`` (non-zero; same shape as ``raw``). Boxes refer to ``raw``."""
    roi = open_volume(truth, field="weak_labels.derive.truth")
    cy, cx = (int(c) for c in crop_shape)
    nz, ny, nx = roi.shape
    z0, z1 = z_range or (0, nz)
    tags = []
    for z in range(z0, z1):
        sec = np.asarray(roi._source_data[z]) != 0
        for y in range(0, ny - cy + 1, cy):
            for x in range(0, nx - cx + 1, cx):
                t = int(sec[y : y + cy, x : x + cx].mean() >= min_fraction)
                tags.append(Tag(Path(raw.path), raw.dataset, (z, y, x, z + 1, y + cy, x + cx), t))
    return tags


def load_crops(tags: Sequence[Tag]) -> tuple[list[np.ndarray], np.ndarray]:
    """The 2D crops of ``tags`` (one per z-section of each box) and their tags."""
    volumes: dict[tuple[Path, str], Any] = {}
    crops, labels = [], []
    for t in tags:
        key = (t.path, t.dataset)
        if key not in volumes:
            volumes[key] = open_volume(DatasetRef(path=t.path, dataset=t.dataset))._source_data
        z0, y0, x0, z1, y1, x1 = t.box
        block = np.asarray(volumes[key][z0:z1, y0:y1, x0:x1])
        crops.extend(block)
        labels.extend([t.tag] * len(block))
    return crops, np.asarray(labels, dtype=np.int64)


def tags_fingerprint(tags: Sequence[Tag]) -> str:
    h = hashlib.sha1()
    for t in tags:
        h.update(f"{Path(t.path).absolute()}|{t.dataset}|{t.box}|{t.tag}\n".encode())
    return h.hexdigest()
