"""Masks, colour transfer, sharpness matching and blending (feathered alpha or Poisson).

What forgery detectors look for is a visible blending boundary and a colour or frequency
mismatch between the pasted face and the rest, so every step here works on the soft mask:
colour statistics are taken inside it, the Poisson region covers it, and the alpha ramps
smoothly to zero before the mask's edge.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

LOWFREQ_MIN, LOWFREQ_MAX = 0.6, 1.6  # shading ratio limits: a shadow may be lifted this far


def hull_mask(shape: tuple[int, ...], points: np.ndarray) -> np.ndarray:
    """Binary (0/1 float32) filled convex hull of ``points``."""
    mask = np.zeros(shape[:2], dtype=np.uint8)
    hull = cv2.convexHull(np.round(points).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1, lineType=cv2.LINE_8)
    return mask.astype(np.float32)


def skin_mask(shape: tuple[int, ...], outline: np.ndarray, points: np.ndarray,
              size: float) -> np.ndarray:
    """Cheeks, forehead, nose and chin: the face outline, eroded, minus the eyes, brows and
    mouth (their colours are not skin and would skew the statistics)."""
    mask = soft_mask(hull_mask(shape, outline), size, 0.08, 0.0)
    holes = np.zeros(shape[:2], dtype=np.uint8)
    for part in (range(17, 22), range(22, 27), range(36, 42), range(42, 48), range(48, 60)):
        cv2.fillConvexPoly(holes, cv2.convexHull(np.round(points[list(part)]).astype(np.int32)), 1)
    k = max(1, round(0.05 * size))
    holes = cv2.dilate(holes, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
    mask[holes > 0] = 0
    return mask


def skin_likelihood(img: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """0..1: how much each pixel looks like the skin under ``weight`` (per-channel z-scores
    in Lab; lightness loosely, since shading moves it; full up to 3 sigma, none past 5)."""
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB).astype(np.float32)
    mean, std = _masked_stats(lab, weight)
    std = np.maximum(std, [6.0, 3.0, 3.0]) * np.array([2.0, 1.0, 1.0])
    z = np.sqrt((((lab - mean.astype(np.float32)) / std.astype(np.float32)) ** 2).sum(axis=2))
    return np.clip((5.0 - z) / 2.0, 0.0, 1.0).astype(np.float32)


def soft_mask(binary: np.ndarray, size: float, erode: float, feather: float) -> np.ndarray:
    """Erode by ``erode * size`` then Gaussian-feather with sigma ``feather * size``.

    The erosion keeps the ramp inside the face, so the picture outside the hull stays
    untouched and the seam falls on skin, not on hair or background.
    """
    out = binary
    k = round(erode * size)
    if k > 0:
        out = cv2.erode(out, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
    if feather > 0:
        out = cv2.GaussianBlur(out, (0, 0), max(0.5, feather * size))
    return np.clip(out, 0.0, 1.0)


def _masked_stats(img: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = weight.reshape(-1, 1).astype(np.float64)
    total = max(float(w.sum()), 1e-6)
    flat = img.reshape(-1, img.shape[2]).astype(np.float64)
    mean = (flat * w).sum(axis=0) / total
    var = (((flat - mean) ** 2) * w).sum(axis=0) / total
    return mean, np.sqrt(np.maximum(var, 1e-6))


def feature_mask(shape: tuple[int, ...], points: np.ndarray, parts: list[range], size: float,
                 grow: float) -> np.ndarray:
    """Landmark hulls of ``parts`` grown by ``grow * size`` (float32 0/1)."""
    mask = np.zeros(shape[:2], dtype=np.uint8)
    for part in parts:
        cv2.fillConvexPoly(mask, cv2.convexHull(np.round(points[list(part)]).astype(np.int32)), 1)
    k = round(grow * size)
    if k > 0:
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
        mask = cv2.dilate(mask, disc)
    return mask.astype(np.float32)


FEATURES = [range(17, 22), range(22, 27), range(27, 36), range(36, 42), range(42, 48),
            range(48, 60)]  # brows, nose, eyes, mouth
OCCLUDER_MIN_AREA = 0.01  # share of size^2: smaller non-skin specks are pores and noise
OCCLUDER_Z = 5.0  # chroma z-score (against the skin's spread) that is not skin


def occluders(img: np.ndarray, skin: np.ndarray, points: np.ndarray, size: float) -> np.ndarray:
    """What covers the face in ``img`` (a hand, a microphone, strands of hair): pixels unlike
    the skin under ``skin`` and outside every feature (brows, eyes, nose, mouth), in blobs
    large enough to matter. float32 0..1, softened by a pixel."""
    # Chroma only: shading (an eye socket, a cheek in shadow) moves the lightness of skin
    # a long way but its colour little; a microphone, a sleeve or a sign differ in colour.
    # Median and MAD: the occluder itself lies in the skin area and must not widen the
    # skin's own spread.
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB).astype(np.float32)
    sel = lab[skin > 0.5][:, 1:]
    if len(sel) < 20:
        return np.zeros(img.shape[:2], dtype=np.float32)
    med = np.median(sel, axis=0)
    spread = np.maximum(1.4826 * np.median(np.abs(sel - med), axis=0), 3.0)
    z = np.sqrt((((lab[..., 1:] - med) / spread) ** 2).sum(axis=2))
    unlike = z > OCCLUDER_Z
    features = feature_mask(img.shape, points, FEATURES, size, 0.04) > 0
    blobs = (unlike & ~features).astype(np.uint8)
    k = max(1, round(0.01 * size))
    blobs = cv2.morphologyEx(blobs, cv2.MORPH_OPEN,
                             cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
    _, labels, stats, _ = cv2.connectedComponentsWithStats(blobs, connectivity=8)
    big = stats[:, cv2.CC_STAT_AREA] >= OCCLUDER_MIN_AREA * size * size
    big[0] = False
    mask = big[labels].astype(np.float32)
    return np.clip(cv2.GaussianBlur(mask, (0, 0), max(0.5, 0.01 * size)) * 1.5, 0.0, 1.0)


RELIGHT_MIN, RELIGHT_MAX = 0.7, 1.4


def _shading_fit(lightness: np.ndarray, weight: np.ndarray) -> np.ndarray | None:
    """A plane fitted to log lightness over the skin: the light's direction, nothing as
    fine as a nose or an eye socket. (A quadratic also took the fall-off, but blew up
    where it extrapolates: on the forehead above the skin it was fitted on.)"""
    h, w = lightness.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    xs, ys = xs / max(w, 1) - 0.5, ys / max(h, 1) - 0.5
    basis = np.stack([np.ones_like(xs), xs, ys], axis=-1)
    sel = weight > 0.5
    if sel.sum() < 50:
        return None
    a = basis[sel]
    b = np.log(lightness[sel].astype(np.float64) + 8.0)
    coef, *_ = np.linalg.lstsq(a, b, rcond=None)
    return basis @ coef


def relight(src: np.ndarray, ref: np.ndarray, w_src: np.ndarray, w_ref: np.ndarray
            ) -> np.ndarray:
    """Remove ``src``'s directional shading (the target's light) and apply ``ref``'s (ori's):
    lightness times the ratio of their fitted shading surfaces, within limits."""
    lab = cv2.cvtColor(src, cv2.COLOR_RGB2LAB).astype(np.float32)
    ref_l = cv2.cvtColor(ref, cv2.COLOR_RGB2LAB)[..., 0].astype(np.float32)
    fit_s, fit_r = _shading_fit(lab[..., 0], w_src), _shading_fit(ref_l, w_ref)
    if fit_s is None or fit_r is None:
        return src
    # Only the shape of the light: the overall level is the colour transfer's job.
    diff = (fit_r - fit_s) - float(((fit_r - fit_s) * (w_src > 0.5)).sum()
                                    / max(1.0, float((w_src > 0.5).sum())))
    ratio = np.clip(np.exp(diff), RELIGHT_MIN, RELIGHT_MAX).astype(np.float32)
    lab[..., 0] = np.clip((lab[..., 0] + 8.0) * ratio - 8.0, 0, 255)
    return cv2.cvtColor(lab.astype(np.uint8), cv2.COLOR_LAB2RGB)


CHROMA_SHIFT_MAX = 25.0  # Lab units the skin's mean a / b may move: more paints a cast


def transfer_colour(src: np.ndarray, ref: np.ndarray, w_src: np.ndarray, w_ref: np.ndarray,
                    strength: float = 1.0, keep: np.ndarray | None = None) -> np.ndarray:
    """Reinhard transfer in Lab: ``src``'s skin statistics (under ``w_src``) become ``ref``'s
    (under ``w_ref``).

    The std ratios are clipped, lightness hardest: a shadowed face must not be blown up into
    noise, and a smiling ori's teeth must not stretch target's contrast. Both pictures in
    colour: a grey one's colour is the caller's (``tone``, ``classic.swap``).
    """
    if strength <= 0:
        return src
    src_lab = cv2.cvtColor(src, cv2.COLOR_RGB2LAB).astype(np.float32)
    ref_lab = cv2.cvtColor(ref, cv2.COLOR_RGB2LAB).astype(np.float32)
    m_s, s_s = _masked_stats(src_lab, w_src)
    m_r, s_r = _masked_stats(ref_lab, w_ref)
    ratio = np.clip(s_r / s_s, [0.75, 0.8, 0.8], [1.33, 1.25, 1.25]).astype(np.float32)
    goal = m_r.copy()
    goal[1:] = m_s[1:] + np.clip(m_r[1:] - m_s[1:], -CHROMA_SHIFT_MAX, CHROMA_SHIFT_MAX)
    out = (src_lab - m_s.astype(np.float32)) * ratio + goal.astype(np.float32)
    out = src_lab + strength * (out - src_lab)
    if keep is not None and keep.any():
        # Eye whites, irises, teeth and the mouth's inside are not skin: a skin-statistics
        # transfer turns them blue or grey. They keep their own chroma and half their
        # lightness change (they are still in ori's light).
        k = cv2.GaussianBlur(keep.astype(np.float32), (0, 0), 1.0)[..., None]
        out[..., 1:] = out[..., 1:] * (1.0 - k) + src_lab[..., 1:] * k
        out[..., :1] = out[..., :1] * (1.0 - 0.5 * k) + src_lab[..., :1] * 0.5 * k
    out = np.clip(out, 0, 255).astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_LAB2RGB)


def masked_blur(img: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur that averages only pixels under ``weight`` (normalised convolution)."""
    num = cv2.GaussianBlur(img * weight, (0, 0), sigma)
    den = cv2.GaussianBlur(weight, (0, 0), sigma)
    return num / np.maximum(den, 1e-3)


def lowfreq_correct(src: np.ndarray, ref: np.ndarray, w_src: np.ndarray, w_ref: np.ndarray,
                    sigma: float) -> np.ndarray:
    """Give ``src`` the low-frequency shading of ``ref`` (ratio of blurred lightness).

    Light direction lives in the low frequencies of the lightness, identity in the higher
    ones. The blurs average skin pixels only (``w_src``, ``w_ref``): around the face the two
    pictures show different things (hair, background, eyes in other places) that must not
    leak into the shading.
    Lightness only: a per-channel ratio paints colour blotches wherever ori has a strongly
    coloured detail (glasses frames, lipstick) inside the blur radius.
    """
    if sigma <= 0:
        return src
    lab = cv2.cvtColor(src, cv2.COLOR_RGB2LAB).astype(np.float32)
    ref_l = cv2.cvtColor(ref, cv2.COLOR_RGB2LAB)[..., 0].astype(np.float32)
    bs = masked_blur(lab[..., 0], w_src.astype(np.float32), sigma) + 8.0
    br = masked_blur(ref_l, w_ref.astype(np.float32), sigma) + 8.0
    lab[..., 0] = lab[..., 0] * np.clip(br / bs, LOWFREQ_MIN, LOWFREQ_MAX)
    return cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def _grey(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY).astype(np.float32)


def _laplacian_std(grey: np.ndarray, sel: np.ndarray) -> float:
    return float(cv2.Laplacian(grey, cv2.CV_32F)[sel].std())


def sharpness(img: np.ndarray, weight: np.ndarray) -> float:
    """The detail of ``img`` under ``weight``: the std of the grey Laplacian there."""
    w = weight > 0.5
    return _laplacian_std(_grey(img), w) if w.any() else 0.0


SHARPNESS_KEPT = (0.85, 1.18)  # ori's sharpness over the face's: left as it is in between
BLUR_SIGMA_MAX = 6.0  # the softest ori is matched with at most this blur (pixels)
SHARPEN_MAX = 1.0  # unsharp-mask amount at most
UNSHARP_SIGMA = 1.0
SEARCH_STEPS = 10  # bisection steps of the blur or the amount


def _bisect(measure: Callable[[float], float], goal: float, top: float) -> float:
    """The x in [0, top] where the increasing or decreasing ``measure`` meets ``goal``."""
    lo, hi = 0.0, top
    rising = measure(top) > measure(0.0)
    for _ in range(SEARCH_STEPS):
        mid = (lo + hi) / 2
        if (measure(mid) < goal) == rising:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def match_sharpness(src: np.ndarray, ref: np.ndarray,
                    weight: np.ndarray) -> tuple[np.ndarray, float]:
    """Blur or unsharp ``src`` so its Laplacian energy inside the mask meets ``ref``'s.

    A pasted face sharper or softer than its surroundings is a classic forgery cue, and a
    sharp face in a soft photo (an upscaled thumbnail, a small face) is what a JPEG ghost
    finds. A ratio within SHARPNESS_KEPT is left alone; past it, the blur's sigma (at most
    BLUR_SIGMA_MAX) or the unsharp amount (at most SHARPEN_MAX) is searched on the grey
    picture until the ratio is back at the band's edge (blurred all the way to ori's
    energy, LFW's mildly sharper faces gave the JPEG ghost more to find). Returns the
    image and ``ref``'s sharpness over ``src``'s (< 1 blurred, > 1 sharpened, 1 untouched).
    """
    sel = weight > 0.5
    if not sel.any():
        return src, 1.0
    grey = _grey(src)
    a, b = _laplacian_std(grey, sel), sharpness(ref, weight)
    if a <= 0 or b <= 0:
        return src, 1.0
    ratio = b / a
    if SHARPNESS_KEPT[0] <= ratio <= SHARPNESS_KEPT[1]:
        return src, 1.0
    s = src.astype(np.float32)
    if ratio < 1.0:
        def blurred(sigma: float) -> float:
            if sigma < 0.05:
                return a
            # Rounded as the delivered picture will be: in a very soft ori the rounding
            # noise is part of the energy measured.
            return _laplacian_std(np.round(cv2.GaussianBlur(grey, (0, 0), sigma)), sel)

        sigma = _bisect(blurred, b / SHARPNESS_KEPT[0], BLUR_SIGMA_MAX)
        out = cv2.GaussianBlur(s, (0, 0), max(sigma, 0.05))
    else:
        detail = grey - cv2.GaussianBlur(grey, (0, 0), UNSHARP_SIGMA)
        amount = _bisect(lambda k: _laplacian_std(grey + k * detail, sel), b / SHARPNESS_KEPT[1],
                         SHARPEN_MAX)
        out = s + amount * (s - cv2.GaussianBlur(s, (0, 0), UNSHARP_SIGMA))
    return np.clip(np.round(out), 0, 255).astype(np.uint8), ratio


def poisson(src: np.ndarray, dst: np.ndarray, region: np.ndarray) -> np.ndarray:
    """cv2.seamlessClone of ``src`` into ``dst`` over the binary ``region`` (same frame).

    The centre is chosen so OpenCV puts the region back exactly where it was
    (it places the ROI at centre - size // 2).
    """
    mask = (region > 0.5).astype(np.uint8) * 255
    # seamlessClone needs the region one pixel inside the picture.
    mask[0, :] = mask[-1, :] = 0
    mask[:, 0] = mask[:, -1] = 0
    x, y, w, h = cv2.boundingRect(mask)
    if w < 3 or h < 3:
        return src
    center = (x + w // 2, y + h // 2)
    return cv2.seamlessClone(src, dst, mask, center, cv2.NORMAL_CLONE)


def alpha_blend(fg: np.ndarray, bg: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    out = fg.astype(np.float32) * a + bg.astype(np.float32) * (1.0 - a)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def seam(out: np.ndarray, ori: np.ndarray, alpha: np.ndarray) -> float:
    """A realism score (lower is better): the edge energy that the paste added where the
    mask ramps (0.05 < alpha < 0.95), in grey levels per pixel. A visible seam, a colour
    step or a cut feature adds edges there that ori does not have."""
    ring = (alpha > 0.05) & (alpha < 0.95)
    if not ring.any():
        return 0.0

    def edges(img: np.ndarray) -> np.ndarray:
        grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
        return np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))

    return float(np.maximum(edges(out) - edges(ori), 0.0)[ring].mean())


def crop_padded(img: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """``img[y0:y1, x0:x1]`` where the box may leave the picture (mirrored there)."""
    h, w = img.shape[:2]
    top, left = max(0, -y0), max(0, -x0)
    bottom, right = max(0, y1 - h), max(0, x1 - w)
    inner = img[max(0, y0) : min(h, y1), max(0, x0) : min(w, x1)]
    if top or left or bottom or right:
        # REFLECT_101 needs the border smaller than the picture; repeat if it is not.
        mode = cv2.BORDER_REFLECT101 if max(top, bottom) < inner.shape[0] and max(
            left, right) < inner.shape[1] else cv2.BORDER_REPLICATE
        inner = cv2.copyMakeBorder(inner, top, bottom, left, right, mode)
    return np.ascontiguousarray(inner)
