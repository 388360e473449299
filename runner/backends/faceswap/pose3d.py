"""Target's face turned to ori's head pose in three dimensions, for pairs whose heads are
turned far apart (the guard's pose gap).

The flat warp maps target's landmarks onto ori's in the picture's plane: a frontal face
pasted onto a head turned 40 degrees has its far half squeezed between the nose and the
far cheek, triangles folded over the nose, and its near cheek stretched. Here the mesh's
depth (MediaPipe FaceMesh's z) turns target's face as a solid: target's mesh is fitted to
ori's by a rotation, a scale and a shift in 3D, so it keeps target's proportions and takes
ori's pose; its triangles (the mesh's own, found on the face turned to the camera, not on
the picture's points) are drawn far ones first, so the nose hides the far cheek behind it
as it does on ori, and the triangles that face away from the camera are not drawn.
"""

from __future__ import annotations

import numpy as np

# Mesh vertices of the eyes' outer corners, the forehead's top and the chin (MediaPipe's
# numbering): the face's own axes, to turn it to the camera for its triangulation.
EYE_CORNERS = (33, 263)
FOREHEAD, CHIN = 10, 152


def similarity_3d(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares scale, rotation and shift (Umeyama) taking ``src`` (N x 3) onto ``dst``:
    dst ~ scale * src @ R.T + t."""
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    e = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[2, 2] = -1
    r = u @ e @ vt
    scale = float((sig * np.diag(e)).sum() / max(float((s**2).sum()) / len(src), 1e-9))
    return scale, r, mu_d - scale * r @ mu_s


def frontal(mesh: np.ndarray) -> np.ndarray:
    """The mesh turned to face the camera, by its own axes: the outer eye corners level and
    at one depth, the chin straight below the forehead's top."""
    x = mesh[EYE_CORNERS[1]] - mesh[EYE_CORNERS[0]]
    x = x / max(float(np.linalg.norm(x)), 1e-9)
    down = mesh[CHIN] - mesh[FOREHEAD]
    y = down - np.dot(down, x) * x
    y = y / max(float(np.linalg.norm(y)), 1e-9)
    return (mesh - mesh.mean(axis=0)) @ np.stack([x, y, np.cross(x, y)]).T


def signed_areas(points: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Twice each triangle's signed area in the picture (positive: clockwise on screen)."""
    a, b, c = points[tri[:, 0]], points[tri[:, 1]], points[tri[:, 2]]
    return (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])


def facing(mesh: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """How squarely the camera sees each triangle of a mesh (N x 3): the absolute cosine
    between its normal and the line of sight, 1 face-on, 0 edge-on."""
    a, b, c = mesh[tri[:, 0]], mesh[tri[:, 1]], mesh[tri[:, 2]]
    normal = np.cross(b - a, c - a)
    return np.abs(normal[:, 2]) / np.maximum(np.linalg.norm(normal, axis=1), 1e-9)


def drawing_order(tri: np.ndarray, dst: np.ndarray, depth: np.ndarray,
                  reference: np.ndarray) -> np.ndarray:
    """The triangles that face the camera at ``dst`` (wound as on ``reference``, the face
    turned to the camera), far ones first: drawn in this order, the near ones cover them."""
    facing = np.sign(signed_areas(dst, tri)) == np.sign(signed_areas(reference, tri))
    kept = tri[facing]
    far_first = np.argsort(-depth[kept].mean(axis=1), kind="stable")
    return kept[far_first]


def carry(points: np.ndarray, src: np.ndarray, dst: np.ndarray,
          tri: np.ndarray) -> np.ndarray:
    """Where ``points`` (on the ``src`` layout) land when each triangle of ``tri`` moves from
    ``src`` to ``dst``: the triangle holding the point, or the nearest one's affine map
    beyond the mesh."""
    a, b, c = src[tri[:, 0]], src[tri[:, 1]], src[tri[:, 2]]
    centre = (a + b + c) / 3
    out = np.empty_like(points, dtype=np.float64)
    for k, p in enumerate(points):
        e1, e2, q = b - a, c - a, p - a
        det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
        ok = np.abs(det) > 1e-9
        u = np.where(ok, (q[:, 0] * e2[:, 1] - q[:, 1] * e2[:, 0]) / np.where(ok, det, 1), -1)
        v = np.where(ok, (e1[:, 0] * q[:, 1] - e1[:, 1] * q[:, 0]) / np.where(ok, det, 1), -1)
        inside = ok & (u >= -1e-6) & (v >= -1e-6) & (u + v <= 1 + 1e-6)
        if inside.any():
            i = int(np.flatnonzero(inside)[0])
        else:
            near = np.where(ok, np.linalg.norm(centre - p, axis=1), np.inf)
            i = int(np.argmin(near))
        da, db, dc = dst[tri[i]]
        out[k] = da + u[i] * (db - da) + v[i] * (dc - da)
    return out
