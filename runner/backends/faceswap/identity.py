"""Identity measurements: face embeddings and their similarity.

ArcFace (buffalo_l's recognizer, 512-d) when the inswapper backend runs; otherwise dlib's
128-d ResNet descriptor, whose own rule is Euclidean distance < 0.6 = same person.
"""

from __future__ import annotations

import numpy as np

from runner.backends.faceswap.detect import DlibModels, Face


def cosine(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    if a is None or b is None:
        return None
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return None
    return float(np.dot(a.ravel(), b.ravel()) / (na * nb))


def euclidean(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    if a is None or b is None:
        return None
    return float(np.linalg.norm(a.ravel() - b.ravel()))


def dlib_descriptor(models: DlibModels, rgb: np.ndarray, face: Face) -> np.ndarray:
    """dlib's 128-d descriptor of ``face`` (its 68 points give the alignment)."""
    import dlib

    rect = dlib.rectangle(*(round(float(v)) for v in face.box))
    parts = [dlib.point(round(float(x)), round(float(y))) for x, y in face.points]
    shape = dlib.full_object_detection(rect, parts)
    vec = models.recognizer.compute_face_descriptor(np.ascontiguousarray(rgb), shape, 0)
    return np.asarray(vec, dtype=np.float64)


def identity_scores(out: np.ndarray | None, target: np.ndarray | None,
                    ori: np.ndarray | None) -> dict[str, float | None]:
    """Cosine (reported) and Euclidean distance (dlib's metric) of the output's embedding to
    target's and to ori's, rounded to four places as results carry them."""
    return {
        "identity_target": rounded(cosine(out, target)),
        "identity_ori": rounded(cosine(out, ori)),
        "distance_target": rounded(euclidean(out, target)),
        "distance_ori": rounded(euclidean(out, ori)),
    }


def rounded(v: float | None) -> float | None:
    return None if v is None else round(v, 4)
