"""Hard clips composited at test time from the shared photos (nothing is written to the repo).

Faces are cut from real photos (registered people from photos they were *not* enrolled with),
scaled to camera size and moved over a real corridor frame: people who cross, hide behind a
pillar, swap places, or a hard cut that puts a stranger where a registered person stood.
Each frame comes with the box of every face in it and whether that face is registered.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

SIZE = (640, 360)
FPS = 15

# identity -> (photos to enrol, photo the clips use)
REGISTERED = {
    "guido": (["people/train/guido_van_rossum/guido_van_rossum1.jpg", "people/train/guido_van_rossum/guido_van_rossum2.jpg"],
              "people/test/test_guido_van_rossum.jpg"),
    "paul": (["people/train/paul_allen/paul_allen.jpg", "people/train/paul_allen/paul_allen3.jpg"], "people/test/test_paul_allen.jpg"),
}
STRANGERS = {"steve": "people/test/test_steve_wozniak.jpg", "biden": "face_recognition/examples/biden.jpg",
             "person01": "deepface/img1.jpg"}


@dataclass
class Patch:
    image: np.ndarray  # square BGR cut-out around the face
    face: np.ndarray  # the face box inside the patch (x1, y1, x2, y2)


@dataclass
class Actor:
    name: str
    registered: bool
    patch: Patch
    where: Callable[[int], Optional[tuple[int, int]]]  # frame -> patch top-left, or None (absent)


@dataclass
class Frame:
    image: np.ndarray
    faces: list[tuple[str, bool, np.ndarray]]  # (who, registered, face box in the frame)


def face_patch(photo: Path, detector, face_px: int) -> Patch:
    """The photo's largest face, scaled to ``face_px`` wide, with twice its width of context."""
    image = cv2.imread(str(photo))
    face = max(detector.detect(image), key=lambda f: f.width * f.height)
    scale = face_px / face.width
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    cx, cy = (face.box[:2] + face.box[2:]) / 2 * scale
    half = face_px  # patch side = 2 face widths
    x0, y0 = int(round(cx - half)), int(round(cy - half))
    padded = cv2.copyMakeBorder(small, 2 * half, 2 * half, 2 * half, 2 * half, cv2.BORDER_REPLICATE)
    cut = padded[y0 + 2 * half:y0 + 4 * half, x0 + 2 * half:x0 + 4 * half].copy()
    box = np.concatenate([face.box[:2] * scale - [x0, y0], face.box[2:] * scale - [x0, y0]]).astype(np.float32)
    return Patch(cut, box)


def background(shared: Path, index: int = 0) -> np.ndarray:
    """A frame of the corridor clip (people far away, no usable faces), at the clips' size."""
    cap = cv2.VideoCapture(str(shared / "video/intel_one-by-one-person-detection.mp4"))
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = cap.read()
    cap.release()
    assert ok, "corridor clip unreadable"
    return cv2.resize(frame, SIZE, interpolation=cv2.INTER_AREA)


def other_scene(shared: Path) -> np.ndarray:
    """Another camera: a later corridor frame, mirrored and darker."""
    frame = cv2.flip(background(shared, 900), 1)
    return (frame * 0.6).astype(np.uint8)


def render(scene: Callable[[int], np.ndarray], actors: list[Actor], frames: int,
           occluders: list[tuple[int, int, int, int]] = ()) -> list[Frame]:
    """Paste the actors (later ones in front) and the occluders (in front of everyone)."""
    out = []
    for i in range(frames):
        image = scene(i).copy()
        faces = []
        for actor in actors:
            at = actor.where(i)
            if at is None:
                continue
            x, y = at
            h, w = actor.patch.image.shape[:2]
            image[y:y + h, x:x + w] = actor.patch.image
            faces.append((actor.name, actor.registered, actor.patch.face + [x, y, x, y]))
        for x1, y1, x2, y2 in occluders:
            image[y1:y2, x1:x2] = (90, 90, 90)
            faces = [f for f in faces if not _covered(f[2], (x1, y1, x2, y2))]
        out.append(Frame(image, faces))
    return out


def _covered(box: np.ndarray, rect) -> bool:
    x1, y1, x2, y2 = rect
    return box[0] < x2 and box[2] > x1 and box[1] < y2 and box[3] > y1


def walk(start: tuple[float, float], velocity: tuple[float, float], first: int = 0, last: int = 10**9):
    def where(i: int):
        if not first <= i <= last:
            return None
        return int(round(start[0] + velocity[0] * (i - first))), int(round(start[1] + velocity[1] * (i - first)))

    return where


class Cast:
    """Face patches of the clips' people, cut once."""

    def __init__(self, shared: Path, detector, face_px: int = 56) -> None:
        faces = shared / "faces"
        self.patches = {name: face_patch(faces / probe, detector, face_px) for name, (_, probe) in REGISTERED.items()}
        self.patches.update({name: face_patch(faces / photo, detector, face_px) for name, photo in STRANGERS.items()})
        self.shared = shared

    def actor(self, name: str, where) -> Actor:
        return Actor(name, name in REGISTERED, self.patches[name], where)

    def scenarios(self) -> dict[str, list[Frame]]:
        bg, other = background(self.shared), other_scene(self.shared)
        still = lambda i: bg
        return {
            # 3 s of guido, then a hard cut to another scene with a stranger's face in his box.
            "cut": render(lambda i: bg if i < 45 else other,
                          [self.actor("guido", walk((300, 120), (0, 0), 0, 44)), self.actor("steve", walk((300, 120), (0, 0), 45))], 75),
            # Same scene, same box: the face alone changes (a spliced feed).
            "swap_in_place": render(still, [self.actor("paul", walk((200, 100), (0.5, 0), 0, 44)),
                                            self.actor("biden", walk((222, 100), (0.5, 0), 45))], 75),
            # Guido and a stranger walk toward each other and cross (the stranger passes in front).
            "cross": render(still, [self.actor("guido", walk((80, 130), (6, 0))), self.actor("person01", walk((480, 135), (-6, 0)))], 60),
            # Paul walks behind a pillar; a stranger comes out where he would.
            "occlude": render(still, [self.actor("paul", walk((100, 120), (5, 0), 0, 30)),
                                      self.actor("steve", walk((255, 120), (5, 0), 31))], 60, occluders=[(260, 0, 330, 360)]),
            # Guido and a stranger stand side by side and swap places between two frames.
            "swap_places": render(still, [self.actor("guido", lambda i: (150, 120) if i < 40 else (350, 120)),
                                          self.actor("steve", lambda i: (350, 120) if i < 40 else (150, 120))], 70),
        }


def face_unchanged(original: np.ndarray, output: np.ndarray, box: np.ndarray, tolerance: float = 0.0) -> bool:
    """The inner face (eyes to mouth) left as it was: exactly, or within ``tolerance`` mean grey
    levels for frames that went through a video codec."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    ix1, iy1, ix2, iy2 = (int(v) for v in (x1 + 0.2 * w, y1 + 0.25 * h, x2 - 0.2 * w, y2 - 0.15 * h))
    a, b = original[iy1:iy2, ix1:ix2], output[iy1:iy2, ix1:ix2]
    if tolerance == 0.0:
        return bool(np.array_equal(a, b))
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean()) <= tolerance


def write_video(frames: list[Frame], path: Path) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    for frame in frames:
        writer.write(frame.image)
    writer.release()
