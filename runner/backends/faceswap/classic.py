"""The offline swapper: dlib's 68 landmarks, a piecewise-affine warp of target's face onto
ori's face, colour and sharpness matched to ori, feathered or Poisson blending.

Direction: the output is ``ori`` (background, hair, pose, light) with ``target``'s face.

Geometry: target's landmarks are first aligned to ori's by a similarity transform; the
destination of each inner point (brows, eyes, nose, mouth) is then ``shape`` of the way from
ori's point to target's aligned point. ``shape`` = 0 bends target's features into ori's
proportions (the textbook swap, which loses much of the identity: the eye spacing and the
nose and mouth proportions ARE the identity); 1 keeps target's proportions and only moves
the face as a whole. The jaw line stays mostly ori's so the outline matches the head.

The "turned" warp (a variant the guard offers for heads turned far apart) maps no points
in the picture's plane: target's mesh is turned to ori's pose in 3D (``pose3d``) and its
own triangles are drawn, far ones first; the 68 points land where that warp takes them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from runner.backends.faceswap import blend, glasses, mesh_warp, pose3d, tone
from runner.backends.faceswap.detect import Face
from runner.backends.faceswap.guard import MOUTH_GAP, mouth_open, region_mask

JAW = np.arange(0, 17)
INNER = np.arange(17, 68)
MOUTH_ROWS = np.arange(68) >= 48  # the outer and inner lip points
BROWS = np.arange(17, 27)
# Points that carry the pose but not the expression: eye corners, nose bridge, nose base.
ALIGN = np.array([36, 39, 42, 45, 27, 28, 29, 30, 31, 33, 35, 17, 21, 22, 26])


@dataclass(frozen=True)
class Variant:
    """One way to paste; several may be tried and the best by identity and realism kept."""

    name: str
    blend: str = "feather"  # "feather" or "poisson"
    shape: float = 0.85  # how much of target's inner proportions is kept
    jaw_shape: float = 0.25  # the same for the jaw line
    forehead: float = 0.16  # forehead points above the brows, share of the face height
    erode: float = 0.03  # mask erosion, share of the face size
    feather: float = 0.04  # Gaussian sigma of the mask edge, share of the face size
    colour: float = 1.0  # Lab statistics transfer strength
    lowfreq: float = 0.25  # blur sigma of the shading transfer, share of the face size (0: off)
    occluders: bool = True  # target's occluders left out of the mask
    relight: bool = True  # target's directional shading replaced by ori's
    glasses: bool = True  # frames the mask's edge cuts are removed whole
    # "auto": ori keeps its mouth only where target's shape still folds with an expression
    # gap; "ori": always (the partial swap offered for an expression gap, see ``guard``).
    mouth: str = "auto"
    # What of ori's face may change: "face", or "inner": the brows, eyes, nose and mouth
    # only (``guard.region_mask``).
    region: str = "face"
    # "flat": target's points mapped onto ori's in the picture's plane; "turned": target's
    # mesh turned to ori's head pose in 3D (``pose3d``; needs both meshes' depth).
    warp: str = "flat"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


VARIANTS: tuple[Variant, ...] = (
    # First = the one used when only one is wanted: tuned on the 250 LFW pairs (issue 14:
    # all of target's inner proportions, half its jaw line, more forehead: FaceNet's
    # cosine to target rose from 0.62 to 0.63-0.65 on a 25-pair sample, dlib's too).
    # Relighting is off here: on the 250 pairs it cost 0.01-0.02 in FaceNet cosine and the
    # contact sheet showed no shadow it removed (905 kept its); the lower-risk variant
    # below relights.
    Variant("natural", shape=1.0, jaw_shape=0.5, forehead=0.22, relight=False),
    # The lower-risk one: more of ori's shape and outline, a smaller mask, ori's light.
    Variant("ori-shape", shape=0.7, jaw_shape=0.25, forehead=0.14, erode=0.05),
    Variant("poisson", shape=1.0, jaw_shape=0.5, blend="poisson", lowfreq=0.15),
    Variant("tight", shape=0.7, forehead=0.10, erode=0.06),
)


MOUTH = range(48, 60)
INNER_MOUTH = range(60, 68)
LEFT_EYE, RIGHT_EYE = range(36, 42), range(42, 48)
FOLD_AREA = 0.004  # twice a triangle's area, share of the face size squared, to count
MIN_SHAPE = 0.4  # below this the swap keeps too little of target's face to be worth it
INNER_ERODE = 0.08  # the inner face (contrast measured there): the 68 points' hull eroded
IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
SKIN_COLOUR_BLUR = 0.05  # ori's skin colour for a grey target: blur sigma, share of size
# A turned face's triangle grown more than STRETCH_FREE in area (over the pose's scale)
# that target's picture sees at a facing of EDGE_ON (the cosine of its normal to the
# camera) is not pasted, at SEEN it is pasted whole.
STRETCH_FREE, EDGE_ON, SEEN = 1.3, 0.15, 0.4


# iBUG 68-point order mirrored left <-> right.
MIRROR = np.array(
    [*range(16, -1, -1), *range(26, 16, -1), 27, 28, 29, 30, 35, 34, 33, 32, 31,
     45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,
     54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65]
)


def yaw(points: np.ndarray) -> float:
    """Head turn from landmarks, -1..1: where the nose tip sits between the jaw sides,
    measured along the eye axis (0 = frontal)."""
    axis = points[45] - points[36]
    axis = axis / max(float(np.linalg.norm(axis)), 1e-6)
    left = float(np.dot(points[30] - points[2], axis))
    right = float(np.dot(points[14] - points[30], axis))
    total = abs(left) + abs(right)
    return 0.0 if total <= 0 else (right - left) / total


def mirrored(img: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The picture flipped left-right and its landmarks renumbered to match."""
    flipped = np.ascontiguousarray(img[:, ::-1])
    pts = points.copy()
    pts[:, 0] = img.shape[1] - 1 - pts[:, 0]
    return flipped, pts[MIRROR]


def wants_mirror(o_pts: np.ndarray, t_pts: np.ndarray) -> bool:
    """Whether target's mirror image is nearer ori's head turn than target itself."""
    yaw_o, yaw_t = yaw(o_pts), yaw(t_pts)
    return abs(-yaw_t - yaw_o) + 0.1 < abs(yaw_t - yaw_o)


def oriented(target: np.ndarray, face: Face,
             flip: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Target's picture, 68 points and mesh as the swap uses them: mirrored when ``flip``,
    its 68 points renumbered; a mirrored target has no mesh (the vertex numbering has no
    left/right map here, and the mesh run again on the flipped picture cost FaceNet 3 of
    250 rows closer to target, BENCHMARKS.md)."""
    if not flip:
        return target, face.points, face.mesh
    flipped, pts = mirrored(target, face.points)
    return flipped, pts, None


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama) mapping ``src`` points onto ``dst``: a 2x3 matrix."""
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[1, 1] = -1
    r = u @ e @ vt
    var = (s**2).sum() / len(src)
    scale = float((sig * np.diag(e)).sum() / max(var, 1e-9))
    m = np.zeros((2, 3))
    m[:, :2] = scale * r
    m[:, 2] = mu_d - scale * r @ mu_s
    return m


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def invert(m: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(m)


def forehead_points(points: np.ndarray, amount: float) -> np.ndarray:
    """The brow points pushed up along the face's vertical axis by ``amount`` x face height."""
    brows = points[BROWS]
    chin = points[8]
    up = brows.mean(axis=0) - chin
    height = float(np.linalg.norm(up))
    up = up / max(height, 1e-6)
    return brows + up * amount * height


def ring_points(points: np.ndarray, margin: float = 0.35) -> np.ndarray:
    """Eight points on a box around the face: they anchor the warp to the global alignment."""
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    mx, my = (x1 - x0) * margin, (y1 - y0) * margin
    x0, x1, y0, y1 = x0 - mx, x1 + mx, y0 - my * 1.5, y1 + my
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return np.array(
        [[x0, y0], [cx, y0], [x1, y0], [x1, cy], [x1, y1], [cx, y1], [x0, y1], [x0, cy]]
    )


def count_folds(dst: np.ndarray, src: np.ndarray) -> int:
    """Triangles of the face (Delaunay of ``dst``) whose corners run the other way round in
    ``src``: the warp would fold the picture over itself there."""
    tri = delaunay(dst)
    if len(tri) == 0:
        return 0

    def signed(p: np.ndarray) -> np.ndarray:
        a, b, c = p[tri[:, 0]], p[tri[:, 1]], p[tri[:, 2]]
        return (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])

    s_dst, s_src = signed(dst), signed(src)
    # Thin triangles (along the jaw, the lids) flip on a pixel of landmark noise: only
    # triangles of some area in both pictures count.
    span_d, span_s = np.ptp(dst, axis=0).max(), np.ptp(src, axis=0).max()
    big = (np.abs(s_dst) > FOLD_AREA * span_d**2) & (np.abs(s_src) > FOLD_AREA * span_s**2)
    return int(((np.sign(s_dst) != np.sign(s_src)) & big).sum())


def delaunay(points: np.ndarray) -> np.ndarray:
    """Delaunay triangles of ``points`` as index triples (OpenCV's Subdiv2D)."""
    # Subdiv2D may drop a flat triangle on the convex hull; the hull is the ring of anchor
    # points outside the face, where the warp falls back to the global alignment anyway.
    x0, y0 = np.floor(points.min(axis=0)) - 2
    x1, y1 = np.ceil(points.max(axis=0)) + 2
    subdiv = cv2.Subdiv2D((int(x0), int(y0), int(x1 - x0) + 1, int(y1 - y0) + 1))
    for x, y in points:
        subdiv.insert((float(x), float(y)))
    triangles = subdiv.getTriangleList().reshape(-1, 3, 2)
    # Subdiv2D answers with coordinates: map each vertex back to the nearest input point.
    dist = np.linalg.norm(triangles[:, :, None, :] - points[None, None, :, :], axis=3)
    index = dist.argmin(axis=2)
    ok = (dist.min(axis=2) < 0.5).all(axis=1) & (np.ptp(index, axis=1) > 0)
    return index[ok]


def piecewise_warp(src_img: np.ndarray, src_pts: np.ndarray, dst_pts: np.ndarray,
                   out_shape: tuple[int, int], fallback: np.ndarray,
                   triangles: np.ndarray | None = None) -> np.ndarray:
    """Warp ``src_img`` so ``src_pts`` land on ``dst_pts`` (Delaunay triangles of dst, or
    ``triangles`` drawn in their order, a later one covering an earlier one).

    One backward map and a single remap: no seams between triangles. Pixels outside the
    triangulation follow ``fallback`` (a dst->src affine), so the warp is defined everywhere
    and the soft mask may reach past the hull without showing black.
    """
    h, w = out_shape
    tri = delaunay(dst_pts) if triangles is None else triangles
    index = np.full((h, w), -1, dtype=np.int32)
    coeffs = [fallback.astype(np.float64)]
    for t, simplex in enumerate(tri):
        d = dst_pts[simplex].astype(np.float32)
        s = src_pts[simplex].astype(np.float32)
        e1, e2 = d[1] - d[0], d[2] - d[0]
        area = abs(float(e1[0] * e2[1] - e1[1] * e2[0]))
        if area < 1e-3:
            coeffs.append(fallback.astype(np.float64))
            continue
        coeffs.append(cv2.getAffineTransform(d, s).astype(np.float64))
        cv2.fillConvexPoly(index, np.round(d).astype(np.int32), t, lineType=cv2.LINE_8)
    table = np.stack(coeffs)  # (T + 1, 2, 3); index -1 -> row 0, the fallback
    m = table[index + 1]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    map_x = (m[..., 0, 0] * xs + m[..., 0, 1] * ys + m[..., 0, 2]).astype(np.float32)
    map_y = (m[..., 1, 0] * xs + m[..., 1, 1] * ys + m[..., 1, 2]).astype(np.float32)
    return cv2.remap(src_img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)


def fit_shape(o_full: np.ndarray, t_pts: np.ndarray, o_x: np.ndarray, t_x: np.ndarray,
              m_align: np.ndarray, variant: Variant
              ) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Where the 68 points and the mesh's extra points land in ori (dst, dst_x), the share
    of target's shape kept, and the folds left.

    Pose or expression too different: target's shape forced onto ori's landmarks folds
    triangles over each other (a torn face). Less of target's shape until nothing folds."""
    t_in_o = apply(m_align, t_pts)
    x_in_o = apply(m_align, t_x) if len(t_x) else t_x
    shape, jaw_shape = variant.shape, variant.jaw_shape
    while True:
        dst = o_full.copy()
        dst[INNER] = o_full[INNER] + shape * (t_in_o[INNER] - o_full[INNER])
        dst[JAW] = o_full[JAW] + jaw_shape * (t_in_o[JAW] - o_full[JAW])
        dst_x = o_x + shape * (x_in_o - o_x)
        folds = count_folds(np.vstack([dst, dst_x]), np.vstack([t_pts, t_x]))
        if folds == 0 or shape <= MIN_SHAPE:
            return dst, dst_x, shape, folds
        shape, jaw_shape = max(MIN_SHAPE, shape - 0.15), max(0.0, jaw_shape - 0.1)


@dataclass(frozen=True)
class Solid:
    """Target's mesh turned to ori's pose (``pose3d``): its vertices in target's picture
    (``src``) and in ori's (``dst``), and the triangles to draw, far ones first."""

    src: np.ndarray
    dst: np.ndarray
    triangles: np.ndarray
    facing: np.ndarray  # per triangle: how squarely target's picture sees it (0 to 1)
    scale: float  # target's size in ori's picture over its size in its own

    def coverage(self, shape: tuple[int, int], shift: np.ndarray,
                 features: np.ndarray) -> np.ndarray:
        """Where the turned face may be pasted (a box at ``shift``): 1 on the drawn
        triangles, less outside ``features`` (a 0/1 mask) on those target's picture sees
        edge-on that ori's shows larger (a few pixels spread over ori's near cheek), 0
        elsewhere."""
        drawn = np.zeros(shape, dtype=np.float32)
        mask = np.zeros(shape, dtype=np.float32)
        grown = np.abs(pose3d.signed_areas(self.dst, self.triangles)) / np.maximum(
            np.abs(pose3d.signed_areas(self.src, self.triangles)) * self.scale**2, 1e-6)
        keep = np.clip((self.facing - EDGE_ON) / (SEEN - EDGE_ON), 0.0, 1.0)
        keep = np.where(grown > STRETCH_FREE, keep, 1.0)
        for t, k in zip(self.triangles, keep, strict=True):
            corners = np.round(self.dst[t] - shift).astype(np.int32)
            cv2.fillConvexPoly(mask, corners, float(k))
            cv2.fillConvexPoly(drawn, corners, 1.0)
        return np.maximum(mask, drawn * features)


def can_turn(ori_face: Face, target_face: Face) -> bool:
    """Whether both faces have a mesh with depth, the same vertices: what the "turned"
    warp needs."""
    return (ori_face.mesh is not None and ori_face.depth is not None
            and target_face.mesh is not None and target_face.depth is not None
            and len(ori_face.mesh) == len(target_face.mesh))


def turned_meshes(ori_face: Face, target_face: Face) -> Solid | None:
    """Target's mesh turned to ori's head pose, or None where a face has no mesh depth."""
    if not can_turn(ori_face, target_face):
        return None
    assert ori_face.mesh is not None and ori_face.depth is not None
    assert target_face.mesh is not None and target_face.depth is not None
    o3 = np.column_stack([ori_face.mesh, ori_face.depth])
    t3 = np.column_stack([target_face.mesh, target_face.depth])
    front = pose3d.frontal(t3)[:, :2]
    tri = delaunay(front)
    # Only what target's picture shows: triangles turned away from its camera have no
    # picture of their own.
    seen = np.sign(pose3d.signed_areas(target_face.mesh, tri)) == np.sign(
        pose3d.signed_areas(front, tri))
    tri = tri[seen]
    scale, r, t = pose3d.similarity_3d(t3, o3)
    posed = scale * t3 @ r.T + t
    order = pose3d.drawing_order(tri, posed[:, :2], posed[:, 2], front)
    return Solid(src=target_face.mesh, dst=posed[:, :2], triangles=order,
                 facing=pose3d.facing(t3, order), scale=scale)


def swap(ori: np.ndarray, ori_face: Face, target: np.ndarray, target_face: Face,
         variant: Variant) -> tuple[np.ndarray, dict[str, Any]]:
    """ori (RGB uint8) with target's face; returns the picture and what was done."""
    size = ori_face.size
    o_full = ori_face.points
    t_pts = target_face.points
    # A target turned the other way shows its far cheek squeezed, or background where ori
    # shows cheek: its mirror image matches ori's pose and keeps the identity (faces are
    # nearly symmetric; hair, where a parting would tell, is outside the mask).
    yaw_o, yaw_t = yaw(o_full), yaw(t_pts)
    solid = turned_meshes(ori_face, target_face) if variant.warp == "turned" else None
    flip = solid is None and wants_mirror(o_full, t_pts)
    target, t_pts, t_mesh = oriented(target, target_face, flip)

    # Target aligned into ori's frame (similarity on pose-stable points).
    m_align = similarity(t_pts[ALIGN], o_full[ALIGN])
    if solid is None:
        # The mesh's cheek and forehead vertices, where both faces have a mesh (mesh_warp).
        o_x, t_x = mesh_warp.extras(
            ori_face.mesh, t_mesh, np.vstack([o_full, forehead_points(o_full, variant.forehead)]),
            size)
        dst, dst_x, shape, folds = fit_shape(o_full, t_pts, o_x, t_x, m_align, variant)
    else:
        o_x = t_x = dst_x = np.zeros((0, 2))
        shape, folds = variant.shape, 0
        dst = pose3d.carry(t_pts, solid.src, solid.dst, solid.triangles)
        dst[JAW] = o_full[JAW] + variant.jaw_shape * (dst[JAW] - o_full[JAW])
    dst_ring = ring_points(dst)

    # Work on a box around the face only (big pictures stay cheap); the box may leave the
    # picture for faces at the border: it is mirrored there and cut off again at the end.
    margin = 0.1 * size
    x0, y0 = np.floor(dst_ring.min(axis=0) - margin).astype(int)
    x1, y1 = np.ceil(dst_ring.max(axis=0) + margin).astype(int)
    roi = blend.crop_padded(ori, x0, y0, x1, y1)
    shift = np.array([x0, y0], dtype=np.float64)
    o_pts = o_full - shift
    dst = dst - shift
    dst_x = dst_x - shift
    dst_ring = dst_ring - shift
    m_roi = m_align.copy()
    m_roi[:, 2] -= shift

    dst_fh = forehead_points(dst, variant.forehead)
    src_fh = forehead_points(t_pts, variant.forehead)
    inv_align = invert(m_roi)
    src_ring = apply(inv_align, dst_ring)
    dst_all = np.vstack([dst, dst_x, dst_fh, dst_ring])
    src_all = np.vstack([t_pts, t_x, src_fh, src_ring])
    if solid is None:
        warped = piecewise_warp(target, src_all, dst_all, roi.shape[:2], inv_align)
        covered = np.ones(roi.shape[:2], dtype=np.float32)
    else:
        warped = piecewise_warp(target, solid.src, solid.dst - shift, roi.shape[:2], inv_align,
                                triangles=solid.triangles)
        covered = solid.coverage(roi.shape[:2], shift, blend.hull_mask(roi.shape, dst[INNER]))

    # Skin statistics from below the brows only: above them ori may have a fringe or a cap.
    # (Where a turned face leaves the fallback's picture, it is not target's face.)
    skin_src = blend.skin_mask(roi.shape, dst[np.r_[JAW, BROWS]], dst, size) * (covered > 0)
    skin_ref = blend.skin_mask(roi.shape, o_pts[np.r_[JAW, BROWS]], o_pts, size)
    if solid is not None:
        # The turned face has ori's pose: its tone is matched to ori's over the same pixels.
        skin_src = skin_ref = skin_src * skin_ref

    binary = blend.hull_mask(roi.shape, np.vstack([dst[JAW], dst_fh])) * covered
    # The mask also stays inside ori's own outline: ori's hair and ears are kept.
    own = np.vstack([o_pts[JAW], forehead_points(o_pts, variant.forehead)])
    binary *= blend.hull_mask(roi.shape, own)
    # Above the brows the landmarks know nothing: target's cap or fringe must not be pasted
    # there, nor ori's own cap or fringe painted over. Only skin-coloured pixels (in both
    # pictures) of that band are swapped.
    band = binary * (1.0 - blend.hull_mask(roi.shape, dst[np.r_[JAW, BROWS]]))
    if band.any():
        skin = blend.skin_likelihood(warped, skin_src) * blend.skin_likelihood(roi, skin_ref)
        skin = cv2.GaussianBlur(skin, (0, 0), 0.02 * size + 0.5)
        binary = binary * (1.0 - band * (1.0 - skin))
    # Target's occluders (a microphone, a hand, strands of hair) are not pasted: over the
    # whole face, pixels of the warped target that look like neither its skin nor one of
    # its features keep ori's picture.
    occluded = (blend.occluders(warped, skin_src, dst, size) * binary if variant.occluders
                else np.zeros_like(binary))
    binary = binary * (1.0 - occluded)
    # The partial swap of a pose gap: all but the features stays ori's.
    binary = binary * region_mask(variant.region, roi.shape, dst, size)
    # Expression: an open mouth bent onto a closed one (or the reverse) is the grotesque
    # kind of failure. ori keeps its own mouth then: a partial swap.
    # Only as a last resort (the shape could not be unfolded): it costs identity.
    keep_mouth = variant.mouth == "ori" or (
        folds > 0 and abs(mouth_open(o_pts) - mouth_open(apply(m_roi, t_pts))) > MOUTH_GAP)
    if keep_mouth:
        binary = binary * (1.0 - blend.feature_mask(roi.shape, o_pts, [MOUTH], size, 0.05))
    alpha = blend.soft_mask(binary, size, variant.erode, variant.feather)
    core = blend.soft_mask(binary, size, variant.erode + 0.05, 0.01)

    # Glasses whole or not at all: ori's frame lines that the mask's edge cuts are painted
    # out of the result, whole (``glasses``). target's frames are part of its look and
    # stay as the mask has them: painting them out took target's eyes and lids with them
    # (FaceNet's closer-to-target share and cosine both fell, issue 14).
    o_frames = np.zeros_like(alpha)
    if variant.glasses:
        o_frames = glasses.cut_lines(roi, o_pts, size, alpha)

    # Light: target's own directional shading out, ori's in; then the colour statistics
    # (eyes and mouth interior keep their own colour) and the finer shading.
    face = warped
    if variant.relight:
        # Shading is read from skin-coloured pixels only: a beard or stubble is not shadow.
        light_src = skin_src * blend.skin_likelihood(warped, skin_src)
        light_ref = skin_ref * blend.skin_likelihood(roi, skin_ref)
        face = blend.relight(warped, roi, light_src, light_ref)
    # Colour modes: a grey (or toned) ori gets its own colour back on the new face, whatever
    # target's; a grey target on a colour ori gets ori's colour, carried along with ori's
    # features to where the new ones are (lips to lips, cheeks to cheeks). Only the
    # lightness is target's then; its eyes and mouth keep their own colour when both
    # pictures have colour.
    ori_mono, target_mono = tone.monochrome(ori), tone.monochrome(target)
    keep = (None if ori_mono or target_mono else
            blend.feature_mask(roi.shape, dst, [INNER_MOUTH, LEFT_EYE, RIGHT_EYE], size, 0.01))
    face = blend.transfer_colour(face, roi, skin_src, skin_ref, variant.colour, keep=keep)
    if variant.lowfreq > 0:
        face = blend.lowfreq_correct(face, roi, skin_src, skin_ref, variant.lowfreq * size)
    # Contrast, then detail. A face flatter than both the photo it goes into and the one it
    # comes from reads as pale (the colour transfer flattens a face whose skin has more
    # shading than ori's, features and all): it gets the lower of the two contrasts back.
    # Its sharpness is then measured at the contrast it will have. ori's frames are not its
    # face: left out of both measures (their black lines would ask for a harder face).
    not_frames = 1.0 - cv2.dilate(o_frames, np.ones((3, 3), np.uint8))
    inner_new = blend.soft_mask(blend.hull_mask(roi.shape, dst), size, INNER_ERODE, 0.0)
    inner_ori = blend.soft_mask(blend.hull_mask(roi.shape, o_pts), size, INNER_ERODE, 0.0)
    goal = min(tone.contrast(roi, inner_ori * not_frames), tone.contrast(warped, inner_new))
    face, gain = tone.match_contrast(face, inner_new, goal)
    face, sharp = blend.match_sharpness(face, roi, core * not_frames)
    if ori_mono:
        face = tone.with_chroma(face, roi)
    elif target_mono:
        # ori's skin colour (its frames' and hair's left out), its eyes' and lips' own.
        own = blend.feature_mask(roi.shape, o_pts, [MOUTH, LEFT_EYE, RIGHT_EYE], size, 0.01)
        colours = tone.skin_colours(roi, skin_ref * blend.skin_likelihood(roi, skin_ref), own,
                                    SKIN_COLOUR_BLUR * size)
        if solid is None:
            o_layout = np.vstack([o_pts, o_x - shift, forehead_points(o_pts, variant.forehead),
                                  dst_ring])
            carried = piecewise_warp(colours, o_layout, dst_all, roi.shape[:2], IDENTITY)
        else:  # the same mesh vertex on both faces: ori's colour there moves with it
            assert ori_face.mesh is not None
            carried = piecewise_warp(colours, ori_face.mesh - shift, solid.dst - shift,
                                     roi.shape[:2], IDENTITY, triangles=solid.triangles)
        face = tone.with_chroma(face, carried)
    if variant.blend == "poisson":
        # The Poisson region stays on skin (the mask's half-way line): a boundary across
        # hair or glasses would smear their colour over the face.
        face = blend.poisson(face, roi, (alpha > 0.5).astype(np.float32))
    mixed = blend.alpha_blend(face, roi, alpha)
    if o_frames.any():
        # Removed whole: the parts outside the new face go too. (Putting them back over
        # the new face instead was tried: ori's frames are part of ori's look to any face
        # embedding, and the outputs moved back towards ori, 0.05 in FaceNet cosine.)
        mixed = glasses.remove_frames(mixed, o_frames, size, alpha)

    out = ori.copy()
    h, w = ori.shape[:2]
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    out[cy0:cy1, cx0:cx1] = mixed[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    info = {
        "variant": variant.name,
        "mirrored": flip,
        "yaw_ori": round(yaw_o, 2),
        "yaw_target": round(yaw_t, 2),
        "sharpness_ratio": round(sharp, 3),
        "contrast_gain": round(gain, 3),
        "colour_modes": {"ori": "grey" if ori_mono else "colour",
                         "target": "grey" if target_mono else "colour"},
        "occluded_share": round(float(occluded.sum()) / max(1.0, float(size * size)), 4),
        "glasses_removed": bool(o_frames.any()),
        "ori_frames_px": int(o_frames.sum()),
        "kept_ori_mouth": bool(keep_mouth),
        "region": variant.region,
        "warp": "turned" if solid is not None else "flat",
        "seam": round(blend.seam(mixed, roi, alpha), 2),
        "shape": round(shape, 2),
        "folds": folds,
        "mesh_points": len(dst_x),
        # The 68 points the face was meant to land on, for the realism check on the output
        # (ori's own mouth where the swap kept it).
        "dst_points": (np.where(MOUTH_ROWS[:, None] & keep_mouth, o_pts, dst) + shift
                       ).round(1).tolist(),
    }
    return out, info
