"""Which pixels of each aligned face are covered: the ``OcclusionModel`` interface and the
fixed region given on the command line (``--mask-box`` / ``--mask-image``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from stream.types import AlignedFace, Mask, Occlusion


class OcclusionModel(Protocol):
    """Says which pixels of each aligned crop are covered."""

    def predict(self, faces: list[AlignedFace]) -> list[Occlusion]:
        """One ``Occlusion`` per face, same order."""
        ...


@dataclass(frozen=True, eq=False)
class FixedRegion:
    """The same crop-space region on every face."""

    mask_256: Mask

    def predict(self, faces: list[AlignedFace]) -> list[Occlusion]:
        """The fixed region for each face, with full confidence."""
        return [Occlusion(mask_256=self.mask_256, score=1.0) for _ in faces]
