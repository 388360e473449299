"""The swapper processors: "classic" (dlib landmarks, ``classic``'s warp and blend, dlib's
descriptor as identity) and "inswapper" (insightface's inswapper_128 on SCRFD faces,
ArcFace identity). Each takes ori and target as RGB, swaps target's face into ori's
picture, and measures identity on the JPEG bytes it delivers.

A swapper is given its other processors (detector, landmarker, masks, enhancer) by
``processors``; it does not choose them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from runner.backends.faceswap import classic, guard, jpeg, tone
from runner.backends.faceswap.detect import DlibModels, Face, FaceFinder, main_face_index
from runner.backends.faceswap.enhance import five_points
from runner.backends.faceswap.identity import (
    dlib_descriptor,
    euclidean,
    identity_scores,
    rounded,
)
from runner.backends.faceswap.inswapper import InsightSwapper
from runner.backends.faceswap.interfaces import Detector, Enhancer, Mask
from runner.backends.faceswap.result import FaceSwapBadInput, SwapResult, SwapVariant

# Identity cosine traded for one grey level of added edge at the seam. At 0.004 the seam
# decided: best-of-3 took "poisson" for 213 of 250 rows and lost 0.04 in dlib distance.
SEAM_WEIGHT = 0.001

# Below every variant whose output is closer to target than to ori: a lower-risk variant
# that keeps too much of ori's face (a pair whose heads are turned far apart) is only taken
# when no variant swaps the identity.
NOT_SWAPPED = 1.0

F = TypeVar("F")


def swapped(score: dict[str, Any]) -> bool:
    """Whether a candidate's output is closer to target than to ori (dlib cosine)."""
    target, ori = score.get("identity_target"), score.get("identity_ori")
    return target is not None and ori is not None and target > ori


def main_faces(find: Callable[[np.ndarray], F | None], ori: np.ndarray,
               target: np.ndarray) -> tuple[F, F]:
    """The main face of each picture, or the row's reason why there is none."""
    ori_face = find(ori)
    if ori_face is None:
        raise FaceSwapBadInput("no face found in ori_image")
    target_face = find(target)
    if target_face is None:
        raise FaceSwapBadInput("no face found in target_image")
    return ori_face, target_face


def ms_since(t: float) -> float:
    return round((time.perf_counter() - t) * 1000, 1)


class _Swapper:
    name = ""
    embedding = ""

    def __init__(self, enhancer: Enhancer | None) -> None:
        self.enhancer = enhancer

    @property
    def providers(self) -> list[str]:
        return []

    def _enhance(self, out: np.ndarray, kps: np.ndarray | None,
                 info: dict[str, Any]) -> np.ndarray:
        if self.enhancer is None or kps is None:
            return out
        info["enhancer"] = self.enhancer.name
        return self.enhancer.enhance(out, kps)

    def _result(self, data: bytes, variants: list[SwapVariant],
                detail: dict[str, Any]) -> SwapResult:
        return SwapResult(
            jpeg=data,
            backend=self.name,
            identity_target=detail["identity_target"],
            identity_ori=detail["identity_ori"],
            embedding=self.embedding,
            # Who chose among the variants: here the offline score; a judge that picks
            # another variant by the competition's formula says so instead.
            detail={**detail, "chosen_by": "offline"},
            variants=variants,
        )


class ClassicSwapper(_Swapper):
    """Offline: faces from any detector + 68-point landmarker, ``classic.swap`` per variant;
    every variant comes back (for the judge), and the offline pick among ``candidates`` is
    the best by dlib identity to target, less a seam penalty, plus the guard's realism, less
    a penalty for a variant that still looks like ori."""

    name = "classic"
    embedding = "dlib"

    def __init__(self, finder: FaceFinder, models: DlibModels, enhancer: Enhancer | None,
                 candidates: int) -> None:
        super().__init__(enhancer)
        self.finder = finder
        self.models = models
        self.candidates = candidates

    def swap(self, ori: np.ndarray, target: np.ndarray, style: jpeg.JpegStyle) -> SwapResult:
        timings: dict[str, float] = {}
        t = time.perf_counter()
        ori_face, target_face = main_faces(self.finder.main_face, ori, target)
        timings["detect"] = ms_since(t)
        t = time.perf_counter()
        e_ori = dlib_descriptor(self.models, ori, ori_face)
        e_target = dlib_descriptor(self.models, target, target_face)
        timings["embed"] = ms_since(t)

        tried: list[dict[str, Any]] = []
        made: list[SwapVariant] = []
        best: tuple[float, bytes, dict[str, Any]] | None = None
        spent = [0.0, 0.0]  # seconds swapping, seconds measuring
        # A pair whose poses or expressions differ much also tries the lower-risk variants
        # (``guard``), however many candidates are configured.
        found = guard.gaps(ori_face.points, target_face.points, classic.yaw)
        variants = [*classic.VARIANTS[: max(1, self.candidates)],
                    *(v for v in guard.guard_variants(found, classic.VARIANTS[0])
                      if v.warp != "turned" or classic.can_turn(ori_face, target_face))]
        for variant in variants:
            data, info, score = self._candidate(ori, ori_face, target, target_face, variant,
                                                style, (e_target, e_ori), spent)
            score["realism"] = round(guard.realism(info, found, score.pop("distortion")), 3)
            tried.append(score)
            # Identity first, realism too: a variant that moves identity a little less but
            # leaves no seam, no displaced feature and no unhandled gap is the better picture.
            key = (score["identity_target"] if score["identity_target"] is not None else -2.0)
            key -= SEAM_WEIGHT * float(info.get("seam", 0.0))
            key += guard.REALISM_WEIGHT * score["realism"]
            if not swapped(score):  # a variant that leaves ori's identity is no swap at all
                key -= NOT_SWAPPED
            made.append(SwapVariant(name=variant.name, jpeg=data,
                                    identity_target=score["identity_target"],
                                    identity_ori=score["identity_ori"],
                                    realism=score["realism"], offline_score=round(key, 4)))
            if best is None or key > best[0]:
                best = (key, data, {**info, **score})
        assert best is not None
        timings["swap"] = round(spent[0] * 1000, 1)
        timings["measure"] = round(spent[1] * 1000, 1)
        _, data, chosen = best
        for made_variant in made:
            made_variant.chosen = made_variant.name == chosen["variant"]
        return self._result(data, made, {
            **chosen,
            "faces": {"ori": ori_face.how, "target": target_face.how},
            "distance_ori_target": rounded(euclidean(e_ori, e_target)),
            "gaps": found.as_dict(),
            "candidates": tried if len(tried) > 1 else [],
            "timings_ms": timings,
        })

    def _candidate(self, ori: np.ndarray, ori_face: Face, target: np.ndarray,
                   target_face: Face, variant: classic.Variant, style: jpeg.JpegStyle,
                   embeddings: tuple[np.ndarray, np.ndarray],
                   spent: list[float]) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
        """One variant: its JPEG, what the swap did, and its identity measured."""
        t = time.perf_counter()
        out, info = classic.swap(ori, ori_face, target, target_face, variant)
        dst_points = np.asarray(info.pop("dst_points"))
        out = self._enhance(out, five_points(ori_face.points), info)
        data = jpeg.save_like_source(out, style, ori)
        spent[0] += time.perf_counter() - t
        t = time.perf_counter()
        # Measured on the bytes that are delivered, not on the array before JPEG.
        delivered = jpeg.decode(data)
        out_face = self.finder.face_near(delivered, ori_face)
        e_out = dlib_descriptor(self.models, delivered, out_face)
        spent[1] += time.perf_counter() - t
        score = {
            "variant": variant.name,
            **identity_scores(e_out, *embeddings),
            "output_face": out_face.how,
            "seam": info.get("seam"),
            "distortion": guard.distortion(out_face.points, dst_points, ori_face.size),
        }
        return data, info, score


class InswapperSwapper(_Swapper):
    """insightface's inswapper_128: SCRFD faces, ArcFace identity, then ori's colour mode
    and the mask steps (contrast and detail matched to ori's in the face's region, ori's
    frames removed whole). With a 68-point ``finder`` (dlib installed), its one variant's
    realism is checked like the classic swap's: the features found on the output where
    ori's were (the inswapper keeps ori's pose and expression)."""

    name = "inswapper"
    embedding = "arcface"

    def __init__(self, models: InsightSwapper, detector: Detector, masks: Sequence[Mask],
                 enhancer: Enhancer | None, finder: FaceFinder | None = None) -> None:
        super().__init__(enhancer)
        self.models = models
        self.detector = detector
        self.masks = tuple(masks)
        self.finder = finder

    @property
    def providers(self) -> list[str]:
        return list(self.models.providers)

    def _main_face(self, rgb: np.ndarray) -> Any | None:
        found = self.detector.detect(rgb)
        if len(found.boxes) == 0:
            return None
        index = main_face_index(found.boxes.astype(np.float64), rgb.shape)
        return self.models.face(np.ascontiguousarray(rgb[:, :, ::-1]), found, index)

    def swap(self, ori: np.ndarray, target: np.ndarray, style: jpeg.JpegStyle) -> SwapResult:
        timings: dict[str, float] = {}
        t = time.perf_counter()
        ori_face, target_face = main_faces(self._main_face, ori, target)
        timings["detect"] = ms_since(t)
        t = time.perf_counter()
        # Direction: ori's picture, ori's face replaced, target's identity as the source.
        out_bgr = self.models.swap(np.ascontiguousarray(ori[:, :, ::-1]), ori_face, target_face)
        out = np.ascontiguousarray(out_bgr[:, :, ::-1])
        ori_mono, target_mono = tone.monochrome(ori), tone.monochrome(target)
        info: dict[str, Any] = {"variant": "inswapper", "colour_modes": {
            "ori": "grey" if ori_mono else "colour", "target": "grey" if target_mono else "colour"}}
        if ori_mono or target_mono:
            # ori's colour on the new face (the swap keeps ori's geometry): a grey ori
            # stays grey, a grey target takes ori's skin, lips and eyes.
            out = tone.with_chroma(out, ori)
        for mask in self.masks:
            out, said = mask.apply(ori, out, ori_face.bbox)
            info.update(said)
        kps = None if ori_face.kps is None else np.asarray(ori_face.kps, dtype=np.float64)
        out = self._enhance(out, kps, info)
        data = jpeg.save_like_source(out, style, ori)
        timings["swap"] = ms_since(t)
        t = time.perf_counter()
        delivered = jpeg.decode(data)
        e_out = self.models.embedding_near(np.ascontiguousarray(delivered[:, :, ::-1]), ori_face)
        e_target = np.asarray(target_face.normed_embedding, dtype=np.float64)
        e_ori = np.asarray(ori_face.normed_embedding, dtype=np.float64)
        scores = identity_scores(e_out, e_target, e_ori)
        realism = self._realism(ori, delivered)
        timings["measure"] = ms_since(t)
        offline = scores["identity_target"] if scores["identity_target"] is not None else -2.0
        variant = SwapVariant(name="inswapper", jpeg=data,
                              identity_target=scores["identity_target"],
                              identity_ori=scores["identity_ori"], realism=realism,
                              offline_score=offline, chosen=True)
        return self._result(data, [variant], {
            **info,
            **scores,
            "realism": realism,
            "distance_ori_target": rounded(euclidean(e_ori, e_target)),
            "providers": self.providers,
            "timings_ms": timings,
        })

    def _realism(self, ori: np.ndarray, delivered: np.ndarray) -> float | None:
        """``guard.realism`` of the output: ori's 68 points found again on it (no gap: the
        pose and expression are ori's); None without a finder or a face in ori for it."""
        if self.finder is None:
            return None
        ori_face = self.finder.main_face(ori)
        if ori_face is None:
            return None
        out_face = self.finder.face_near(delivered, ori_face)
        moved = guard.distortion(out_face.points, ori_face.points, ori_face.size)
        return round(guard.realism({}, guard.Gaps(0.0, 0.0, 0.0), moved), 3)


__all__ = ["SEAM_WEIGHT", "ClassicSwapper", "InswapperSwapper", "main_faces"]
