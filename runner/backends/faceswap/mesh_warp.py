"""Dense correspondences for the classic warp from MediaPipe's FaceMesh.

dlib's 68 points say nothing about the cheeks and the forehead: between the jaw line and the
features the warp interpolates over large triangles, so target's cheekbones and temples land
wherever the triangle puts them. The mesh has points there. The vertices that lie away from
the 68 (and from the forehead points the warp adds above the brows) join the warp as extra
correspondences: the same vertex in ori's mesh and in target's.

Only when both faces have a mesh and target is not mirrored (``classic.oriented``).
"""

from __future__ import annotations

import numpy as np

# A vertex this close (share of the face size) to one of the 68 or a forehead point is left
# out: two nearby points moved by different rules make thin triangles that fold.
MIN_GAP = 0.07


def extra_indices(o_mesh: np.ndarray, anchors: np.ndarray, size: float) -> np.ndarray:
    """The mesh vertices of ori's face at least MIN_GAP x size from every anchor point (the
    68 and the forehead points), thinned so no two of them are closer than that either."""
    gap = MIN_GAP * size
    dist = np.linalg.norm(o_mesh[:, None, :] - anchors[None, :, :], axis=2).min(axis=1)
    chosen: list[int] = []
    for i in np.argsort(-dist):  # furthest from the anchors first
        if dist[i] < gap:
            break
        if chosen and np.linalg.norm(o_mesh[chosen] - o_mesh[i], axis=1).min() < gap:
            continue
        chosen.append(int(i))
    return np.asarray(sorted(chosen), dtype=np.int64)


def extras(o_mesh: np.ndarray | None, t_mesh: np.ndarray | None,
           anchors: np.ndarray, size: float) -> tuple[np.ndarray, np.ndarray]:
    """(ori's, target's) extra points, (0, 2) each when there are none to add."""
    empty = np.zeros((0, 2))
    if o_mesh is None or t_mesh is None or len(o_mesh) != len(t_mesh):
        return empty, empty
    index = extra_indices(o_mesh, anchors, size)
    if len(index) == 0:
        return empty, empty
    return o_mesh[index], t_mesh[index]
