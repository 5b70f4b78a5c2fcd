"""Per-frame restoration shared by every front end (file, live, ZeroMQ service):
track + align faces, then inpaint the covered region and composite it back."""

from __future__ import annotations

from dataclasses import dataclass

from stream.align import align_face
from stream.composite import composite, feather
from stream.detect import DetectorOptions, FaceDetector
from stream.inpaint import Inpainter
from stream.occlusion import OcclusionModel
from stream.track import FaceTracker, TrackerOptions
from stream.types import AlignedFace, InpaintResult, Occlusion, VideoFrame


@dataclass(frozen=True, eq=False)
class TrackedFace:
    """One face of a frame, aligned to the crop template."""

    track_id: int
    box: tuple[float, float, float, float]
    aligned: AlignedFace


@dataclass(frozen=True, eq=False)
class FrameFaces:
    """A frame and the faces tracked in it, before restoration."""

    frame: VideoFrame
    faces: tuple[TrackedFace, ...]

    @property
    def track_ids(self) -> tuple[int, ...]:
        """Ids of the faces in this frame, in track-id order."""
        return tuple(f.track_id for f in self.faces)


@dataclass(frozen=True, eq=False)
class RestoredFace:
    """What was done to one face: its covered region and the inpainting result."""

    track_id: int
    box: tuple[float, float, float, float]
    occlusion: Occlusion
    result: InpaintResult


@dataclass(frozen=True, eq=False)
class RestoredFrame:
    """The output frame and, per face, what was restored."""

    frame: VideoFrame
    faces: tuple[RestoredFace, ...]

    @property
    def track_ids(self) -> tuple[int, ...]:
        """Ids of the faces in this frame, in track-id order."""
        return tuple(f.track_id for f in self.faces)


class FaceAnalyser:
    """Tracks faces through one stream (stateful: feed frames in order)."""

    def __init__(
        self,
        detector: DetectorOptions | None = None,
        tracker: TrackerOptions | None = None,
    ) -> None:
        self._tracker = FaceTracker(
            FaceDetector(detector or DetectorOptions()), tracker or TrackerOptions()
        )

    def analyse(self, frame: VideoFrame) -> FrameFaces:
        """Track the faces of the next frame and align each to the crop template."""
        tracks = self._tracker.update(frame)
        faces = tuple(
            TrackedFace(
                track_id=t.track_id,
                box=t.detection.box,
                aligned=align_face(frame.image, t.smoothed_landmarks),
            )
            for t in tracks
        )
        return FrameFaces(frame=frame, faces=faces)


def restore_frame(
    work: FrameFaces,
    inpainter: Inpainter,
    occlusion: OcclusionModel,
    feather_px: float,
) -> RestoredFrame:
    """Inpaint every face of ``work`` (one batch) and blend the covered regions back."""
    if not work.faces:
        return RestoredFrame(frame=work.frame, faces=())
    aligned = [f.aligned for f in work.faces]
    occlusions = occlusion.predict(aligned)
    results = inpainter.inpaint([a.crop for a in aligned], [o.mask_256 for o in occlusions])
    image = work.frame.image
    restored = []
    for face, occ, result in zip(work.faces, occlusions, results, strict=True):
        weight = feather(occ.mask_256, feather_px)
        image = composite(image, result.face_256, weight, face.aligned.inverse_affine)
        restored.append(
            RestoredFace(track_id=face.track_id, box=face.box, occlusion=occ, result=result)
        )
    frame = VideoFrame(
        index=work.frame.index, pts=work.frame.pts, time_base=work.frame.time_base, image=image
    )
    return RestoredFrame(frame=frame, faces=tuple(restored))
