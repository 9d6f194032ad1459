"""`make eval-anonymizer`: re-identification, cosine, validity, landmark faithfulness, temporal
stability, teacher vs student per step count, the degree sweep; markdown + plots + image grid.

Protocol (held-out LFW identities, never seen in training):
- gallery: the ORIGINAL image of each held-out identity (one per identity, >= 1,000), embedded
  with the project's MobileFaceNet ArcFace after 5-point alignment;
- probe: the same image after anonymization, aligned with the ORIGINAL landmarks (the attacker
  gets the best possible alignment), embedded the same way;
- re-ID rank-1: fraction of probes whose nearest gallery entry is their own original;
- mean cosine: probe vs its own original;
- validity: YuNet finds a face (IoU >= 0.3 with the original box) in the anonymized image;
- landmark error: YuNet's landmarks on the anonymized image vs the original's, mean point
  distance / inter-ocular distance (NME), over valid detections.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge_agent.align import align
from edge_agent.anonymize.classical import Blur, Pixelate
from edge_agent.anonymize.diffusion import DiffusionAnonymizer, aligned_crop, conditions, seed_noise, to_unit
from edge_agent.models.arcface import ArcFaceEmbedder
from edge_agent.models.yunet import YuNet
from edge_agent.tracker import box_iou as iou
from model_export.anonymizer.data import arcface_path, central_face, yunet_path
from model_export.anonymizer.realism import new_tracks


class _Fixed(DiffusionAnonymizer):
    """The student's anonymizer (same conditions, paste-back and settings as the eval rows) whose
    generator is a python callable: teacher samples computed beforehand."""

    def __init__(self, fn, student: Path) -> None:
        super().__init__(student, regenerate_every=0, budget_ms=None, min_face_px=0)
        self.fn = fn

    def generate(self, noise, cond):
        return self.fn(noise, cond)


class Evaluator:
    def __init__(self, shared: Path, threads: int = 2) -> None:
        self.det = YuNet(yunet_path(shared), threads=threads)
        self.emb = ArcFaceEmbedder(arcface_path(shared), threads=threads)

    def run(self, images, faces, anonymizer, gallery, seeds, desc: str, keep: int = 0):
        """Anonymize each image, measure; returns metrics dict and the first ``keep`` outputs."""
        probes, valid, nme, kept, ms = [], [], [], [], []
        for img, face, seed in tqdm(list(zip(images, faces, seeds)), desc=desc, unit="face", leave=False):
            out = img.copy()
            t0 = time.perf_counter()
            with new_tracks(anonymizer, seed):
                anonymizer.anonymize(out, face, seed)
            ms.append((time.perf_counter() - t0) * 1000)
            probes.append(align(out, face.landmarks, 112)[0])
            dets = self.det.detect(out)
            best = max(dets, key=lambda d: iou(d.box, face.box), default=None)
            ok = best is not None and iou(best.box, face.box) >= 0.3
            valid.append(ok)
            if ok:
                iod = np.linalg.norm(face.landmarks[0] - face.landmarks[1])
                nme.append(float(np.linalg.norm(best.landmarks - face.landmarks, axis=1).mean() / max(iod, 1e-3)))
            if len(kept) < keep:
                kept.append(out)
        emb = self.emb.embed_crops(np.stack(probes))
        return emb, {"valid": float(np.mean(valid)), "nme": float(np.mean(nme)) if nme else float("nan"),
                     "ms_per_face": float(np.median(ms))}, kept


def reid(emb: np.ndarray, gallery: np.ndarray, own: np.ndarray, gallery_ids=None, probe_ids=None) -> dict:
    sims = emb @ gallery.T
    top = sims.argmax(1)
    cos = sims[np.arange(len(emb)), own]
    if gallery_ids is not None:
        hit = gallery_ids[top] == probe_ids
    else:
        hit = top == own
    return {"reid_rank1": float(np.mean(hit)), "mean_cos": float(np.mean(cos)), "n_probes": int(len(emb)), "gallery": int(len(gallery))}


def load_lfw(shared: Path, data: Path, n: int, det: YuNet):
    d = np.load(Path(data) / "lfw.npz")
    held = np.nonzero(d["heldout"])[0]
    ids = d["identity"][held]
    first = {}
    for i, pid in zip(held, ids):
        first.setdefault(int(pid), int(i))
    order = sorted(first.values())[:n]
    images, faces = [], []
    for i in tqdm(order, desc="held-out originals", unit="img", leave=False):
        img = cv2.imread(str(Path(shared) / str(d["paths"][i])))
        face = central_face(det.detect(img), img.shape)
        images.append(img); faces.append(face)
    return images, faces


def video_stability(shared: Path, anon: DiffusionAnonymizer, det: YuNet, out_dir: Path) -> dict:
    """Frame-to-frame mean absolute change inside each tracked face region, anonymized / original."""
    from edge_agent.anonymize.base import face_region

    cap = cv2.VideoCapture(str(Path(shared) / "video/short_hamilton_clip.mp4"))
    tracks: dict[int, np.ndarray] = {}
    next_id = 1
    prev_orig, prev_anon, prev_faces = None, None, []
    d_orig, d_anon, times, n_faces, example = [], [], [], 0, None
    frame_no = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frame_no += 1
        faces = det.detect(frame)
        assigned = []
        for f in faces:  # greedy IoU tracker
            best = max(tracks.items(), key=lambda kv: iou(kv[1], f.box), default=None)
            if best is not None and iou(best[1], f.box) > 0.3 and best[0] not in assigned:
                tid = best[0]
            else:
                tid, next_id = next_id, next_id + 1
            tracks[tid] = f.box
            assigned.append(tid)
        for tid in list(tracks):
            if tid not in assigned:
                tracks.pop(tid); anon.forget(tid)
        out = frame.copy()
        anon.begin_frame(faces)  # as the pipeline: the frame's faces known (the donor's replays)
        t0 = time.perf_counter()
        for f, tid in zip(faces, assigned):
            anon.anonymize(out, f, tid)
        times.append((time.perf_counter() - t0) * 1000)
        n_faces += len(faces)
        if prev_orig is not None:
            for f, tid in zip(faces, assigned):
                if tid not in [t for _, t in prev_faces]:
                    continue
                try:
                    rows, cols, m = face_region(f, frame.shape)
                    m = m.astype(bool)
                except ValueError:
                    continue
                a = np.abs(out[rows, cols].astype(np.float32) - prev_anon[rows, cols].astype(np.float32))[m].mean()
                o = np.abs(frame[rows, cols].astype(np.float32) - prev_orig[rows, cols].astype(np.float32))[m].mean()
                d_anon.append(a); d_orig.append(o)
        if frame_no == 120:
            example = np.concatenate([frame, out], 1)
        prev_orig, prev_anon, prev_faces = frame, out, list(zip(faces, assigned))
    if example is not None:
        cv2.imwrite(str(out_dir / "video_frame.jpg"), cv2.resize(example, (example.shape[1] // 2, example.shape[0] // 2)), [cv2.IMWRITE_JPEG_QUALITY, 80])
    return {"frames": frame_no, "faces": n_faces, "stability_ratio": float(np.mean(d_anon) / max(np.mean(d_orig), 1e-6)),
            "mean_change_anon": float(np.mean(d_anon)), "mean_change_orig": float(np.mean(d_orig)),
            "anonymize_ms_per_frame_mean": float(np.mean(times)), "anonymize_ms_per_frame_p95": float(np.percentile(times, 95)),
            "generated": anon.stats.get("generated"), "reused": anon.stats.get("reused")}


def evaluate(args) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ev = Evaluator(args.shared, threads=args.threads)
    images, faces = load_lfw(args.shared, args.data, args.gallery, ev.det)
    n = len(images)
    gallery = ev.emb.embed_crops(np.stack([align(im, f.landmarks, 112)[0] for im, f in zip(images, faces)]))
    own = np.arange(n)
    seeds = [10_000 + i for i in range(n)]
    results: dict = {"gallery_identities": n}
    rows = []

    def record(name, method, steps, degree, idx, anonymizer, keep=0):
        emb, m, kept = ev.run([images[i] for i in idx], [faces[i] for i in idx], anonymizer, gallery, [seeds[i] for i in idx], name, keep)
        m.update(reid(emb, gallery, own[idx]))
        m.update(name=name, method=method, steps=steps, degree=degree)
        rows.append(m)
        print(f"{name:28s} re-ID {m['reid_rank1'] * 100:5.1f}%  cos {m['mean_cos']:.3f}  valid {m['valid'] * 100:5.1f}%  "
              f"NME {m['nme']:.3f}  ({m['n_probes']} probes / {m['gallery']} gallery)")
        return kept

    all_idx = np.arange(n)
    sweep_idx = all_idx[: min(400, n)]
    small_idx = all_idx[: min(args.teacher_faces, n)]
    student = DiffusionAnonymizer(args.student, threads=args.threads, budget_ms=None, min_face_px=0)
    grid = {"original": [images[i] for i in small_idx[:8]]}
    grid["student 1-step d=1"] = record("student 1-step d=1.0", "student", student.steps, 1.0, all_idx, student, keep=8)
    for d in (0.0, 0.5, 1.5, 2.0):
        record(f"student 1-step d={d}", "student", student.steps, d, sweep_idx, DiffusionAnonymizer(args.student, degree=d, threads=args.threads, budget_ms=None, min_face_px=0))
    if Path(args.student2).exists():
        s2 = DiffusionAnonymizer(args.student2, threads=args.threads, budget_ms=None, min_face_px=0)
        grid["student 2-step d=1"] = record("student 2-step d=1.0", "student", 2, 1.0, small_idx, s2, keep=8)
    grid["blur"] = record("blur (classical)", "blur", 0, float("nan"), small_idx, Blur(), keep=8)
    record("pixelate (classical)", "pixelate", 0, float("nan"), small_idx, Pixelate(), keep=0)

    if Path(args.teacher).exists():
        from model_export.anonymizer.teacher import load_teacher, sample_teacher

        teacher, _ = load_teacher(args.teacher)
        pattern = student.pattern
        conds, noises = [], []
        for i in small_idx:
            crop, _, lm = aligned_crop(images[i], faces[i])
            conds.append(conditions(to_unit(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)), lm, 1.0, pattern))
            noises.append(seed_noise(seeds[i])[0])
        conds_t, noises_t = torch.from_numpy(np.stack(conds)), torch.from_numpy(np.stack(noises))
        for steps in (1, 2, 4, 20):
            outs = []
            for s in tqdm(range(0, len(conds_t), 50), desc=f"teacher {steps} steps", leave=False):
                outs.append(sample_teacher(teacher, noises_t[s : s + 50], conds_t[s : s + 50], steps).numpy())
            outs = list(np.concatenate(outs)[:, 0])
            queue = iter(outs)
            kept = record(f"teacher {steps}-step d=1.0", "teacher", steps, 1.0, small_idx, _Fixed(lambda n_, c_: next(queue), args.student))
            if steps == 20:
                grid["teacher 20-step d=1"] = [images[i].copy() for i in small_idx[:8]]
                queue2 = iter(outs)
                fx = _Fixed(lambda n_, c_: next(queue2), args.student)
                for k, i in enumerate(small_idx[:8]):
                    fx.anonymize(grid["teacher 20-step d=1"][k], faces[i], seeds[i])
    # student on the same subset, for the teacher-vs-student table
    record("student 1-step d=1.0 (subset)", "student", student.steps, 1.0, small_idx, student)
    results["lfw"] = rows

    # colour photos (25 identities, 94 faces): identity-level rank-1 over all other originals
    import csv

    crow = list(csv.DictReader(open(Path(args.shared) / "faces/identities.csv")))
    cimgs, cfaces, cids = [], [], []
    for r in crow:
        img = cv2.imread(str(Path(args.shared) / "faces" / r["path"]))
        if img is None:
            continue
        fs = ev.det.detect(img)
        if not fs:
            continue
        cimgs.append(img); cfaces.append(max(fs, key=lambda f: f.width * f.height)); cids.append(r["identity"])
    cids = np.array(cids)
    cgal = ev.emb.embed_crops(np.stack([align(im, f.landmarks, 112)[0] for im, f in zip(cimgs, cfaces)]))
    colour = {}
    for name, an in (("student d=1.0", student), ("blur", Blur())):
        emb, m, kept = ev.run(cimgs, cfaces, an, cgal, list(range(1, len(cimgs) + 1)), f"colour {name}", keep=8)
        sims = emb @ cgal.T
        cos_own = float(np.mean(sims[np.arange(len(emb)), np.arange(len(emb))]))
        # same-identity rank-1 among the OTHER photos (own original excluded) and with it included
        s_ex = sims.copy(); s_ex[np.arange(len(emb)), np.arange(len(emb))] = -2
        m.update(reid_rank1_own_included=float(np.mean(sims.argmax(1) == np.arange(len(emb)))),
                 reid_rank1_other_photos=float(np.mean(cids[s_ex.argmax(1)] == cids)), mean_cos=cos_own, n=len(emb))
        colour[name] = m
        if name.startswith("student"):
            ckept = kept
        print(f"colour {name}: {m}")
    s_ex = cgal @ cgal.T; np.fill_diagonal(s_ex, -2)
    colour["originals_rank1_other_photos"] = float(np.mean(cids[s_ex.argmax(1)] == cids))
    results["colour"] = colour

    # temporal stability on video (default agent settings, no budget so every face is generated)
    vid_anon = DiffusionAnonymizer(args.student, threads=args.threads, budget_ms=None, min_face_px=0)
    results["video"] = video_stability(args.shared, vid_anon, ev.det, out_dir)
    print("video:", results["video"])

    # ---- plots
    sweep = sorted([r for r in rows if r["method"] == "student" and r["steps"] == student.steps and "subset" not in r["name"] and "2-step" not in r["name"]], key=lambda r: r["degree"])
    fig, ax = plt.subplots(1, 2, figsize=(8, 3.2), dpi=80)
    ax[0].plot([r["degree"] for r in sweep], [100 * r["reid_rank1"] for r in sweep], "o-", label="re-ID rank-1 %")
    ax[0].axhline(2.0, color="r", ls="--", lw=1, label="target 2%")
    ax[0].set_xlabel("degree"); ax[0].set_ylabel("re-ID rank-1 (%)"); ax[0].legend(); ax[0].set_title(f"gallery {n} identities")
    ax[1].plot([r["degree"] for r in sweep], [r["mean_cos"] for r in sweep], "o-", label="mean cosine")
    ax[1].plot([r["degree"] for r in sweep], [r["valid"] for r in sweep], "s-", label="validity")
    ax[1].plot([r["degree"] for r in sweep], [r["nme"] for r in sweep], "^-", label="landmark NME")
    ax[1].set_xlabel("degree"); ax[1].legend(fontsize=8)
    fig.tight_layout(); fig.savefig(out_dir / "degree_sweep.png"); plt.close(fig)

    tv = [r for r in rows if r["method"] == "teacher" or "subset" in r["name"] or "2-step" in r["name"]]
    if tv:
        fig, ax = plt.subplots(figsize=(7, 3), dpi=80)
        labels = [r["name"].replace(" d=1.0", "").replace(" (subset)", "") for r in tv]
        x = np.arange(len(tv))
        ax.bar(x - 0.2, [100 * r["reid_rank1"] for r in tv], 0.4, label="re-ID %")
        ax.bar(x + 0.2, [100 * r["valid"] for r in tv], 0.4, label="validity %")
        ax.set_xticks(x); ax.set_xticklabels(labels, rotation=20, fontsize=8); ax.legend(fontsize=8)
        fig.tight_layout(); fig.savefig(out_dir / "teacher_vs_student.png"); plt.close(fig)

    # ---- image grid: rows = methods, columns = faces (face crops at 96 px)
    def tile(img, face):
        c, _ = align(img, face.landmarks, 96, 0.25)
        return c

    grid_rows = []
    for label, imgs in grid.items():
        tiles = [tile(im, faces[small_idx[k]]) for k, im in enumerate(imgs[:8])]
        row = np.concatenate(tiles, 1)
        cv2.putText(row, label, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 255), 1)
        grid_rows.append(row)
    cv2.imwrite(str(out_dir / "grid_lfw.jpg"), np.concatenate(grid_rows, 0), [cv2.IMWRITE_JPEG_QUALITY, 85])
    ctiles_o = [align(cimgs[k], cfaces[k].landmarks, 96, 0.25)[0] for k in range(len(ckept))]
    ctiles_a = [align(ckept[k], cfaces[k].landmarks, 96, 0.25)[0] for k in range(len(ckept))]
    cv2.imwrite(str(out_dir / "grid_colour.jpg"), np.concatenate([np.concatenate(ctiles_o, 1), np.concatenate(ctiles_a, 1)], 0), [cv2.IMWRITE_JPEG_QUALITY, 85])

    (out_dir / "metrics.json").write_text(json.dumps(results, indent=1))
    write_markdown(out_dir, results, args)
    return results


def write_markdown(out_dir: Path, res: dict, args) -> None:
    lines = ["# Diffusion anonymizer — evaluation", "",
             f"Command: `python -m model_export.anonymizer eval --shared $SHARED` (student `{args.student}`, teacher `{args.teacher}`).", "",
             f"Held-out LFW identities (never in training): gallery = {res['gallery_identities']} originals, one per identity; "
             "probe = the same image anonymized, aligned with the original landmarks; recogniser = project MobileFaceNet ArcFace.", "",
             "| config | probes | re-ID rank-1 | mean cos | validity | landmark NME | ms/face |", "|---|---|---|---|---|---|---|"]
    for r in res["lfw"]:
        ms = "batched*" if r["method"] == "teacher" else f"{r['ms_per_face']:.1f}"
        lines.append(f"| {r['name']} | {r['n_probes']} | {100 * r['reid_rank1']:.1f}% | {r['mean_cos']:.3f} | {100 * r['valid']:.1f}% | {r['nme']:.3f} | {ms} |")
    lines += ["", "ms/face: median wall time of one `anonymize` call (align + generate + paste) on this shared 2-core CPU, "
              "1 onnxruntime thread; *teacher rows were generated in torch batches beforehand, see the bench below for its per-face latency. "
              "Blur/pixelate 'validity' is 0 by design (no face left), which is why they are not an answer."]
    for bj in sorted(out_dir.glob("bench_*.json")):
        b = json.loads(bj.read_text())
        lines += ["", f"Bench (`python -m model_export.anonymizer --threads {b['threads']} bench`, 64x64 crop, {b['threads']} thread(s)): "
                  f"student ONNX call {b['student_onnx_ms']:.1f} ms, student per face {b['student_face_ms']:.1f} ms, "
                  f"cached (warped) face {b['cached_face_ms']:.1f} ms, teacher {b.get('teacher_steps', 20)} DDIM steps {b.get('teacher_ms', float('nan')):.0f} ms "
                  f"→ student {b.get('speedup', float('nan')):.1f}x faster."]
    c = res["colour"]
    lines += ["", "## Colour photos (94 faces, 25 identities)", "",
              "| config | re-ID rank-1 (own original in gallery) | rank-1 same identity among other photos | mean cos to own original | validity | NME |",
              "|---|---|---|---|---|---|"]
    for k in ("student d=1.0", "blur"):
        m = c[k]
        lines.append(f"| {k} | {100 * m['reid_rank1_own_included']:.1f}% | {100 * m['reid_rank1_other_photos']:.1f}% | {m['mean_cos']:.3f} | {100 * m['valid']:.1f}% | {m['nme']:.3f} |")
    lines.append(f"| originals (reference) | — | {100 * c['originals_rank1_other_photos']:.1f}% | 1.000 | | |")
    ind = out_dir / "independent.json"
    if ind.exists():
        r = json.loads(ind.read_text())
        lines += ["", "## Independent recogniser and detector (dlib)", "",
                  f"`python -m model_export.anonymizer eval-independent --shared $SHARED` — {r['recogniser']}, 128-d, its own training data "
                  f"and alignment; HOG frontal-face detector for validity. Gallery: {r['gallery']} held-out originals; probes as above "
                  "(same faces, same seeds). 'same person' = distance to the own original < 0.6 (dlib's threshold); chance level: "
                  f"{100 * r['impostor_same_person_rate']:.1f}% of pairs of *different* held-out people fall under it "
                  f"(mean distance {r['impostor_mean_dist']:.3f}). HOG finds {100 * r['originals_hog_valid']:.1f}% of the original faces.", "",
                  "| config | probes | dlib re-ID rank-1 | same person | mean distance to own original | HOG validity |", "|---|---|---|---|---|---|"]
        for m in r["lfw"]:
            lines.append(f"| {m['name']} | {m['n_probes']} | {100 * m['reid_rank1']:.1f}% | {100 * m['same_person_rate']:.1f}% | {m['mean_dist']:.3f} | {100 * m['hog_valid']:.1f}% |")
        c = r["colour"]
        lines += ["", f"Colour photos ({c['n']} faces): rank-1 same identity among the other photos — originals "
                  f"{100 * c['originals_rank1_other_photos']:.1f}%, student {100 * c['student_rank1_other_photos']:.1f}%; "
                  f"student same person as own original {100 * c['student_same_person_rate']:.1f}% (mean distance {c['student_mean_dist']:.3f})."]
    v = res["video"]
    lines += ["", "## Temporal stability (short_hamilton_clip.mp4, greedy IoU tracks as seeds)", "",
              f"- frames {v['frames']}, faces {v['faces']}; generated {v['generated']} times, re-used (warped) {v['reused']} times",
              f"- mean frame-to-frame change inside faces: anonymized {v['mean_change_anon']:.2f} vs original {v['mean_change_orig']:.2f} "
              f"→ ratio **{v['stability_ratio']:.2f}** (1 = as stable as the real face)",
              f"- anonymizer time per frame: mean {v['anonymize_ms_per_frame_mean']:.1f} ms, p95 {v['anonymize_ms_per_frame_p95']:.1f} ms (no budget)", "",
              "![degree sweep](degree_sweep.png)", "", "![teacher vs student](teacher_vs_student.png)", "",
              "LFW held-out (rows: original, student, 2-step student, blur, teacher 20 steps):", "", "(Image grids are written next to this report by `make eval-anonymizer` and not committed: they show the evaluation photos.)", "", "![grid](grid_lfw.jpg)", "",
              "Colour photos (top original, bottom student):", "", "![colour](grid_colour.jpg)", "", "![video](video_frame.jpg)", ""]
    lines += ["## Reading these numbers", "",
              "- Identity removal is met by construction: the generator never sees the face interior (only a blurred context ring, "
              "4x4 luminance cells pulled toward a generic face by the degree knob, 5 landmark heat-maps) and the rest of the head "
              "ellipse is blurred, so re-ID stays low at every degree; the degree sweep moves re-ID/cosine only a little "
              "(d=0 re-admits the original's shading at sigma 2 px: highest cosine and re-ID, best landmark NME).",
              "- Visual quality: the generated faces are coherent faces (eyes, brows, nose, mouth where the landmarks put them, "
              "the original's lighting and skin tone) but soft and without fine skin texture; at CCTV sizes (under ~100 px) they read "
              "as a different person, in close-ups they look painted. The teacher had ~2 h of a 2-core CPU (3,376 steps of batch 24); "
              "a longer run (resumable, `train-teacher --steps N`) or a larger model on a GPU is the way to sharper faces.",
              "- The independent recogniser (dlib, section above) confirms rank-1 re-identification near chance. Its 'same person' "
              "rate is above its chance level, though: pose, lighting, skin tone, head outline and the context around the face are "
              "kept on purpose, and dlib's wider face chip sees more of them. A 1:1 verification attack therefore succeeds more "
              "often than for two random people; the classical modes are the choice where that matters.", ""]
    (out_dir / "report.md").write_text("\n".join(lines))
