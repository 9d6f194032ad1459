"""Are registered people shown where an independent recogniser recognises them, and nobody else?

    nice python -m model_export.shown_check --shared DIR [--config FILE] [--out reports/recognition]

The demo clip with Lin-Manuel Miranda and Alex Lacamoire registered from one photo each, run
through the agent's own pipeline (``Models.pipeline``). Ground truth comes from dlib (HOG
detector + ResNet descriptor, ``anonymizer/independent.py``), which shares nothing with the
agent's YuNet + MobileFaceNet: a face dlib puts within 0.6 of a registered person's photo is that
person; a face far from both is a stranger. Shown = the face box's pixels unchanged in the output.
Writes demo_clip.json and demo_clip.md (numbers only).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge_agent.config import load_config
from edge_agent.enroll import embed_photos
from edge_agent.service import Models
from edge_agent.stats import CameraStats
from model_export.anonymizer.independent import SAME_PERSON, DlibCheck

PEOPLE = {"lin": "lin-manuel-miranda.png", "alex": "alex-lacamoire.png"}
STRANGER = 0.7  # dlib distance from every registered person beyond which a face is surely someone else


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, required=True)
    parser.add_argument("--config", type=Path, help="agent config (default: built-in defaults)")
    parser.add_argument("--out", type=Path, default=Path("reports/recognition"))
    args = parser.parse_args(argv)
    config = load_config(args.config)
    config.data_dir = Path(tempfile.mkdtemp(prefix="shown-check-"))
    models = Models(config)
    dlib_check = DlibCheck()
    examples = args.shared / "faces/face_recognition/examples"
    references = {}
    rec = config.recognition
    for name, photo in PEOPLE.items():
        enrolment = embed_photos([examples / photo], models.detector, models.embedder, rec.min_face_px, rec.threshold, rec.max_null_similarity)
        models.registry.upsert_person(name, enrolment.templates, models.model_sig)
        image = cv2.imread(str(examples / photo))
        rects = dlib_check.hog(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), 1)
        box = max(((r.left(), r.top(), r.right(), r.bottom()) for r in rects), key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
        references[name] = dlib_check.embed(image, dlib_check.shape(image, box))
    names = list(references)
    refs = np.stack([references[n] for n in names])
    guard = models.pipeline(CameraStats("demo"))
    cap = cv2.VideoCapture(str(args.shared / "video/short_hamilton_clip.mp4"))
    counts = {n: {"recognised": 0, "shown": 0, "hidden_frames": []} for n in names}
    strangers = {"faces": 0, "shown": 0, "frames_shown": []}
    index = 0
    with tqdm(total=int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), desc="demo clip", unit="frame") as bar:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            original = frame.copy()
            out, _ = guard.filter_array(frame)
            rgb = cv2.cvtColor(original, cv2.COLOR_BGR2RGB)
            for r in dlib_check.hog(rgb, 1):
                box = (max(r.left(), 0), max(r.top(), 0), min(r.right(), original.shape[1]), min(r.bottom(), original.shape[0]))
                if box[2] - box[0] < 8 or box[3] - box[1] < 8:
                    continue
                dist = np.linalg.norm(refs - dlib_check.embed(original, dlib_check.shape(original, box)), axis=1)
                x1, y1, x2, y2 = box
                same = bool(np.array_equal(out[y1:y2, x1:x2], original[y1:y2, x1:x2]))
                best = int(np.argmin(dist))
                if dist[best] < SAME_PERSON:
                    counts[names[best]]["recognised"] += 1
                    counts[names[best]]["shown"] += same
                    if not same:
                        counts[names[best]]["hidden_frames"].append(index)
                elif dist.min() >= STRANGER:
                    strangers["faces"] += 1
                    if same:
                        strangers["shown"] += 1
                        strangers["frames_shown"].append(index)
            index += 1
            bar.update()
    guard.close()
    result = {"frames": index, "config": str(args.config or "defaults"), "registered": counts, "strangers": strangers,
              "pipeline": guard.stats.snapshot()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "demo_clip.json").write_text(json.dumps(result, indent=2))
    lines = ["# Demo clip: shown where an independent recogniser recognises them", "",
             f"Command: `nice python -m model_export.shown_check --shared DIR{' --config ' + str(args.config) if args.config else ''}`", "",
             "| person | frames dlib recognises them (distance < 0.6) | shown unmodified | fraction |", "|---|---|---|---|"]
    for name, c in counts.items():
        lines.append(f"| {name} | {c['recognised']} | {c['shown']} | {c['shown'] / max(c['recognised'], 1):.1%} |")
    lines += ["", f"Strangers (dlib distance >= {STRANGER} from both): {strangers['faces']} faces, {strangers['shown']} shown."]
    (args.out / "demo_clip.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
