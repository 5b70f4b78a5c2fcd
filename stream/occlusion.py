"""Which pixels of each aligned face are covered: the ``OcclusionModel`` interface and the
fixed region given on the command line (``--mask-box`` / ``--mask-image``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol, runtime_checkable

from stream.align import Placement
from stream.types import AlignedFace, Mask, Occlusion


class OcclusionModel(Protocol):
    """Says which pixels of each aligned crop are covered."""

    def predict(
        self, faces: list[AlignedFace], track_ids: Sequence[int] | None = None
    ) -> list[Occlusion]:
        """One ``Occlusion`` per face, same order. ``track_ids``: the tracker's id of each
        face, for models that keep per-face state (None: match faces by position)."""
        ...

    def reset(self) -> None:
        """Forget per-face state (a new stream or connection: track ids start over)."""
        ...


@runtime_checkable
class PlacesCovered(Protocol):
    """A region model that crops its covered faces again where the face really lies, and
    segments them again there (``stream.restore.place_covered``)."""

    def placement(self) -> Placement | None:
        """How to place a covered face's crop (None: do not)."""
        ...

    def predict_placed(self, faces: list[AlignedFace], track_ids: Sequence[int]) -> list[Occlusion]:
        """One ``Occlusion`` per placed face of the latest ``predict``, same order."""
        ...


@dataclass(frozen=True, eq=False)
class FixedRegion:
    """The same crop-space region on every face."""

    mask_256: Mask

    @cached_property
    def coverage(self) -> float:
        """The fraction of the face region (``mask_detect.face_region``) the region covers:
        the same measure ``--mask-detect`` reports, so a fixed and a detected region read
        alike in logs, stats and the provenance sidecar."""
        from stream.mask_detect import face_region

        face = face_region()
        return float(((self.mask_256 > 0.5) & face).sum()) / float(face.sum())

    def predict(
        self, faces: list[AlignedFace], track_ids: Sequence[int] | None = None
    ) -> list[Occlusion]:
        """The fixed region for each face; ``score`` is its ``coverage``."""
        return [Occlusion(mask_256=self.mask_256, score=self.coverage) for _ in faces]

    def reset(self) -> None:
        """Nothing to forget: the region is the same for every face."""
