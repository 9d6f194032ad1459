"""The donor anonymizer with the packed bank on real photos and the demo clip (EDGE_AGENT_SHARED_DIR)."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.anonymize.base import face_region
from edge_agent.anonymize.descriptors import pose, tone_mask
from edge_agent.anonymize.donor import (BANK, FOREHEAD_MAX, MAX_STRETCH, DonorAnonymizer, DonorBank, forehead_band, forehead_cover,
                                        landmark_affine, landmarks_fit, shadowed, stretch)
from edge_agent.faces import Face

ROOT = Path(__file__).resolve().parents[1]
CARD = ROOT / "edge_agent/assets/DONOR_BANK.md"


@pytest.fixture(scope="module")
def models(portraits):
    return portraits


@pytest.fixture(scope="module")
def anon():
    return DonorAnonymizer(budget_ms=None)


def cosine(emb, a, b, face) -> float:
    return float(emb.embed(a, [face])[0] @ emb.embed(b, [face])[0])


def test_bank_matches_its_model_card():
    digest = hashlib.sha256(BANK.read_bytes()).hexdigest()
    card = CARD.read_text()
    assert re.search(r"sha256 `([0-9a-f]{64})`", card).group(1) == digest
    bank = DonorBank()
    assert bank.size >= 800 and BANK.stat().st_size < 17e6  # 16.3 MB since the 121 children's close-up donors
    assert np.all(np.isfinite(bank.pose)) and np.all(np.isfinite(bank.tone))
    crop, lm = bank.donor(bank.size + 3)  # a mirrored donor
    assert crop.shape == (128, 128, 3) and lm[0, 0] < lm[1, 0]


def test_a_small_face_s_donor_is_warped_by_all_five_points_not_squashed_by_three():
    """Faces under 56 px get their donor by an affine warp of its 5 points onto theirs. Fitted
    robustly (LMEDS), three points fit exactly and the other two did not count: with 1.5 px of
    landmark noise on the 64 px crop a quarter of the warps stretched the face 1.5x or more along
    one axis (on crowds/20.jpg a donor came out squashed to a third across, in streaks). The least-
    squares fit stays nearer the true warp; a layout no face has gets a similarity (no stretch)."""
    from edge_agent.align import template

    src = template(64, 0.25)
    true = np.array([[1.0, 0.08, 2.0], [-0.05, 0.95, -1.0]], np.float32)
    rng = np.random.default_rng(0)
    noisy = [src @ true[:, :2].T + true[:, 2] + rng.normal(0.0, 1.5, (5, 2)).astype(np.float32) for _ in range(300)]
    fits = [landmark_affine(src, dst) for dst in noisy]
    stretches = np.array([stretch(a) for a in fits])
    robust = np.array([stretch(cv2.estimateAffine2D(src, dst, method=cv2.LMEDS)[0]) for dst in noisy])
    assert (robust > MAX_STRETCH).mean() > 0.15  # the fit this replaced (the true warp stretches 1.1x)
    assert (stretches > 1.3).mean() < 0.25 and stretches.max() <= MAX_STRETCH + 1e-3
    assert np.median([np.abs(a[:, :2] - true[:, :2]).max() for a in fits]) < 0.16  # 0.13 here
    flat = src.copy()
    flat[:, 1] = 32.0 + 0.1 * (flat[:, 1] - 32.0)  # the points squeezed onto a line
    assert stretch(landmark_affine(src, flat)) <= MAX_STRETCH + 1e-3


def test_donors_with_hair_or_headwear_on_the_forehead_are_never_chosen():
    """A donor's fringe, cap or hat pasted onto a stranger's bare forehead reads as painted-on
    hair: donors whose upper forehead (the top of the paste ellipse) is mostly not skin are left
    out of every choice, mirrored copies included. The same donor with its forehead painted its
    own skin colour counts as clear: the measure looks at the forehead, not at the person."""
    bank = DonorBank()
    rng = np.random.default_rng(3)
    for _ in range(200):
        tone = np.array([rng.uniform(30, 80), rng.uniform(0, 20), rng.uniform(0, 30)], np.float32)
        near = bank.nearest(rng.uniform(-0.5, 0.5), rng.uniform(-0.3, 0.3), tone)
        assert len(near) == 12 and all(bank.clear(i) for i in near)
    left_out = np.array([not bank.clear(i) for i in range(bank.size)])
    assert 0.05 * bank.size <= left_out.sum() <= 0.3 * bank.size, left_out.sum()
    assert all(bank.clear(i) == bank.clear(i + bank.size) for i in range(bank.size))
    crop = bank.donor(int(np.nonzero(left_out)[0][0]))[0].copy()
    assert forehead_cover(crop) > FOREHEAD_MAX
    # everything above the band's lower edge and a little below it (a step there would be texture)
    low = int(np.nonzero(forehead_band(crop.shape[0]).any(1))[0].max()) + 4
    crop[:low] = np.median(crop[tone_mask(crop.shape[0])], 0)
    assert forehead_cover(crop) < 0.1


def test_donors_with_a_hand_at_the_chin_sunglasses_a_fringe_or_headwear_over_the_brows_are_never_drawn():
    """The bank flags the close-up donors seen with a hand at the chin, sunglasses, a fringe across
    the brows, headwear down to them or a second face against a cheek (pasted, the hand landed on a stranger's chin and a fringe's
    strands across a stranger's eyebrow). Asked for a face of exactly such a donor's pose and tone,
    the bank offers its neighbours, mirrors included, and not it; the same donor unflagged is the
    first offered: the test can fail."""
    bank = DonorBank()
    with np.load(BANK) as z:
        flagged = np.nonzero(z["occluded"])[0]
    assert len(flagged) == 19 and all(bank.has_big(i) for i in flagged)
    for i in flagged:
        for j in (i, i + bank.size):
            assert j not in bank.nearest(*bank.pose[j], bank.tone[j], big=True)
    cache = bank._clear.copy()
    try:
        bank._clear[flagged] = 1
        assert all(bank.nearest(*bank.pose[i], bank.tone[i], big=True)[0] == i for i in flagged)
    finally:
        bank._clear[:] = cache


def test_a_light_fringe_is_told_from_skin():
    """A blond fringe is as light as skin and nearly its colour: the colour rule (``not_skin``)
    passed it, so such donors were chosen and their fringe pasted as streaks across a stranger's
    forehead. Its strands' fine texture gives it away: a bare-foreheaded donor with skin-coloured
    strands painted over its forehead is left out of the choice, and its paste fades out there;
    the same donor's bare forehead is not mistaken for hair."""
    from edge_agent.anonymize.donor import HAIR_BAND, not_skin, off_face, strands

    bank = DonorBank()
    crop = bank.donor(int(bank.nearest(0.0, 0.0, np.float32([65, 12, 16]), k=1)[0]))[0]
    size = crop.shape[0]
    band, low_band = forehead_band(size), forehead_band(size, HAIR_BAND)
    skin = np.median(crop[tone_mask(size)].astype(np.float32), 0)
    yy, xx = np.mgrid[0:size, 0:size]
    shade = np.array([28.0, 6.0, -20.0], np.float32)[(xx + yy // 4) % 3]  # slanted strands, lighter and darker than skin
    painted = np.where(low_band[..., None], np.clip(skin + shade[..., None], 0, 255), crop).astype(np.uint8)
    assert forehead_cover(crop) < 0.1 and strands(crop, low_band)[low_band].mean() < 0.1
    assert not_skin(painted, band)[band].mean() < 0.2, "the colour rule alone would miss this fringe"
    assert forehead_cover(painted) > FOREHEAD_MAX
    assert off_face(painted)[low_band].mean() > 0.6


def test_a_donor_s_forehead_hair_is_not_pasted_onto_a_bare_forehead(models):
    """Donors with some fringe are still chosen (under ``FOREHEAD_MAX``); pasted as they are, on a
    close-up that fringe, cut off by the paste's top edge, read as a dark comb on the stranger's
    bare forehead. The paste fades out over it: the upper forehead of the result is the stranger's
    (blurred) one, measured as the share of it that is not skin."""
    from edge_agent.anonymize.diffusion import aligned_crop
    from edge_agent.anonymize.donor import HAIR_BAND, _Track, not_skin

    _, _, photos = models
    img, face = photos[0]  # obama.jpg: a bare forehead

    def hair_share(image):
        crop, _, _ = aligned_crop(image, face, 128)
        band = forehead_band(128, HAIR_BAND)
        return float(not_skin(crop, band)[band].mean())

    anon = DonorAnonymizer(budget_ms=None, frame_budget_ms=None)
    bank = anon.bank
    fringes = [i for i in range(bank.size) if 0.3 < forehead_cover(bank.donor(i)[0]) <= FOREHEAD_MAX][:8]
    assert len(fringes) == 8
    faded, pasted = [], []
    for i in fringes:
        out = img.copy()
        anon.render(out, face, _Track(donor=i), 1)
        faded.append(hair_share(out))
        whole = DonorAnonymizer(budget_ms=None, frame_budget_ms=None)
        whole.bank.off_face = lambda j, big=False: np.zeros(whole.bank.donor(j, big)[0].shape[:2], np.uint8)  # the fringe pasted with the face
        out = img.copy()
        whole.render(out, face, _Track(donor=i), 1)
        pasted.append(hair_share(out))
    assert hair_share(img) < 0.05
    # pasted whole, a fringe shows (0.20 of the band for the first donor); faded out, the band is
    # skin for every donor (before the strong blur took the forehead's own pixels, the hairline
    # smeared under the paste's rim showed too: up to 0.05 there, with every fringe faded out)
    assert max(pasted) > 0.1 and max(faded) < 0.02, (faded, pasted)


def test_a_donor_s_background_beside_its_cheek_is_not_pasted(models):
    """A donor turned more than the stranger, or narrower in the face, has its background beside
    its cheek inside the paste: pasted, it read as a white, green or orange crescent on the
    stranger's jaw (seen on 300 px synthetic close-ups). It is faded out like a fringe. A donor
    with saturated green painted beside its cheeks leaves a quarter of the green or less of what
    pasting it whole leaves."""
    from edge_agent.anonymize.donor import _Track, eyes_and_span, off_face, paste_ellipse

    _, _, photos = models
    img, face = photos[0]
    anon = DonorAnonymizer(budget_ms=None, frame_budget_ms=None)
    crop, lm = anon.bank.donor(int(anon.bank.nearest(0.0, 0.0, np.float32([65, 12, 16]), k=1)[0]))
    size = crop.shape[0]
    (cx, cy), (ax, ay) = paste_ellipse(size)
    eyes_y, _ = eyes_and_span(size)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    beside = (((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1.0) & (yy > eyes_y) & (np.abs(xx - cx) > 0.8 * ax)
    painted = crop.copy()
    painted[beside] = (40, 200, 40)

    def green(image):
        x1, y1, x2, y2 = (int(v) for v in face.box)
        b, g, r = (image[y1:y2, x1:x2].astype(int)[..., k] for k in range(3))
        return float((g - np.maximum(b, r) > 60).mean())

    shares = {}
    for name, mask in (("faded", off_face(painted).astype(np.uint8) * 255), ("whole", np.zeros((size, size), np.uint8))):
        anon.bank.donor = lambda i, big=False: (painted, lm)
        anon.bank.off_face = lambda i, big=False, mask=mask: mask
        out = img.copy()
        anon.render(out, face, _Track(donor=0), 1)
        shares[name] = green(out)
    assert green(img) < 0.001
    assert shares["whole"] > 0.005 and shares["faded"] <= shares["whole"] / 4, shares


def test_donor_face_is_another_person_for_both_recognisers(models, anon):
    _, emb, photos = models
    dlib_check = None
    try:
        from model_export.anonymizer.independent import DlibCheck, pairwise

        dlib_check = DlibCheck()
    except (ImportError, ModuleNotFoundError):
        pass
    for k, (img, face) in enumerate(photos):
        out = img.copy()
        anon.anonymize(out, face, seed=k + 1)
        assert anon.donor_of(k + 1) is not None, "a frontal photo gets a donor, not the fallback"
        assert cosine(emb, img, out, face) < 0.35
        x1, y1, x2, y2 = (int(v) for v in face.box)
        assert np.abs(out[y1:y2, x1:x2].astype(int) - img[y1:y2, x1:x2]).mean() > 8
        if dlib_check is not None:
            shape = dlib_check.shape(img, face.box)
            d = pairwise(dlib_check.embed(img, shape)[None], dlib_check.embed(out, shape)[None])[0, 0]
            assert d > 0.6, f"dlib still calls portrait {k} the same person (distance {d:.2f})"


def test_a_track_draws_first_among_the_donors_least_like_the_stranger(models):
    """A render keeps the stranger's outline and hair, so a donor face already close to theirs
    stood closer after the paste too. A track tries first the ``UNLIKE`` share of its candidates
    of each apparent sex the recogniser finds least like the person, in its seed's order (the
    least like of both sexes together were mostly of the stranger's other sex, where the sex
    classifier could not read them): over the portraits, six seeds
    each, its renders stand farther from their person than those of the seed's order alone, and a
    person seen again draws another face (no pseudonym linking the visits)."""
    from edge_agent.anonymize.donor import UNLIKE

    _, emb, photos = models

    def renders(anon: DonorAnonymizer) -> tuple[list[float], list[int]]:
        """Cosine of each render to its person; per photo, the synthetic people its six visits drew."""
        sims, people = [], []
        for k, (img, face) in enumerate(photos):
            drawn = set()
            for seed in range(6):  # six visits, one track each, alone in the frame
                out = img.copy()
                anon.anonymize(out, face, seed=seed)
                if anon.donor_of(seed) is not None:
                    sims.append(cosine(emb, img, out, face))
                    drawn.add(anon.bank.person(anon.donor_of(seed)))
                anon.forget(seed)
            people.append(len(drawn))
        return sims, people

    plain = DonorAnonymizer(budget_ms=None, frame_budget_ms=None, embedder=emb)
    plain._unlike_first = lambda order, person: order  # the seed's order alone
    before, _ = renders(plain)
    anon = DonorAnonymizer(budget_ms=None, frame_budget_ms=None, embedder=emb)
    after, people = renders(anon)
    assert len(after) >= len(before) - 1 and max(after) < 0.25
    assert np.mean(after) < np.mean(before) - 0.02, (np.mean(after), np.mean(before))
    assert min(people) >= 3, people  # six visits of one person: at least three synthetic people

    img, face = photos[0]
    person = anon.check.person(img, face)
    order = [int(d) for d in anon.bank.nearest(*pose(face.landmarks), np.float32([60, 10, 15]), big=True)]  # no sex asked: both
    likeness = anon._donor_likeness(order, person)
    first = anon._unlike_first(order, person)
    assert sorted(first) == sorted(order)
    least: set[int] = set()
    for male in (True, False):
        of_sex = [j for j, d in enumerate(order) if (anon.bank.male[d] > 0.5) == male]
        assert of_sex, "the candidates hold both sexes"
        least |= {order[j] for j in sorted(of_sex, key=lambda j: likeness[j])[:int(np.ceil(len(of_sex) * UNLIKE))]}
    assert first[:len(least)] == [d for d in order if d in least]  # each sex's least like first, in the seed's order


def test_off_centre_landmarks_get_the_whole_head_redacted(models, anon):
    """The issue's close-up: landmarks squeezed onto the forehead of a big box. Pasting a face
    through them would leave the person's eyes, nose and mouth beside it."""
    _, emb, photos = models
    img, face = photos[0]
    lm = np.asarray(face.landmarks, np.float32)
    top = np.array([(face.box[0] + face.box[2]) / 2, face.box[1] + 0.15 * face.height], np.float32)
    bad = Face(face.box.copy(), top + 0.35 * (lm - lm.mean(0)), face.score)
    assert landmarks_fit(face) and not landmarks_fit(bad)
    out = img.copy()
    anon.anonymize(out, bad, seed=99)
    assert anon.donor_of(99) is None
    # the real face (box interior) is out of focus: no eye, nose or mouth edges are left (edges at
    # the features' scale: the camera grain put back over the blur is finer)
    x1, y1, x2, y2 = (int(v) for v in face.box)

    def edges(im):
        grey = cv2.GaussianBlur(cv2.cvtColor(im[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY).astype(np.float32), (0, 0), 2.0)
        return float(cv2.Laplacian(grey, cv2.CV_32F).std())

    assert edges(out) < 0.1 * edges(img)
    assert cosine(emb, img, out, face) < 0.35


def test_a_head_at_the_turn_limit_does_not_flicker_back_to_its_donor(models, one_frame):
    """A head turning near ``MAX_YAW`` (or whose landmarks jump) has landmarks that fit on one
    frame and not on the next: it switched between its donor and the out-of-focus head every
    frame. A misfit is redacted at once; the donor comes back only once the landmarks have fit on
    ``SETTLE_FRAMES`` frames in a row."""
    from edge_agent.anonymize.donor import MAX_YAW, SETTLE_FRAMES

    _, _, photos = models
    img, face = photos[0]
    lm = np.asarray(face.landmarks, np.float32).copy()
    eye_d = float(np.hypot(*(lm[1] - lm[0])))
    lm[2, 0] += 0.75 * eye_d  # the nose past the turn limit
    turned = Face(face.box.copy(), lm, face.score)
    assert landmarks_fit(face) and not landmarks_fit(turned) and abs(pose(turned.landmarks)[0]) > MAX_YAW
    anon = DonorAnonymizer(budget_ms=None, frame_budget_ms=None)
    blurred = one_frame(anon, img, turned, 3)
    x1, y1, x2, y2 = (int(v) for v in face.box)

    def has_donor(out):  # the donor's features, where the out-of-focus head has none
        return np.abs(out[y1:y2, x1:x2].astype(int) - blurred[y1:y2, x1:x2]).mean() > 6

    shown = [has_donor(one_frame(anon, img, f, 3)) for f in [turned, face, turned] + [face] * (SETTLE_FRAMES + 1)]
    assert shown == [False] * (2 + SETTLE_FRAMES) + [True, True], shown
    assert anon.stats["misfit"] == 3 and anon.stats["settling"] == SETTLE_FRAMES
    fresh = DonorAnonymizer(budget_ms=None, frame_budget_ms=None)
    assert has_donor(one_frame(fresh, img, face, 4)), "a track that never misfit gets its donor at once"


def test_turned_head_is_out_of_focus_not_a_flat_oval(models):
    """A face no donor can go on (here: turned past MAX_YAW) gets its features blurred away, but the
    head region meets the frame without the hard-edged flat oval of the classical blur: at the
    region's rim the head keeps its outline under a light blur."""
    from edge_agent.anonymize.classical import Blur
    from edge_agent.anonymize.donor import head_face

    _, emb, photos = models
    img, face = photos[0]
    lm = np.asarray(face.landmarks, np.float32).copy()
    lm[2] = lm[1] + 0.3 * (lm[1] - lm[0])  # the nose past the eye: a profile's layout
    turned = Face(face.box.copy(), lm, face.score)
    assert not landmarks_fit(turned)
    anon = DonorAnonymizer(budget_ms=None)
    out, flat = img.copy(), img.copy()
    anon.anonymize(out, turned, seed=8)
    Blur().anonymize(flat, head_face(turned), 8)
    assert anon.stats["misfit"] == 1 and anon.donor_of(8) is None
    assert cosine(emb, img, out, face) < 0.35
    rows, cols, region = face_region(head_face(turned), img.shape)
    ring = (region > 0) & ~(cv2.erode(region, np.ones((7, 7), np.uint8)) > 0)
    step = [float(np.abs(im[rows, cols].astype(int) - img[rows, cols])[ring].mean()) for im in (out, flat)]
    assert step[0] < 0.5 * step[1], f"rim change {step[0]:.1f} vs the flat blur's {step[1]:.1f}"


def _inner_face(face: Face, x: float, y: float, scale: float, score: float) -> Face:
    """``face`` shrunk by ``scale`` about a point (box share ``x``, ``y``): a face-like constellation
    the detector reports inside a bigger face's box, with landmarks that fit its own box."""
    x1, y1, x2, y2 = (float(v) for v in face.box)
    at = np.array([x1 + x * (x2 - x1), y1 + y * (y2 - y1)], np.float32)
    box = ((np.asarray(face.box, np.float32).reshape(2, 2) - at) * scale + at).reshape(4)
    return Face(box, (np.asarray(face.landmarks, np.float32) - at) * scale + at, score)


def test_second_detection_of_a_head_gets_no_second_face(models):
    """The demo clip's close-up: a face-like constellation on the forehead (score 0.66) beside the
    real face (0.93), its track coasting for frames after. One head gets one synthetic face: the
    second detection is blurred out of focus first (whichever order the faces come in), and the
    main face's donor is pasted over it."""
    _, emb, photos = models
    img, face = photos[0]
    ghost = _inner_face(face, 0.3, 0.1, 0.7, 0.66)
    assert landmarks_fit(ghost) and face.score > ghost.score
    assert shadowed([face, ghost]) == [ghost] and shadowed([ghost]) == []
    assert shadowed([face, _inner_face(face, 0.5, 0.5, 1.0, float(face.score))]) != []  # equal scores: one is kept
    far = Face(face.box + np.float32([2 * face.width, 0, 2 * face.width, 0]), face.landmarks + np.float32([2 * face.width, 0]), 0.5)
    assert shadowed([face, far]) == []  # two heads side by side: both are faces
    # a face behind a surer one, a third of its box hidden (the demo clip's out-of-focus face behind
    # a laughing one got a dark, skull-like donor): out of focus too; a fifth hidden: a face of its own
    for hidden, is_shadowed in ((0.33, True), (0.2, False)):
        shift = np.float32([-(1 - hidden) * face.width, 0])
        behind = Face(face.box + np.tile(shift, 2), face.landmarks + shift, 0.8)
        assert (shadowed([face, behind]) == [behind]) is is_shadowed, hidden
    for order in ((face, 1), (ghost, 2)), ((ghost, 2), (face, 1)):
        anon = DonorAnonymizer(budget_ms=None, frame_budget_ms=None)
        out = img.copy()
        anon.begin_frame([face, ghost])
        for f, seed in order:
            anon.anonymize(out, f, seed=seed)
        assert anon.donor_of(1) is not None and anon.donor_of(2) is None
        assert anon.stats["shadowed"] == 1 and anon.stats["rendered"] == 1
        assert cosine(emb, img, out, face) < 0.35
        alone = img.copy()
        DonorAnonymizer(budget_ms=None, frame_budget_ms=None).anonymize(alone, face, seed=1)
        # inside the face's paste the image is the donor's, not a blur with a second face in it
        assert cosine(emb, alone, out, face) > 0.6


def test_a_track_that_turns_or_nears_is_checked_again(models, one_frame):
    """The recogniser check at a track's first frame says nothing of the head twice as near: a
    render after such a drift is checked again, in the finished frame (``end_frame``); too close to
    the person, the mosaic goes over it and that render is never replayed."""
    from edge_agent.anonymize.classical import Pixelate

    _, emb, photos = models
    img, face = photos[0]

    def clear_pass(seed: int) -> bool:
        """Does the seed's donor pass clear of the bound? (One within ``WATCH_MARGIN`` of it is
        checked on every frame: its draw would test that rule, not the drift.)"""
        probe = DonorAnonymizer(budget_ms=None, frame_budget_ms=None, embedder=emb)
        one_frame(probe, img, face, seed)
        return probe.donor_of(seed) is not None and not probe._tracks[seed].checked[3]

    seed = next(s for s in range(1, 20) if clear_pass(s))
    anon = DonorAnonymizer(budget_ms=None, frame_budget_ms=None, embedder=emb)

    def frame_of(image, f):
        return one_frame(anon, image, f, seed)

    frame_of(img, face)
    assert anon.donor_of(seed) is not None and anon.stats["rechecked"] == 0
    frame_of(img, face)  # the same pose and size: no second check
    assert anon.stats["rechecked"] == 0
    near = cv2.resize(img, None, fx=1.6, fy=1.6, interpolation=cv2.INTER_LINEAR)
    near_face = Face(face.box * 1.6, face.landmarks * 1.6, face.score)
    frame_of(near, near_face)
    assert anon.stats["rechecked"] == 1 and anon.stats["recheck_failed"] == 0
    frame_of(near, near_face)  # passed (and not close to the bound): the new size is the reference
    assert anon.stats["rechecked"] == 1
    # a bound the composite does not pass, back at the original size: the mosaic over the composite
    anon.check.max_similarity = -1.0
    out = frame_of(img, face)
    assert anon.stats["rechecked"] == 2 and anon.stats["recheck_failed"] == 1
    assert anon._tracks[seed].replay is None
    x1, y1, x2, y2 = (int(v) for v in face.box)
    cells = Pixelate().cells(face)
    assert len(np.unique(out[y1:y2, x1:x2].reshape(-1, 3), axis=0)) <= (cells + 1) ** 2, "no mosaic over the face"


def test_a_face_that_failed_its_check_is_veiled_then_keeps_the_mosaic_until_it_moves(models, one_frame):
    """A render too close to the person: the frame shows the mosaic, and the track keeps its donor
    with the hair and ears blurred (veiled), checked on every frame. Failing veiled too, it is not
    drawn again on the next frame (near the bound it passed and failed by turns: donor and mosaic
    alternating): the face keeps the mosaic, without a render, until it turns or nears or
    ``HOLD_FRAMES`` pass; then it is drawn and checked again."""
    from edge_agent.anonymize.classical import Pixelate
    from edge_agent.anonymize.base import HOLD_FRAMES

    _, emb, photos = models
    img, face = photos[0]
    anon = DonorAnonymizer(budget_ms=None, frame_budget_ms=None, embedder=emb)
    mosaic = img.copy()
    Pixelate().anonymize(mosaic, face, 7)
    near = cv2.resize(img, None, fx=1.6, fy=1.6, interpolation=cv2.INTER_LINEAR)
    near_face = Face(face.box * 1.6, face.landmarks * 1.6, face.score)
    one_frame(anon, img, face, 7)
    one_frame(anon, near, near_face, 7)  # drifted: checked, and failed against an impossible bound
    x1, y1, x2, y2 = (int(v) for v in face.box)
    cells = Pixelate().cells(face)

    def mosaic_over_the_face(out: np.ndarray) -> bool:
        return len(np.unique(out[y1:y2, x1:x2].reshape(-1, 3), axis=0)) <= (cells + 1) ** 2

    anon.check.max_similarity = -1.0
    assert mosaic_over_the_face(one_frame(anon, img, face, 7))
    assert anon.stats["recheck_failed"] == 1 and anon.stats["veiled"] == 1 and anon._tracks[7].veiled
    rendered, rechecked = anon.stats["rendered"], anon.stats["rechecked"]
    # the same pose: drawn veiled and checked (on every frame from now), failing again
    assert mosaic_over_the_face(one_frame(anon, img, face, 7))
    assert anon.stats["rendered"] == rendered + 1 and anon.stats["rechecked"] == rechecked + 1
    assert anon.stats["recheck_failed"] == 2 and anon.stats["veiled"] == 1 and anon.stats["held"] == 0
    rendered, rechecked = anon.stats["rendered"], anon.stats["rechecked"]
    for _ in range(3):  # the same pose: the mosaic, no render, no check
        assert np.array_equal(one_frame(anon, img, face, 7), mosaic)
    assert anon.stats["held"] == 3 and anon.stats["rendered"] == rendered and anon.stats["rechecked"] == rechecked
    anon.check.max_similarity = 0.35
    one_frame(anon, near, near_face, 7)  # it neared: drawn, and checked whatever its pose
    assert anon.stats["rendered"] == rendered + 1 and anon.stats["rechecked"] == rechecked + 1
    assert anon.stats["recheck_failed"] == 2
    # a failure held at one pose is drawn again after HOLD_FRAMES even where the face stays
    anon.check.max_similarity = -1.0
    one_frame(anon, img, face, 7)
    assert anon.stats["recheck_failed"] == 3
    held = anon.stats["held"]
    anon.check.max_similarity = 0.35
    for _ in range(HOLD_FRAMES - 1):
        one_frame(anon, img, face, 7)
    assert anon.stats["held"] == held + HOLD_FRAMES - 1
    out = one_frame(anon, img, face, 7)
    assert anon.stats["held"] == held + HOLD_FRAMES - 1 and anon.stats["recheck_failed"] == 3
    assert cosine(emb, img, out, face) < 0.35


def test_a_veiled_track_keeps_its_donor_and_hides_the_outline_that_carried_the_person(models):
    """Veiled, a track shows the same synthetic face (the donor's pixels at the face's centre are
    unchanged) over hair and ears blurred past recognition's use: the outline's shapes depart from
    the person's twice as far (2.2-3x on these photos), and the recogniser stands farther from the
    person."""
    from edge_agent.anonymize.donor import _Track

    _, emb, photos = models
    plain_cos, veiled_cos = [], []
    for img, face in photos:
        anon = DonorAnonymizer(budget_ms=None, frame_budget_ms=None)
        donor = int(anon.bank.nearest(*pose(face.landmarks), np.array([60, 10, 15], np.float32), big=True)[0])
        outs = []
        for veiled in (False, True):
            out = img.copy()
            anon.render(out, face, _Track(donor=donor, veiled=veiled), 3)
            outs.append(out)
        plain, veil = outs
        rows, cols, region = face_region(face, img.shape)
        # the head outside the detector's box (hair, ears), not the region's very rim
        outline = cv2.erode(region, np.ones((5, 5), np.uint8)) > 0
        x1, y1, x2, y2 = (int(v) for v in face.box)
        outline[y1 - rows.start:y2 - rows.start, x1 - cols.start:x2 - cols.start] = False
        assert outline.sum() > 1000
        centre = np.round(face.landmarks.mean(0)).astype(int)
        assert np.array_equal(plain[centre[1], centre[0]], veil[centre[1], centre[0]]), "the donor's face moved"

        def shapes(im):  # the outline's shapes, under the grain the paste puts back
            return cv2.GaussianBlur(cv2.cvtColor(im[rows, cols], cv2.COLOR_BGR2GRAY).astype(np.float32), (0, 0), 2.0)

        moved = [float(np.abs(shapes(im) - shapes(img))[outline].mean()) for im in (plain, veil)]
        assert moved[1] > 1.8 * moved[0], moved
        plain_cos.append(cosine(emb, img, plain, face))
        veiled_cos.append(cosine(emb, img, veil, face))
    assert np.mean(veiled_cos) < np.mean(plain_cos) - 0.02, (veiled_cos, plain_cos)


def test_unsure_detection_gets_the_fallback_not_a_face(models):
    """Backs of heads, hands and logos reach the anonymizer with detector scores of 0.2-0.75 on the
    clips: a synthetic face pasted there is worse than a mosaic. Only a new track needs the score."""
    from edge_agent.anonymize.classical import Pixelate

    _, _, photos = models
    img, face = photos[0]
    unsure = Face(face.box.copy(), face.landmarks.copy(), 0.6)
    anon = DonorAnonymizer(budget_ms=None, min_score=0.75)
    out, ref = img.copy(), img.copy()
    anon.anonymize(out, unsure, seed=41)
    Pixelate().anonymize(ref, unsure, seed=41)
    assert anon.donor_of(41) is None and anon.stats["unsure"] == 1
    assert np.array_equal(out, ref)
    anon.anonymize(out, face, seed=42)  # the same face, scored as YuNet scored it, gets a donor
    assert face.score >= 0.75 and anon.donor_of(42) is not None
    # ...and keeps it in a frame the detector is less sure of (no flicker to the mosaic)
    dip, plain = img.copy(), img.copy()
    anon.begin_frame()
    anon.anonymize(dip, Face(face.box.copy(), face.landmarks.copy(), 0.6), seed=42)
    Pixelate().anonymize(plain, unsure, seed=42)
    assert anon.stats["unsure"] == 1 and anon.stats["rendered"] == 2 and not np.array_equal(dip, plain)


def test_a_false_detection_beside_a_face_is_redacted_before_the_face_gets_its_donor(models):
    """A low-scored detection on the background beside a face gets the mosaic; drawn after the
    face, its ellipse cut into the new face's cheek. It is now served first (``priority``), and the
    donor is pasted over the part of it that overlaps: the new face's centre is the same pixels as
    with no false detection at all (its colour read from the frame as filmed, not from the mosaic)."""
    _, _, photos = models
    img, face = photos[0]
    shift = np.float32([0.78 * face.width, 0.0])  # beside it, not a second detection of its head (``shadowed``)
    ghost = Face(face.box + np.tile(shift, 2), face.landmarks + shift, 0.3)
    x1, y1, x2, y2 = (int(v) for v in face.box)
    dx, dy = (x2 - x1) // 4, (y2 - y1) // 4
    centre = (slice(y1 + dy, y2 - dy), slice(x1 + dx, x2 - dx))  # eyes, nose and mouth: under the donor's opaque core

    def served(faces: list[tuple[Face, int]], ordered: bool) -> tuple[np.ndarray, DonorAnonymizer]:
        anon = DonorAnonymizer(budget_ms=None, frame_budget_ms=None)
        out = img.copy()
        anon.begin_frame([f for f, _ in faces], img)
        for f, seed in sorted(faces, key=lambda fs: anon.priority(fs[1], fs[0])) if ordered else faces:
            anon.anonymize(out, f, seed=seed)
        return out, anon

    alone, _ = served([(face, 1)], True)
    out, anon = served([(face, 1), (ghost, 2)], True)
    assert anon.priority(2, ghost) < anon.priority(1, face) and anon.priority(3, Face(face.box, face.landmarks, 0.99)) > -5
    assert anon.stats["unsure"] == 1 and anon.donor_of(1) is not None and anon.donor_of(2) is None
    # (to a grey level of rounding where the box's edge meets the inner rim of the paste's feather)
    assert np.abs(out[centre].astype(int) - alone[centre].astype(int)).max() <= 1
    covered = out[face_region(ghost, img.shape)[:2]]
    assert not np.array_equal(covered, img[face_region(ghost, img.shape)[:2]])  # the false detection is still redacted
    cut, _ = served([(face, 1), (ghost, 2)], False)  # the old order: the mosaic over the new face
    assert np.abs(cut[centre].astype(int) - alone[centre].astype(int)).max() > 40


def test_crowd_over_the_frame_budget_keeps_its_donors_and_serves_the_rest_in_turn(models):
    """A frame with more faces than the budget covers: a face that has its donor keeps it (no
    switching between donor and mosaic), the rest get the fallback (covered, never raw), and
    when a track ends the longest-waiting face is served next."""
    from edge_agent.anonymize.diffusion import BudgetExceeded

    det, _, photos = models
    tiles = [cv2.resize(img, (240, 240)) for img, _ in photos] * 2  # 8 faces
    frame0 = np.vstack([np.hstack(tiles[:4]), np.hstack(tiles[4:])])
    faces = sorted(det.detect(frame0), key=lambda f: (float(f.box[1]) // 120, float(f.box[0])))
    assert len(faces) == 8
    anon = DonorAnonymizer(budget_ms=None, frame_budget_ms=1e-6)  # one face a frame
    live = list(range(8))

    def frame_served() -> list[int]:
        frame = frame0.copy()
        anon.begin_frame()
        got = []
        for k in sorted(live, key=anon.priority):
            try:
                anon.anonymize(frame, faces[k], k)
                got.append(k)
            except BudgetExceeded:
                continue
        return got

    assert [frame_served() for _ in range(4)] == [[0]] * 4
    assert anon.stats["over_budget"] == 4 * 7
    live.remove(0)
    anon.forget(0)  # face 0's track ended: the next face gets its turn, and keeps it
    assert [frame_served() for _ in range(3)] == [[1]] * 3


def test_still_crowd_fills_with_donors_by_replaying_renders(models):
    """With the frame's faces known, a face that stayed put gets its last render written again
    (a copy, not a render): a still crowd over the budget has every face's donor after one frame
    per face. A face that moved, or one another face comes near, is drawn anew."""
    from edge_agent.anonymize.diffusion import BudgetExceeded
    from edge_agent.anonymize.donor import REUSE_FRAMES

    det, _, photos = models
    tiles = [cv2.copyMakeBorder(cv2.resize(img, (240, 240)), 60, 60, 60, 60, cv2.BORDER_CONSTANT, value=(90, 90, 90))
             for img, _ in photos] * 2
    frame0 = np.vstack([np.hstack(tiles[:4]), np.hstack(tiles[4:])])
    faces = sorted(det.detect(frame0), key=lambda f: (float(f.box[1]) // 180, float(f.box[0])))
    assert len(faces) == 8
    anon = DonorAnonymizer(budget_ms=None, frame_budget_ms=1e-6)  # one render a frame
    outputs = []

    def frame_served(faces_now) -> list[int]:
        frame = frame0.copy()
        anon.begin_frame(faces_now)
        got = []
        for k in sorted(range(len(faces_now)), key=anon.priority):
            try:
                anon.anonymize(frame, faces_now[k], k)
                got.append(k)
            except BudgetExceeded:
                continue
        outputs.append(frame)
        return sorted(got)

    assert [len(frame_served(faces)) for _ in range(8)] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert anon.stats["rendered"] == 8 and anon.stats["replayed"] == 28
    for _ in range(2 * REUSE_FRAMES):  # past REUSE_FRAMES, one face a frame is drawn anew, the rest replayed
        assert frame_served(faces) == list(range(8))
    assert all(anon.donor_of(k) is not None for k in range(8))
    for f in faces:
        rows, cols, region = face_region(f, frame0.shape)
        inside = region > 0
        assert np.abs(outputs[-1][rows, cols][inside].astype(int) - frame0[rows, cols][inside]).mean() > 8  # covered
    replayed = anon.stats["replayed"]
    rendered = anon.stats["rendered"]
    # face 0 moves by 5 % of its width: drawn anew (it is served first: it showed its donor last frame)
    moved = list(faces)
    moved[0] = Face(faces[0].box + 0.05 * faces[0].width, faces[0].landmarks + 0.05 * faces[0].width, faces[0].score)
    frame_served(moved)
    assert anon.stats["rendered"] == rendered + 1 and anon.stats["replayed"] == replayed + 7
    # a neighbour close to face 1: neither is replayed (a replay could write back the other's pixels)
    near = list(faces) + [Face(faces[1].box + [40, 0, 40, 0], faces[1].landmarks + [40, 0], faces[1].score)]
    replayed = anon.stats["replayed"]
    frame = frame0.copy()
    anon.begin_frame(near)
    anon.anonymize(frame, near[1], 1)
    assert anon.stats["replayed"] == replayed


def test_one_donor_per_track_across_frames(shared_dir, models):
    """A track keeps its synthetic person over the clip's frames while the head moves; another
    track gets another; the same seed picks the same donor after a restart (deterministic)."""
    det, _, _ = models
    cap = cv2.VideoCapture(str(shared_dir / "video/short_hamilton_clip.mp4"))
    frames = []
    for i in range(175):
        ok, frame = cap.read()
        assert ok
        if i >= 150:
            frames.append(frame)
    a = DonorAnonymizer(budget_ms=None)
    donors, renders = [], []
    for frame in frames[::3]:
        face = max(det.detect(frame), key=lambda f: f.width)
        out = frame.copy()
        a.begin_frame()
        a.anonymize(out, face, seed=7)
        donors.append(a.donor_of(7))
        renders.append(out)
    assert donors[0] is not None and len(set(donors)) == 1
    b = DonorAnonymizer(budget_ms=None)
    b.anonymize(frames[0].copy(), max(det.detect(frames[0]), key=lambda f: f.width), seed=7)
    assert b.donor_of(7) == donors[0]
    others = set()
    for s in range(20, 30):
        b.anonymize(frames[0].copy(), max(det.detect(frames[0]), key=lambda f: f.width), seed=s)
        others.add(b.donor_of(s))
    assert len(others) >= 4


def test_two_strangers_of_one_frame_never_wear_the_same_synthetic_person(models):
    """Donors are drawn by pose, skin tone, apparent sex and age, so strangers alike in those drew
    among the same dozen donors and a crowd showed twins. A new track draws among the synthetic
    people no other track shows, mirrored copies included; a donor comes free when its track ends."""
    det, _, photos = models
    tile = cv2.copyMakeBorder(cv2.resize(photos[0][0], (240, 240)), 60, 60, 60, 60, cv2.BORDER_CONSTANT, value=(90, 90, 90))
    frame0 = np.vstack([np.hstack([tile] * 4)] * 2)  # one face, eight times: the same dozen nearest donors
    faces = det.detect(frame0)
    assert len(faces) == 8

    def people(anon: DonorAnonymizer) -> list[int]:
        frame = frame0.copy()
        anon.begin_frame(faces, frame)
        for k, face in enumerate(faces):
            anon.anonymize(frame, face, k)
        return [anon.bank.person(anon.donor_of(k)) for k in range(8)]

    alone = DonorAnonymizer(budget_ms=None, frame_budget_ms=None)
    alone.worn = lambda but=None: []  # the draw before: each track as if it were alone
    assert len(set(people(alone))) < 8
    anon = DonorAnonymizer(budget_ms=None, frame_budget_ms=None)
    worn = people(anon)
    assert len(set(worn)) == 8 and sorted(anon.worn()) == sorted(worn)
    anon.forget(0)
    assert worn[0] not in anon.worn() and sorted(anon.worn(but=1)) == sorted(worn[2:])

    bank = anon.bank
    yaw, pitch = pose(faces[0].landmarks)
    tone = np.float32([60, 10, 15])
    near = bank.nearest(yaw, pitch, tone, big=True)
    taken = [bank.person(i) for i in near[:6]]
    others = bank.nearest(yaw, pitch, tone, big=True, worn=taken)
    assert len(others) == len(near) and not set(bank.person(i) for i in others) & set(taken)
    everyone = bank.nearest(yaw, pitch, tone, big=True, worn=range(bank.size))  # too few left: worn donors come back
    assert len(everyone) == len(near)


def test_a_turned_face_gets_its_new_face_over_its_near_cheek(shared_dir, models, monkeypatch, record_property):
    """In the aligned crop a turned face lies toward its near cheek and is wider (the face-mesh
    hulls of the bank's donors: model_export/anonymizer/face_hulls.py). Centred on the eyes, the
    paste left a turned stranger's near cheek beside the new face under the light blur, and laid
    the new face's far side over what lies behind the far cheek (a pale glow). On the selfie's face
    turned 0.34, the band of near cheek the centred paste left out is now the donor's."""
    import edge_agent.anonymize.donor as donor_mod
    from edge_agent.anonymize.diffusion import aligned_crop
    from edge_agent.anonymize.donor import crop_size, paste_masks, turn

    det = models[0]
    img = cv2.imread(str(shared_dir / "faces/deepface/selfie-many-people.jpg"))
    face = next(f for f in det.detect(img) if f.width >= 100 and abs(pose(f.landmarks)[0]) >= 0.3)
    size = min(crop_size(face), 256)
    _, matrix, crop_lm = aligned_crop(img, face, size)
    yaw = turn(crop_lm)
    band = (paste_masks(size, yaw)[2] & ~paste_masks(size, 0.0)[2]).astype(np.uint8)
    h, w = img.shape[:2]
    in_frame = cv2.warpAffine(band, cv2.invertAffineTransform(matrix), (w, h), flags=cv2.INTER_NEAREST) > 0
    assert in_frame.sum() > 300  # a band of cheek, not a sliver

    def change() -> float:
        out = img.copy()
        DonorAnonymizer(budget_ms=None, frame_budget_ms=None).anonymize(out, face, 3)
        return float(np.abs(out.astype(np.float32) - img.astype(np.float32))[in_frame].mean())

    def masks_anew() -> None:  # the masks are cached per yaw
        for cached in (donor_mod.paste_masks, donor_mod.rim_bands, donor_mod.forehead_band):
            cached.cache_clear()

    now = change()
    monkeypatch.setattr(donor_mod, "TURN_SHIFT", 0.0)  # the paste centred on the eyes, as before
    monkeypatch.setattr(donor_mod, "TURN_WIDEN", 0.0)
    masks_anew()
    centred = change()
    masks_anew()
    record_property("near_cheek_change", {"following the turn": round(now, 1), "centred": round(centred, 1)})
    assert now > 2.0 * centred and now > 12.0, (now, centred)


def test_evaluation_measures_each_photo_as_a_fresh_agent_would(models):
    """The evaluation anonymizes thousands of photos with one engine, each photo's faces as new
    tracks. Left alive, their donors counted as worn and pushed every later face's donor off its
    nearest: a photo's face must draw the donor an engine that has seen nothing draws."""
    from model_export.anonymizer.realism import anonymized

    det, _, photos = models
    img = photos[0][0]
    face = det.detect(img)[0]

    def donor(anon: DonorAnonymizer, seed: int) -> int:
        anon.anonymize(img.copy(), face, seed)
        return anon.bank.person(anon.donor_of(seed))

    alone = {s: donor(DonorAnonymizer(budget_ms=None, frame_budget_ms=None), s) for s in range(1, 25)}
    twin = next(s for s in range(2, 25) if alone[s] == alone[1])  # alone, it draws seed 1's donor
    used = DonorAnonymizer(budget_ms=None, frame_budget_ms=None)
    anonymized(used, img, [face], [1])
    assert used.worn() == [] and donor(used, twin) == alone[1]
    kept = DonorAnonymizer(budget_ms=None, frame_budget_ms=None)  # what the evaluation measured before
    donor(kept, 1)
    assert donor(kept, twin) != alone[1]


def test_dark_scene_gets_a_dark_face(models, anon):
    """No pale mask in the dark: the new face takes the scene's brightness (median |dL*| <= 3)."""
    from model_export.anonymizer.realism import mean_lstar

    det, _, photos = models
    diffs = []
    for k, (img, _) in enumerate(photos):
        dark = np.clip((img.astype(np.float32) / 255) ** 2.2 * 0.15, 0, 1) ** (1 / 2.2) * 255
        dark = dark.astype(np.uint8)
        faces = det.detect(dark)
        if not faces:
            continue
        face = max(faces, key=lambda f: f.width)
        out = dark.copy()
        anon.anonymize(out, face, seed=200 + k)
        diffs.append(abs(mean_lstar(out, face.box) - mean_lstar(dark, face.box)))
    assert len(diffs) >= 3 and float(np.median(diffs)) <= 3.0


def test_close_up_keeps_the_scene_s_fine_detail(models, anon):
    """Portraits of 60-190 px: the new face and its surroundings keep the original's fine detail
    (Laplacian spread in the box, the realism report's detail ratio): over eight donors drawn
    across the bank, each portrait's median within 0.7-1.3, and no render under 0.62. Before the
    two-band paste and the grain put back over the blurred head, one came out at 0.60 (a soft
    patch). The donors are fixed: which donor a track draws moves the ratio on obama.jpg alone
    from 0.67 to 0.82, and the check is of the paste, not of the draw."""
    from edge_agent.anonymize.donor import _Track
    from model_export.anonymizer.realism import detail

    _, _, photos = models
    bank = anon.bank
    donors = [i for i in range(bank.size) if bank.has_big(i) and bank.clear(i)][::40][:8]
    assert len(donors) == 8
    for img, face in photos:
        ratios = []
        for i in donors:
            out = img.copy()
            anon.render(out, face, _Track(donor=i), 1)
            ratios.append(detail(out, face.box) / detail(img, face.box))
        assert 0.7 <= np.median(ratios) <= 1.3 and min(ratios) >= 0.62, np.round(ratios, 2)


def test_a_defocused_close_up_gets_a_donor_as_soft_as_the_scene(shared_dir, models):
    """A 400 px face out of focus by 4 and 8 px: the new face takes the scene's blur, detail ratio
    within 0.8-1.2 over four donors. Its only fine detail left is the rounding to whole grey
    levels, which the paste adds to the donor again: matched as measured (the previous commit), it
    came out at 1.25-1.28 at 4 px."""
    from edge_agent.anonymize.donor import _Track
    from model_export.anonymizer.realism import detail

    det, _, _ = models
    img0 = cv2.imread(str(shared_dir / "faces/face_recognition/examples/obama.jpg"))
    face0 = max(det.detect(img0), key=lambda f: f.width)
    sharp = cv2.resize(img0, None, fx=400 / face0.width, fy=400 / face0.width, interpolation=cv2.INTER_CUBIC)
    anon = DonorAnonymizer(budget_ms=None, frame_budget_ms=None)
    donors = [i for i in range(anon.bank.size) if anon.bank.has_big(i) and anon.bank.clear(i)][::100][:4]
    for sigma in (4.0, 8.0):
        img = cv2.GaussianBlur(sharp, (0, 0), sigma)
        face = max(det.detect(img), key=lambda f: f.width)
        ratios = []
        for i in donors:
            out = img.copy()
            anon.render(out, face, _Track(donor=i), 1)
            ratios.append(detail(out, face.box) / detail(img, face.box))
        assert 0.8 <= min(ratios) and max(ratios) <= 1.2, (sigma, np.round(ratios, 2))


def test_a_face_smeared_by_motion_gets_a_donor_smeared_the_same_way(shared_dir, models, monkeypatch):
    """A 200 px face smeared 21 px along a row, then along a column: the donor's gradient energy
    across the rows against down the columns, relative to the original's, stays within 0.6-1.6
    (median over eight donors); blurred evenly (the previous commit), the donor kept its eyes and
    brows crisp along the smear (3.8 along the row). On the sharp portraits no donor is smeared."""
    from edge_agent.anonymize import donor as donor_mod
    from model_export.anonymizer.realism import box_slices

    def across_vs_down(img, face):
        rows, cols = box_slices(face.box, img.shape, grow=0.6)
        g = cv2.cvtColor(img[rows, cols], cv2.COLOR_BGR2GRAY).astype(np.float32)
        return float(np.mean(cv2.Sobel(g, cv2.CV_32F, 1, 0) ** 2) / np.mean(cv2.Sobel(g, cv2.CV_32F, 0, 1) ** 2))

    det, _, photos = models
    anon = DonorAnonymizer(budget_ms=None, frame_budget_ms=None)
    donors = [i for i in range(anon.bank.size) if anon.bank.has_big(i) and anon.bank.clear(i)][::60][:8]
    img0 = cv2.imread(str(shared_dir / "faces/face_recognition/examples/obama.jpg"))
    face0 = max(det.detect(img0), key=lambda f: f.width)
    sharp = cv2.resize(img0, None, fx=200 / face0.width, fy=200 / face0.width, interpolation=cv2.INTER_CUBIC)
    for kernel in (np.ones((1, 21), np.float32) / 21, np.ones((21, 1), np.float32) / 21):
        img = cv2.filter2D(sharp, -1, kernel)
        face = max(det.detect(img), key=lambda f: f.width)
        ratios = []
        for i in donors:
            out = img.copy()
            anon.render(out, face, donor_mod._Track(donor=i), 1)
            ratios.append(across_vs_down(out, face) / across_vs_down(img, face))
        assert 0.6 <= np.median(ratios) <= 1.6, np.round(ratios, 2)
    smeared = []
    real = donor_mod.smear
    monkeypatch.setattr(donor_mod, "smear", lambda *a: smeared.append(1) or real(*a))
    for img, face in photos:
        for i in donors:
            anon.render(img.copy(), face, donor_mod._Track(donor=i), 1)
    assert not smeared


def test_a_sharp_close_up_s_hair_strands_are_not_taken_for_a_smear(shared_dir, models, monkeypatch):
    """Long straight hair, a beard or a striped background runs one way in parts of a sharp
    close-up, and on its own passed the whole-face smear tests: a 520 px face's donor came out
    smeared down to blobs. A smear must show in most of the paste's blocks against their own
    coarser scale (``smeared_throughout``). Before, 13, 20 and 23 of these 24 donors were smeared
    on these three close-ups; a smeared face still is (the test above)."""
    from edge_agent.anonymize import donor as donor_mod

    det, _, _ = models
    anon = DonorAnonymizer(budget_ms=None, frame_budget_ms=None)
    donors = [i for i in range(anon.bank.size) if anon.bank.has_big(i) and anon.bank.clear(i)][::20][:24]
    smeared = []
    real = donor_mod.smear
    monkeypatch.setattr(donor_mod, "smear", lambda *a: smeared.append(1) or real(*a))
    for name, width in (("img40.jpg", 520), ("img55.jpg", 300), ("img3.jpg", 520)):
        img = cv2.imread(str(shared_dir / "faces/deepface" / name))
        scale = width / max(det.detect(img), key=lambda f: f.width).width
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
        face = max(det.detect(img), key=lambda f: f.width)
        hits = 0
        for i in donors:
            before = len(smeared)
            anon.render(img.copy(), face, donor_mod._Track(donor=i), 1)
            hits += len(smeared) > before
        assert hits <= 3, (name, hits)


def _stage_lit(img: np.ndarray, bgr_gain) -> np.ndarray:
    """``img`` under a coloured light: each channel scaled in linear light."""
    lin = (img.astype(np.float32) / 255.0) ** 2.2 * np.asarray(bgr_gain, np.float32)
    return np.clip(255.0 * np.clip(lin, 0.0, 1.0) ** (1 / 2.2), 0, 255).astype(np.uint8)


def test_under_a_coloured_stage_light_the_donor_still_has_the_face_s_pose(models):
    """Under green or blue light no donor's skin is near the stranger's: uncapped, the colour
    outweighed the pose and a donor turned to one side was drawn onto a frontal face (torn apart
    by the warp). Each tone component now counts up to ``TONE_CAP``: the twelve donors offered
    stay within 0.1 of the face's yaw (median; a "close" pose is 0.08) on every portrait."""
    from edge_agent.anonymize.descriptors import appearance
    from edge_agent.anonymize.diffusion import aligned_crop

    _, _, photos = models
    bank = DonorBank()
    for img, face in photos:
        yaw, pitch = pose(face.landmarks)

        def pose_gap(lit: np.ndarray) -> float:
            crop, _, _ = aligned_crop(lit, face, 128)
            near = bank.nearest(yaw, pitch, appearance(crop), big=True)
            return float(np.median(np.abs(bank.pose[near, 0] - yaw)))

        white = pose_gap(img)
        for gain in ((0.3, 1.0, 0.35), (1.1, 0.45, 0.2)):
            assert pose_gap(_stage_lit(img, gain)) <= max(white, 0.1), (white, gain)


def test_under_a_coloured_stage_light_the_donor_s_dark_parts_stay_dark_not_coloured(models):
    """The light's colour is a per-channel gain on the donor and its contrast a gain on each
    pixel's grey level: shifted instead, a donor's beard and lips went below zero in some
    channels under a green light (down to -69 grey levels) and came out as saturated green
    blotches. Every close-up donor that may be drawn is tried: the shading put back may dip a
    little below zero."""
    from edge_agent.anonymize.diffusion import aligned_crop
    from edge_agent.anonymize.donor import ColourStats, paste_masks, transfer

    _, _, photos = models
    bank = DonorBank()
    img, face = photos[0]
    crop, _, _ = aligned_crop(_stage_lit(img, (0.3, 1.0, 0.35)), face, 128)
    _, _, hard, inner = paste_masks(128)
    donors = [i for i in range(bank.size) if bank.has_big(i) and bank.clear(i)]
    assert len(donors) > 400
    for i in donors:
        out = transfer(bank.donor(i)[0].astype(np.float32), crop, hard, inner, ColourStats.of(crop, inner), 1.0)
        assert out[inner].min() >= -16.0, (i, out[inner].min(0))


def test_on_an_infrared_grey_camera_the_new_face_is_grey_and_chosen_without_colour(models):
    """An infrared camera's grey image: the new face has no colour (the donor's pink lips and
    ruddy cheeks stayed in colour), and its choice ignores the skin's
    colour, which a grey image does not show (compared, the palest donors, mostly children, came
    first: 3-5 of the 12 offered for these portraits were of no sure sex)."""
    from edge_agent.anonymize.diffusion import aligned_crop
    from edge_agent.anonymize.donor import skin_tone
    from model_export.anonymizer.realism import box_slices

    _, _, photos = models
    anon = DonorAnonymizer(budget_ms=None, frame_budget_ms=None)
    for k, (img, face) in enumerate(photos):
        grey = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        crop, _, _ = aligned_crop(grey, face, 128)
        assert np.isnan(skin_tone(crop)[1:]).all() and not np.isnan(skin_tone(aligned_crop(img, face, 128)[0])).any()
        yaw, pitch = pose(face.landmarks)
        near = anon.bank.nearest(yaw, pitch, skin_tone(crop), big=True)
        unsure = np.abs(anon.bank.male[near] - 0.5) < 0.25
        assert unsure.sum() <= 4, anon.bank.male[near]
        out = grey.copy()
        anon.begin_frame()
        anon.anonymize(out, face, 100 + k)
        rows, cols = box_slices(face.box, grey.shape, grow=1.5)
        lab = cv2.cvtColor(out[rows, cols], cv2.COLOR_BGR2LAB).astype(np.float32)
        assert np.hypot(lab[..., 1] - 128, lab[..., 2] - 128).max() <= 3.0


def test_a_surgical_mask_is_not_taken_for_the_skin(models):
    """A pale-blue mask from just above the nose tip to below the chin: the skin colour the donor is
    given is read above it (within 12 L*a*b* units of the unmasked face's, where the cheeks and
    nose gave the mask's own colour, a pale-blue face); on the unmasked faces the cheeks and nose
    are still where it is read."""
    from edge_agent.anonymize.descriptors import lab_pixels, skin_mask, tone_mask
    from edge_agent.anonymize.diffusion import aligned_crop
    from edge_agent.anonymize.donor import ColourStats, paste_masks

    _, _, photos = models
    _, _, _, inner = paste_masks(128)

    def lab(bgr):
        return lab_pixels(np.clip(np.asarray(bgr, np.float32), 0, 255).astype(np.uint8).reshape(1, 1, 3), np.ones((1, 1), bool))[0]

    for img, face in photos:
        (x1, y1, x2, y2), nose = face.box, face.landmarks[2]
        h = y2 - y1
        masked = img.copy()
        pts = np.array([[x1, nose[1] - 0.08 * h], [x2, nose[1] - 0.08 * h], [x2 - 0.1 * (x2 - x1), y2 + 0.05 * h], [x1 + 0.1 * (x2 - x1), y2 + 0.05 * h]], np.int32)
        cv2.fillPoly(masked, [pts], (235, 215, 190))
        bare, _, _ = aligned_crop(img, face, 128)
        covered, _, _ = aligned_crop(masked, face, 128)
        assert skin_mask(bare) is tone_mask(128)
        skin = lab(ColourStats.of(covered, inner).mean)
        assert np.linalg.norm(skin - lab(ColourStats.of(bare, inner).mean)) < 12.0, skin
        assert np.linalg.norm(skin - lab((235, 215, 190))) > 20.0


def test_close_up_is_drawn_from_the_donor_s_256_px_crop(shared_dir, models):
    """A face from ``LARGE_FACE_PX`` wide whose donor the bank holds at 256 px is drawn from that
    crop: more real skin, eye and hair-line detail (the 2-6 px band of the face's centre) than the
    same donor's 128 px crop enlarged 2x, which only the camera-matching grain roughens: every
    render, and by 5 % and more over the three photos."""
    import cv2

    from edge_agent.anonymize.donor import LARGE_FACE_PX, _Track
    from model_export.anonymizer.realism import box_slices

    det, _, _ = models
    anon = DonorAnonymizer(budget_ms=None, frame_budget_ms=None)
    bank = anon.bank
    donors = [i for i in range(bank.size) if bank.has_big(i)][:6]

    def mid_band(image, box):
        rows, cols = box_slices(box, image.shape, grow=0.6)
        g = cv2.cvtColor(image[rows, cols], cv2.COLOR_BGR2GRAY).astype(np.float32)
        return float((cv2.GaussianBlur(g, (0, 0), 1.0) - cv2.GaussianBlur(g, (0, 0), 3.0)).std())

    every = []
    for name in ("obama.jpg", "biden.jpg", "obama2.jpg"):
        img = cv2.imread(str(shared_dir / "faces/face_recognition/examples" / name))
        face = max(det.detect(img), key=lambda f: f.width)
        assert face.width >= LARGE_FACE_PX
        ratios = []
        for i in donors:
            big = img.copy()
            anon.render(big, face, _Track(donor=i), 1)
            enlarged = img.copy()
            anon.bank.has_big = lambda j: False
            try:
                anon.render(enlarged, face, _Track(donor=i), 1)
            finally:
                del anon.bank.has_big
            ratios.append(mid_band(big, face.box) / mid_band(enlarged, face.box))
        assert min(ratios) > 1.0, (name, np.round(ratios, 3))
        every += ratios
    # obama.jpg, the softest of the three, sits at 1.04-1.06 (the detail is matched to the scene's
    # in both): the margin is asked of all three together
    assert np.mean(every) > 1.05, np.round(every, 3)


def test_noisy_scene_keeps_its_grain_over_the_whole_head(models, anon):
    """Sensor noise is everywhere in a camera frame: the blurred ring around the new face gets it
    back, so the head region is not a smooth, pasted-looking patch."""
    from edge_agent.anonymize.donor import _noise

    det, _, photos = models
    img, face = photos[0]
    noisy = np.clip(img + np.random.default_rng(0).normal(0, 6, img.shape[:2])[..., None], 0, 255).astype(np.uint8)
    face = max(det.detect(noisy), key=lambda f: f.width)
    out = noisy.copy()
    anon.anonymize(out, face, seed=300)
    rows, cols, region = face_region(face, out.shape)
    ring = region > 0
    ring[int(ring.shape[0] * 0.2):int(ring.shape[0] * 0.8), int(ring.shape[1] * 0.2):int(ring.shape[1] * 0.8)] = False
    grey = lambda im: cv2.cvtColor(im[rows, cols], cv2.COLOR_BGR2GRAY).astype(np.float32)
    before, after = _noise(grey(noisy), ring), _noise(grey(out), ring)
    assert before > 3.0 and after > 0.6 * before, (before, after)
    assert np.any(out[rows, cols][ring] != noisy[rows, cols][ring])  # the ring was redrawn

def test_config_selects_donor_and_fails_closed_without_a_bank(tmp_path, caplog):
    from edge_agent.anonymize import build_anonymizers
    from edge_agent.config import AnonymizerConfig

    engine, fallback = build_anonymizers(AnonymizerConfig(mode="donor"))
    assert isinstance(engine, DonorAnonymizer) and fallback.name == "pixelate"
    with caplog.at_level(logging.ERROR):
        engine, fallback = build_anonymizers(AnonymizerConfig.model_validate({"mode": "donor", "donor": {"bank": str(tmp_path / "none.npz")}}))
    assert engine is fallback and "donor anonymizer unavailable" in caplog.text
    with pytest.raises(ValueError, match="bogus"):
        AnonymizerConfig.model_validate({"mode": "donor", "donor": {"bogus": 1}})


def test_an_agent_without_recognition_veils_every_stranger_s_outline(models):
    """With recognition off nothing can find a render too close to its person, so the agent veils
    every track's hair and ears (the plain render re-identified 2.4 % of 1,000 LFW identities with
    the project's recogniser, the veiled 0.6 %); with its recogniser it veils only the tracks the
    check finds too close."""
    from edge_agent.anonymize import build_anonymizers
    from edge_agent.anonymize.donor import _Track
    from edge_agent.config import AnonymizerConfig

    _, emb, photos = models
    img, face = photos[1]
    blind, _ = build_anonymizers(AnonymizerConfig(mode="donor"))
    checked, _ = build_anonymizers(AnonymizerConfig(mode="donor"), emb)
    assert blind.veil and not checked.veil
    out = img.copy()
    blind.begin_frame([face], img)
    blind.anonymize(out, face, 5)
    blind.end_frame(out)
    assert blind._tracks[5].veiled
    by_hand, hand = {}, DonorAnonymizer()
    hand._frame_no = blind._frame_no  # the grain's seed
    for veiled in (True, False):
        by_hand[veiled] = img.copy()
        hand.render(by_hand[veiled], face, _Track(donor=blind.donor_of(5), veiled=veiled), 5)
    assert np.array_equal(out, by_hand[True]) and not np.array_equal(out, by_hand[False])


def test_a_still_photo_gives_every_face_its_donor_at_once(shared_dir, make_config):
    """The per-frame budgets keep a stream's frame rate by serving a crowd's new faces over several
    frames, with the classical fallback until their turn. A still photo has no next frame: run as
    a stream, most portraits of a 1080p mosaic kept the mosaic; as a photo (``edge-agent process``
    on an image) every one gets its donor."""
    from edge_agent.service import STILL_IMAGE_TIMEOUT_S, Models
    from edge_agent.stats import CameraStats

    people = sorted((shared_dir / "faces/people").rglob("*.jpg"))[:8]
    canvas = np.zeros((1080, 1920, 3), np.uint8)
    for k, path in enumerate(people):
        img = cv2.imread(str(path))
        s = min(480 / img.shape[1], 540 / img.shape[0])
        img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        y, x = 540 * (k // 4), 480 * (k % 4)
        canvas[y:y + img.shape[0], x:x + img.shape[1]] = img
    models = Models(make_config(anonymizer={"mode": "donor"}))
    served = {}
    for still in (False, True):
        guard = models.pipeline(CameraStats("mosaic"), still=still)
        guard.timeout_s = STILL_IMAGE_TIMEOUT_S  # the budgets under test, not the stream's deadline
        try:
            out, redacted = guard.filter_array(canvas.copy())
        finally:
            guard.close()
        served[still] = dict(guard.pipeline.anonymizer.stats)
        # a frame past its deadline is redacted whole while its worker runs on, and its stats are a
        # snapshot: on a loaded CPU the stream's deadline went by with 7 of 8 donors drawn
        assert out.shape == canvas.shape and not redacted, served[still]
    assert served[False]["over_budget"] >= 3, served[False]
    assert served[True]["over_budget"] == 0 and served[True]["new_tracks"] >= 8, served[True]


def test_a_track_that_begins_small_is_drawn_from_a_256_px_crop_when_it_comes_close(shared_dir, models):
    """A person walking up to a camera is first seen small (in a corridor, at the detector's
    smallest): every track picks among the donors the bank holds at 256 px, so its close-up is
    drawn from that crop, not from a 128 px one enlarged."""
    import cv2

    from edge_agent.anonymize.donor import LARGE_FACE_PX

    det, _, _ = models
    img = cv2.imread(str(shared_dir / "faces/face_recognition/examples/obama.jpg"))
    near = max(det.detect(img), key=lambda f: f.width)
    assert near.width >= LARGE_FACE_PX
    anon = DonorAnonymizer(budget_ms=None, frame_budget_ms=None)
    assert not all(anon.bank.has_big(i) for i in range(anon.bank.size)), "the bank holds donors without a close-up crop"
    chosen = []
    for width in (34.0, 70.0, 110.0):
        far_img = cv2.resize(img, None, fx=width / near.width, fy=width / near.width, interpolation=cv2.INTER_AREA)
        far = max(det.detect(far_img), key=lambda f: f.width)
        assert far.width >= anon.min_face_px
        for seed in range(1000, 1016):
            anon.forget(seed)
            anon.anonymize(far_img.copy(), far, seed)
            chosen.append(anon.bank.has_big(anon.donor_of(seed)))
    assert all(chosen) and len(chosen) == 48
    calls = []
    original = anon.bank.donor
    anon.bank.donor = lambda i, big=False: calls.append(big) or original(i, big)
    anon.anonymize(img.copy(), near, 1015)  # the last track, now close
    assert calls == [True] and anon.bank.has_big(anon.donor_of(1015))


def test_the_hairline_does_not_smear_into_a_close_up_s_forehead(monkeypatch):
    """A close-up whose hairline lies a little above the paste's top edge: the strong blur under
    the paste's rim used to mix that hair into the forehead between them, a dark arc across every
    close-up's forehead. Over the forehead it now blurs the face's own pixels: the paste's top edge
    stays within 4 grey levels of the skin, where the plain blur (the reference) darkens it by 13."""
    from edge_agent.anonymize import donor as donor_mod

    skin, hair = np.array([120, 150, 200], np.uint8), np.array([30, 35, 40], np.uint8)
    eyes_y, span = 280.0, 100.0  # an upright 300 px face: eyes to mouth 100 px
    scene = np.full((700, 700, 3), skin, np.uint8)
    scene[: int(eyes_y - 1.2 * span)] = hair  # the hairline 1.2 spans above the eyes (the paste's top: 0.9)
    lm = np.array([[255, eyes_y], [345, eyes_y], [300, eyes_y + 50], [265, eyes_y + span], [335, eyes_y + span]], np.float32)
    face = Face(np.array([185, 140, 415, 460], np.float32), lm, 0.95)
    band = slice(int(eyes_y - 1.05 * span), int(eyes_y - 0.8 * span))  # the paste's top edge and the skin above it

    def darkest(anon: DonorAnonymizer) -> float:
        out = scene.copy()
        anon.render(out, face, donor_mod._Track(donor=0), 1)
        grey = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY).astype(np.float32)
        return float(np.median(grey[band, 280:320], axis=1).min())

    anon = DonorAnonymizer(budget_ms=None, frame_budget_ms=None)
    skin_grey = float(cv2.cvtColor(skin[None, None], cv2.COLOR_BGR2GRAY)[0, 0])
    own = darkest(anon)
    monkeypatch.setattr(donor_mod, "forehead_ramp", lambda size: np.zeros((size, size), np.float32))
    plain = darkest(anon)
    assert own > skin_grey - 4, (own, skin_grey)
    assert plain < skin_grey - 10, (plain, skin_grey)


def test_a_track_whose_first_donors_were_all_too_close_tries_the_next_ones_later(models, one_frame):
    """All of a new track's first candidates too close to the person (an impossible bound here),
    and the first of them again with its outline veiled: the mosaic, and ``RETRY_FRAMES`` later its
    next candidates, never those it tried. Before, such a track kept the mosaic for its life: the
    demo clip's performer."""
    from edge_agent.anonymize.classical import Pixelate
    from edge_agent.anonymize.donor import RETRY_FRAMES, TRIES

    _, emb, photos = models
    img, face = photos[0]
    anon = DonorAnonymizer(budget_ms=None, frame_budget_ms=None, embedder=emb)
    mosaic = img.copy()
    Pixelate().anonymize(mosaic, face, 7)
    anon.check.max_similarity = -1.0
    assert np.array_equal(one_frame(anon, img, face, 7), mosaic)
    first = anon._tracks[7].tried
    assert len(first) == TRIES and anon.stats["too_similar"] == TRIES + 1 and anon.donor_of(7) is None
    anon.check.max_similarity = 0.25
    for _ in range(RETRY_FRAMES - 1):  # waiting: the mosaic, nothing rendered or checked
        assert np.array_equal(one_frame(anon, img, face, 7), mosaic)
    assert anon.stats["retried"] == 0 and anon.stats["rendered"] == 0
    out = one_frame(anon, img, face, 7)
    assert anon.stats["retried"] == 1 and anon.donor_of(7) is not None and anon.donor_of(7) not in first
    assert not np.array_equal(out, mosaic) and cosine(emb, img, out, face) < 0.25


def test_eval_realism_re_identifies_the_anonymizer_as_the_agent_builds_it(models_dir, tmp_path, capsys):
    """eval-realism's "as deployed" re-ID row is the engine the x86 config builds, its recogniser
    check included (what leaves the device); a config whose models are not there skips the row
    and says why."""
    from types import SimpleNamespace

    from model_export.anonymizer.realism import deployed_mode

    rows = deployed_mode(SimpleNamespace(config=ROOT / "device_configs/x86-cpu.yaml"))
    (name, engine), = rows.items()
    assert isinstance(engine, DonorAnonymizer) and engine.check is not None and "as deployed" in name
    broken = tmp_path / "broken.yaml"
    broken.write_text((ROOT / "device_configs/x86-cpu.yaml").read_text() + f"\nmodels:\n  dir: {tmp_path / 'nowhere'}\n")
    assert deployed_mode(SimpleNamespace(config=broken)) == {}
    assert "its re-ID row is skipped" in capsys.readouterr().out
