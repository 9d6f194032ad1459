"""The classical mosaic: coarser on large faces, where an 8-cell mosaic still left an independent
recogniser matching more faces than a solid fill did (README, "How a frame goes through")."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.anonymize import build_anonymizers
from edge_agent.anonymize.base import face_region
from edge_agent.anonymize.classical import Pixelate
from edge_agent.config import AnonymizerConfig
from edge_agent.faces import Face


def _face(cx: float, cy: float, width: float) -> Face:
    half = width / 2
    lm = np.array([[cx - 0.2 * width, cy - 0.1 * width], [cx + 0.2 * width, cy - 0.1 * width], [cx, cy + 0.05 * width],
                   [cx - 0.15 * width, cy + 0.25 * width], [cx + 0.15 * width, cy + 0.25 * width]], np.float32)
    return Face(np.array([cx - half, cy - half * 1.2, cx + half, cy + half * 1.2], np.float32), lm, 0.9)


def _cells_across(anonymizer, width: float) -> int:
    """Distinct mosaic cells along the middle row of the redacted region (noise: every cell differs)."""
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    face = _face(320, 240, width)
    anonymizer.anonymize(frame, face, 0)
    rows, cols, mask = face_region(face, frame.shape)
    mid = mask.shape[0] // 2
    line = frame[rows, cols][mid][mask[mid] > 0]
    changes = np.any(line[1:] != line[:-1], axis=1).sum()
    return int(changes) + 1


@pytest.mark.parametrize("width,cells", [(30, 8), (59, 8), (60, 5), (200, 5)])
def test_mosaic_cells_by_face_width(width, cells):
    assert _cells_across(Pixelate(), width) <= cells
    assert _cells_across(Pixelate(), width) >= cells - 2  # the ellipse clips the outer cells, no more


def test_config_sets_both_cell_counts():
    engine, fallback = build_anonymizers(AnonymizerConfig(mode="pixelate", pixelate_blocks=12, pixelate_large_blocks=3))
    assert (engine.blocks, engine.large_blocks) == (12, 3) and (fallback.blocks, fallback.large_blocks) == (12, 3)
    assert _cells_across(engine, 200) <= 3
    assert _cells_across(engine, 40) > 8


def test_bad_cell_counts_are_refused():
    with pytest.raises(ValueError, match="blocks"):
        Pixelate(8, 1)
    with pytest.raises(Exception, match="pixelate_large_blocks"):
        AnonymizerConfig(pixelate_large_blocks=1)
