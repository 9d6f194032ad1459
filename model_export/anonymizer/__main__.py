"""CLI: python -m model_export.anonymizer {prepare,synth,donor-bank,train-teacher,distill,export,refiner-teacher,refiner-distill,refiner-export,eval,...}."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch  # noqa: F401  (offline tool; imported early so set_num_threads applies everywhere)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m model_export.anonymizer")
    p.add_argument("--threads", type=int, default=2, help="torch / onnxruntime threads (<= 2 on the shared box)")
    sub = p.add_subparsers(dest="cmd", required=True)

    a = sub.add_parser("prepare", help="detect + align LFW gray and the colour photos")
    a.add_argument("--shared", type=Path, required=True)
    a.add_argument("--out", type=Path, default=Path("data/anonymizer"))
    a.add_argument("--limit", type=int, default=0)

    a = sub.add_parser("synth", help="seeded MobileStyleGAN faces, detected + aligned (64/128 px) with descriptors; resumable")
    a.add_argument("--n", type=int, default=1000, help="faces to generate")
    a.add_argument("--seed", type=int, default=9)
    a.add_argument("--psi", type=float, default=0.7, help="truncation (lower: more typical, fewer artefacts)")
    a.add_argument("--out", type=Path, default=Path("data/anonymizer/synth"))
    a.add_argument("--gen-python", type=Path, default=Path(".venv-gen/bin/python"), help="the generator venv (make gen-venv)")
    a.add_argument("--first", type=int, default=0, help="the first face's generator index")
    a.add_argument("--turn", type=Path, default=None, help="turn the heads along this style direction (pose_direction)")
    a.add_argument("--shift", type=float, nargs=2, default=(2.0, 5.0), metavar=("LO", "HI"), help="how far along --turn (its units: see pose_direction)")
    a.add_argument("--to", action="store_true", help="--shift is where along --turn each face ends, not how far it moves (age_direction prints the children's)")

    a = sub.add_parser("donor-bank", help="pack the donor bank asset from synthetic faces (held-out faces excluded)")
    a.add_argument("--synth", type=Path, nargs="+", default=[Path("data/anonymizer/synth"), Path("data/anonymizer/synth_turned")],
                   help="synth runs to pack (the plain faces and the turned ones)")
    a.add_argument("--out", type=Path, default=Path("edge_agent/assets/donor_bank.npz"))
    a.add_argument("--limit", type=int, default=0, help="at most this many donors (0 = all)")
    a.add_argument("--big", type=int, default=None, help="donors also packed at 256 px for close-ups (default: donor_bank.BIG)")
    a.add_argument("--young", type=Path, nargs="*", default=[Path("data/anonymizer/synth_children")],
                   help="synth runs moved along the child direction: donor_bank.YOUNG_BIG of their children packed as close-up donors")
    a.add_argument("--grid", type=Path, default=Path("reports/anonymizer/donor_bank_grid.png"), help="contact sheet of the first donors")
    a.add_argument("--review", type=Path, default=Path("reports/anonymizer/donor_review_eyes.png"),
                   help="contact sheet of the close-up donors with the darkest eyes (check donor_occluders.csv against it)")

    a = sub.add_parser("train-teacher", help="train (or resume) the multi-step teacher")
    a.add_argument("--data", type=Path, default=Path("data/anonymizer"))
    a.add_argument("--ckpt", type=Path, default=Path("build/anonymizer/teacher.pt"))
    a.add_argument("--steps", type=int, default=3000, help="total optimiser steps (resumes from --ckpt)")
    a.add_argument("--minutes", type=float, default=0, help="stop (and save) after this wall time")
    a.add_argument("--stop-at", type=int, default=0, help="stop (and save) at this step; the LR schedule still spans --steps")
    a.add_argument("--batch", type=int, default=32)
    a.add_argument("--lr", type=float, default=4e-4)

    a = sub.add_parser("distill", help="distil the teacher into a 1-2 step student")
    a.add_argument("--data", type=Path, default=Path("data/anonymizer"))
    a.add_argument("--teacher", type=Path, default=Path("build/anonymizer/teacher.pt"))
    a.add_argument("--ckpt", type=Path, default=Path("build/anonymizer/student.pt"))
    a.add_argument("--samples", type=int, default=1536, help="teacher samples to regress on")
    a.add_argument("--teacher-steps", type=int, default=20)
    a.add_argument("--steps", type=int, default=1500)
    a.add_argument("--minutes", type=float, default=0)
    a.add_argument("--stop-at", type=int, default=0, help="stop (and save) at this step; the LR schedule still spans --steps")
    a.add_argument("--batch", type=int, default=32)
    a.add_argument("--lr", type=float, default=2e-4)

    a = sub.add_parser("refiner-teacher", help="train (or resume) the donor refiner's diffusion teacher on synthetic self-composites")
    a.add_argument("--synth", type=Path, default=Path("data/anonymizer/synth"))
    a.add_argument("--ckpt", type=Path, default=Path("build/anonymizer/refiner_teacher.pt"))
    a.add_argument("--pairs", type=int, default=6000, help="(composite, scene) pairs, made once and cached beside --ckpt")
    a.add_argument("--steps", type=int, default=2400, help="total optimiser steps (resumes from --ckpt)")
    a.add_argument("--minutes", type=float, default=0, help="stop (and save) after this wall time")
    a.add_argument("--stop-at", type=int, default=0, help="stop (and save) at this step; the LR schedule still spans --steps")
    a.add_argument("--batch", type=int, default=24)
    a.add_argument("--lr", type=float, default=5e-4)

    a = sub.add_parser("refiner-distill", help="distil the refiner teacher into the 1-step student")
    a.add_argument("--synth", type=Path, default=Path("data/anonymizer/synth"))
    a.add_argument("--teacher", type=Path, default=Path("build/anonymizer/refiner_teacher.pt"))
    a.add_argument("--ckpt", type=Path, default=Path("build/anonymizer/refiner_student.pt"))
    a.add_argument("--pairs", type=int, default=6000)
    a.add_argument("--samples", type=int, default=1536, help="teacher samples to regress on")
    a.add_argument("--steps", type=int, default=1200)
    a.add_argument("--minutes", type=float, default=0)
    a.add_argument("--stop-at", type=int, default=0)
    a.add_argument("--batch", type=int, default=24)
    a.add_argument("--lr", type=float, default=2e-4)
    a.add_argument("--data-weight", type=float, default=0.5, help="weight of the L1 term to the known scene beside the teacher regression")

    a = sub.add_parser("refiner-export", help="export the refiner student to ONNX (parity checked against torch)")
    a.add_argument("--ckpt", type=Path, default=Path("build/anonymizer/refiner_student.pt"))
    a.add_argument("--out", type=Path, default=Path("edge_agent/assets/face_refiner.onnx"))
    a.add_argument("--teacher", type=Path, default=None, help="also write float16 teacher/student weights to --weights")
    a.add_argument("--weights", type=Path, default=Path("model_export/anonymizer/weights"))

    a = sub.add_parser("refiner-bench", help="refiner per-face latency: 1-step student (ONNX) vs the teacher at its full steps")
    a.add_argument("--student", type=Path, default=Path("edge_agent/assets/face_refiner.onnx"))
    a.add_argument("--teacher", type=Path, default=Path("model_export/anonymizer/weights/refiner_teacher_fp16.pt"))
    a.add_argument("--repeats", type=int, default=30)
    a.add_argument("--json", type=Path, default=None)

    a = sub.add_parser("export", help="export the student to ONNX (opset 17, static shapes)")
    a.add_argument("--ckpt", type=Path, default=Path("build/anonymizer/student.pt"))
    a.add_argument("--out", type=Path, default=Path("edge_agent/assets/face_student.onnx"))
    a.add_argument("--steps", type=int, default=1, choices=(1, 2))
    a.add_argument("--teacher", type=Path, default=None, help="also write float16 teacher/student weights to --weights")
    a.add_argument("--weights", type=Path, default=Path("model_export/anonymizer/weights"))

    a = sub.add_parser("eval", help="evaluation report (re-ID, cosine, validity, landmarks, video)")
    a.add_argument("--shared", type=Path, required=True)
    a.add_argument("--data", type=Path, default=Path("data/anonymizer"))
    a.add_argument("--student", type=Path, default=Path("edge_agent/assets/face_student.onnx"))
    a.add_argument("--student2", type=Path, default=Path("build/anonymizer/face_student_2step.onnx"))
    a.add_argument("--teacher", type=Path, default=Path("build/anonymizer/teacher.pt"))
    a.add_argument("--out", type=Path, default=Path("reports/anonymizer"))
    a.add_argument("--gallery", type=int, default=1200, help="held-out identities in the gallery")
    a.add_argument("--teacher-faces", type=int, default=200)

    a = sub.add_parser("eval-independent", help="re-ID / validity with an independent recogniser and detector (dlib)")
    a.add_argument("--shared", type=Path, required=True)
    a.add_argument("--data", type=Path, default=Path("data/anonymizer"))
    a.add_argument("--student", type=Path, default=Path("edge_agent/assets/face_student.onnx"))
    a.add_argument("--out", type=Path, default=Path("reports/anonymizer"))
    a.add_argument("--gallery", type=int, default=1000, help="held-out identities in the gallery")
    a.add_argument("--probes", type=int, default=300, help="anonymized probes per configuration (dlib is ~0.5 s a face here)")
    a.add_argument("--cache", type=Path, default=Path("build/anonymizer/dlib_gallery.npz"))

    a = sub.add_parser("eval-realism", help="detail ratio, independent detector, two-sample test, |dL*| (synthetic sweep, photos, clip); donor re-ID")
    a.add_argument("--shared", type=Path, required=True)
    a.add_argument("--data", type=Path, default=Path("data/anonymizer"), help="prepare's output (lfw.npz) for re-ID")
    a.add_argument("--synth", type=Path, default=Path("data/anonymizer/synth"))
    a.add_argument("--synth-faces", type=int, default=60, help="held-out synthetic faces in the sweep (x sizes x brightness)")
    a.add_argument("--synth-turned", type=Path, default=Path("data/anonymizer/synth_turned"), help="turned synthetic faces (half as many in the sweep; skipped when absent)")
    a.add_argument("--bank", type=Path, default=Path("edge_agent/assets/donor_bank.npz"))
    a.add_argument("--student", type=Path, default=Path("edge_agent/assets/face_student.onnx"))
    a.add_argument("--with-diffusion", action="store_true", help="also measure the diffusion mode")
    a.add_argument("--refiner", type=Path, default=Path("edge_agent/assets/face_refiner.onnx"), help="also measure the donor with this refiner (skipped when absent)")
    a.add_argument("--gallery", type=int, default=1000, help="held-out LFW identities for re-ID (0: skip)")
    a.add_argument("--dlib-probes", type=int, default=200, help="dlib re-ID probes (dlib is ~0.5 s a face here)")
    a.add_argument("--cache", type=Path, default=Path("build/anonymizer/dlib_gallery.npz"))
    a.add_argument("--out", type=Path, default=Path("reports/anonymizer"))
    a.add_argument("--config", type=Path, default=Path("device_configs/x86-cpu.yaml"),
                   help="also re-ID the anonymizer the agent builds from this config, its recogniser check included (what leaves the device)")

    a = sub.add_parser("classifier-probe", help="what lets the realism classifier tell donor faces from real ones (feature groups, own-face pastes, blur variants with re-ID)")
    a.add_argument("--shared", type=Path, required=True)
    a.add_argument("--data", type=Path, default=Path("data/anonymizer"), help="prepare's output (lfw.npz) for re-ID")
    a.add_argument("--synth", type=Path, default=Path("data/anonymizer/synth"))
    a.add_argument("--synth-faces", type=int, default=60)
    a.add_argument("--bank", type=Path, default=Path("edge_agent/assets/donor_bank.npz"))
    a.add_argument("--gallery", type=int, default=1000, help="held-out LFW identities for re-ID (0: skip)")
    a.add_argument("--dlib-probes", type=int, default=200)
    a.add_argument("--cache", type=Path, default=Path("build/anonymizer/dlib_gallery.npz"))

    a = sub.add_parser("eval-video-identity", help="video faces of every size vs their anonymized selves (project recogniser and dlib)")
    a.add_argument("--shared", type=Path, required=True)
    a.add_argument("--bank", type=Path, default=Path("edge_agent/assets/donor_bank.npz"))
    a.add_argument("--refiner", type=Path, default=Path("edge_agent/assets/face_refiner.onnx"), help="also the donor with this refiner (skipped when absent)")
    a.add_argument("--out", type=Path, default=Path("reports/anonymizer"))

    a = sub.add_parser("clip-check", help="regenerated demo-clip faces vs their originals by face width; agent counters")
    a.add_argument("--shared", type=Path, required=True)
    a.add_argument("--student", type=Path, default=Path("edge_agent/assets/face_student.onnx"))
    a.add_argument("--seeds", type=int, default=4)
    a.add_argument("--every", type=int, default=5, help="every Nth frame")
    a.add_argument("--config", type=Path, default=None, help="also run the agent with this config (e.g. device_configs/x86-cpu.yaml)")
    a.add_argument("--mode", choices=("diffusion", "donor"), default="diffusion")
    a.add_argument("--checked", action="store_true", help="with the engine's own recogniser check (as the agent runs it)")
    a.add_argument("--degree", type=float, default=1.0)
    a.add_argument("--paste", default="deployed", help="donor mode: one of classifier-probe's paste variants (its VARIANTS), e.g. 'wide paste, blur at its floor'")

    a = sub.add_parser("crowd-reid", help="a 4K crowd frame (and a dark copy) through the agent per mode: rank-1 of its anonymized faces among its originals")
    a.add_argument("--shared", type=Path, required=True)
    a.add_argument("--config", type=Path, default=Path("device_configs/x86-cpu.yaml"), help="the agent's config (its anonymizer first, then the classical modes)")
    a.add_argument("--max-similarity", type=float, default=None, help="override the generative modes' recogniser bound")
    a.add_argument("--seed", type=int, default=None, help="fixed track seeds (a paired comparison of two revisions); default: random, as the agent")

    a = sub.add_parser("sex-classifier", help="train the apparent-sex classifier that steers the donor choice (LFW by first name + hand-labelled donors)")
    a.add_argument("--data", type=Path, default=Path("data/anonymizer"), help="where `prepare` wrote lfw.npz and colour.npz")
    a.add_argument("--synth", type=Path, nargs="+", default=[Path("data/anonymizer/synth"), Path("data/anonymizer/synth_turned")])
    a.add_argument("--epochs", type=int, default=12)
    a.add_argument("--batch", type=int, default=128)
    a.add_argument("--out", type=Path, default=Path("edge_agent/assets/apparent_sex.onnx"))
    a.add_argument("--evaluate", action="store_true", help="only score the model at --out on the held-out sets (no training)")

    a = sub.add_parser("age-classifier", help="train the child-or-adult classifier that steers the donor choice (synthetic children + LFW adults)")
    a.add_argument("--data", type=Path, default=Path("data/anonymizer"), help="where `prepare` wrote lfw.npz and colour.npz")
    a.add_argument("--synth", type=Path, nargs="+",
                   default=[Path("data/anonymizer/synth"), Path("data/anonymizer/synth_turned"), Path("data/anonymizer/synth_children")],
                   help="the synth runs the hand labels (weights/donor_age_labels.csv) name")
    a.add_argument("--young", type=Path, nargs="+", default=[Path("data/anonymizer/synth_young")],
                   help="the synth runs moved along the child direction")
    a.add_argument("--along", type=Path, default=Path("data/anonymizer/child_along.npz"), help="age_direction's placing of the --synth runs' faces")
    a.add_argument("--lfw", type=int, default=None, help="LFW training photos drawn as adults (default: age_classifier.LFW_ADULTS)")
    a.add_argument("--shared", type=Path, default=None, help="also score real photos judged by looking (age_classifier.CHILD_PHOTOS, ADULT_PHOTOS)")
    a.add_argument("--epochs", type=int, default=12)
    a.add_argument("--batch", type=int, default=128)
    a.add_argument("--out", type=Path, default=Path("edge_agent/assets/apparent_child.onnx"))
    a.add_argument("--evaluate", action="store_true", help="only score the model at --out on the held-out sets (no training)")

    a = sub.add_parser("smear-check", help="the donor's motion-smear matching on sharp close-ups (false smears) and on smeared faces (found)")
    a.add_argument("--shared", type=Path, required=True)
    a.add_argument("--share", type=float, default=None, help="the block test's share (default: the deployed SMEAR_SHARE; 0: no block test)")

    a = sub.add_parser("warp-check", help="how far the small faces' donor warp stretches the face (crowd photos), least squares vs LMEDS")
    a.add_argument("--shared", type=Path, required=True)

    a = sub.add_parser("misfit-check", help="turned heads of the clips vs their originals after the donor mode's head blur, the flat blur and the mosaic")
    a.add_argument("--shared", type=Path, required=True)
    a.add_argument("--turned-limit", type=float, default=0.0, help="also: donors on the faces turned past the donor's yaw limit and within this one")

    a = sub.add_parser("bench", help="student per-face latency vs the teacher at full steps")
    a.add_argument("--student", type=Path, default=Path("edge_agent/assets/face_student.onnx"))
    a.add_argument("--teacher", type=Path, default=Path("build/anonymizer/teacher.pt"))
    a.add_argument("--teacher-steps", type=int, default=20)
    a.add_argument("--repeats", type=int, default=30)
    a.add_argument("--json", type=Path, default=None, help="also write the numbers here (e.g. reports/anonymizer/bench_2threads.json)")

    args = p.parse_args(argv)
    import torch as _t

    _t.set_num_threads(max(1, args.threads))
    if args.cmd == "prepare":
        from model_export.anonymizer.data import prepare

        prepare(args.shared, args.out, limit=args.limit)
    elif args.cmd == "synth":
        from model_export.anonymizer.synth import synth

        synth(args.n, args.seed, args.out, args.psi, args.gen_python, first=args.first,
              turn=(args.turn, *args.shift) if args.turn else None, to=args.to)
    elif args.cmd == "donor-bank":
        from model_export.anonymizer.donor_bank import BIG, grid, pack, review

        pack(args.synth, args.out, args.limit, BIG if args.big is None else args.big, args.young)
        grid(args.out, args.grid)
        review(args.out, args.review)
    elif args.cmd == "train-teacher":
        from model_export.anonymizer.teacher import train_teacher

        train_teacher(args.data, args.ckpt, args.steps, args.batch, args.lr, args.minutes, args.stop_at)
    elif args.cmd == "distill":
        from model_export.anonymizer.student import distill

        distill(args.data, args.teacher, args.ckpt, args.samples, args.teacher_steps, args.steps, args.batch, args.lr, args.minutes, args.stop_at)
    elif args.cmd == "refiner-teacher":
        from model_export.anonymizer.refiner import train_teacher as train_refiner

        train_refiner(args.synth, args.ckpt, args.pairs, args.steps, args.batch, args.lr, args.minutes, args.stop_at)
    elif args.cmd == "refiner-distill":
        from model_export.anonymizer.refiner import distill as distill_refiner

        distill_refiner(args.synth, args.teacher, args.ckpt, args.pairs, args.samples, args.steps, args.batch, args.lr, args.minutes, args.stop_at, args.data_weight)
    elif args.cmd == "refiner-export":
        from model_export.anonymizer.refiner import export as export_refiner

        export_refiner(args.ckpt, args.out)
        if args.teacher is not None:
            from model_export.anonymizer.export import save_slim

            save_slim(args.ckpt, args.weights / "refiner_student_fp16.pt")
            save_slim(args.teacher, args.weights / "refiner_teacher_fp16.pt", key="ema")
    elif args.cmd == "refiner-bench":
        import json

        from model_export.anonymizer.refiner import bench_refiner

        res = bench_refiner(args.student, args.teacher, args.repeats, args.threads)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(res, indent=1))
    elif args.cmd == "export":
        from model_export.anonymizer.export import export, save_slim

        export(args.ckpt, args.out, args.steps)
        if args.teacher is not None:
            save_slim(args.ckpt, args.weights / "student_fp16.pt")
            save_slim(args.teacher, args.weights / "teacher_fp16.pt", key="ema")
    elif args.cmd == "eval":
        from model_export.anonymizer.evaluate import evaluate

        evaluate(args)
    elif args.cmd == "eval-realism":
        from model_export.anonymizer.realism import evaluate_realism

        evaluate_realism(args)
    elif args.cmd == "classifier-probe":
        from model_export.anonymizer.classifier_probe import probe

        probe(args)
    elif args.cmd == "eval-video-identity":
        from model_export.anonymizer.realism import evaluate_video_identity

        evaluate_video_identity(args)
    elif args.cmd == "clip-check":
        from model_export.anonymizer.clip_check import clip_check

        clip_check(args)
    elif args.cmd == "crowd-reid":
        from model_export.anonymizer.crowd_reid import crowd_reid

        crowd_reid(args)
    elif args.cmd == "age-classifier":
        from model_export.anonymizer.age_classifier import train_age_classifier

        train_age_classifier(args)
    elif args.cmd == "sex-classifier":
        from model_export.anonymizer.sex_classifier import train_sex_classifier

        train_sex_classifier(args)
    elif args.cmd == "smear-check":
        from model_export.anonymizer.smear_check import smear_check

        smear_check(args)
    elif args.cmd == "warp-check":
        from model_export.anonymizer.warp_check import warp_check

        warp_check(args)
    elif args.cmd == "misfit-check":
        from model_export.anonymizer.clip_check import misfit_check

        misfit_check(args)
    elif args.cmd == "eval-independent":
        from model_export.anonymizer.independent import evaluate_independent

        evaluate_independent(args)
    elif args.cmd == "bench":
        from model_export.anonymizer.bench import bench

        import json

        res = bench(args.student, args.teacher, args.teacher_steps, args.repeats, args.threads)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({**res, "threads": args.threads}, indent=1))


if __name__ == "__main__":
    main()
