"""Local face swap for the deepfake rows: ``ori_image`` with the face of ``target_image``.

Processors chosen by name, FaceFusion-style: one interface per kind (``interfaces``), the
names registered in ``processors.PROCESSORS[kind][name]``, the pipeline built from the
worker's config by ``processors.Loader`` (``faceswap.backend`` names the swapper; "auto"
is resolved in ``pool``; a swapper that cannot load falls back along ``FALLBACKS``).

=========== ============= ===================================================================
kind        name          where
=========== ============= ===================================================================
detector    dlib          ``detect.DlibDetector`` (HOG, padded HOG, then the CNN)
detector    scrfd         ``inswapper.ScrfdDetector`` (buffalo_l's SCRFD, five key points)
landmarker  mediapipe     ``detect.MeshTo68`` over ``landmark_mediapipe.MeshLandmarker``
                          (dlib's 68 points with FaceMesh's 468 for the warp; dlib alone
                          for a face the mesh does not see; falls back to "dlib" when its
                          model is missing)
landmarker  dlib          ``detect.DlibLandmarker`` (68 points)
swapper     classic       ``swappers.ClassicSwapper`` (the warp and blend of ``classic``)
swapper     inswapper     ``swappers.InswapperSwapper`` (models loaded in ``inswapper``)
mask        region        ``masks.RegionMask`` (soft ellipse: ori's contrast and sharpness)
mask        glasses       ``masks.GlassesMask`` (ori's frames removed whole; ``glasses``)
enhancer    gfpgan,       ``enhance.Enhancer`` (GFPGAN 1.4 / CodeFormer ONNX, chosen by the
            codeformer    weights file found in models_dir)
=========== ============= ===================================================================

classic: detector dlib, the configured landmarker (``faceswap.landmarker``, "auto" in
``pool``: mediapipe when installed), the mesh's cheek and forehead points in the warp
(``mesh_warp``), its own masks per ``classic.Variant``, the pose and expression guard
(``guard``: lower-risk variants for pairs unlike in pose or expression, among them
target's mesh turned to ori's head pose in 3D, ``pose3d``; the variant kept by identity and
realism), dlib identity. inswapper: detector scrfd, masks region then glasses
(the configured finder, when dlib is installed; with it also the realism check), ArcFace
identity. Both: ori's colour mode and the face's contrast and detail matched to ori's
(``tone``, ``blend.match_sharpness``), the enhancer when its weights exist, and every
variant made returned with its scores (``result.SwapVariant``), the offline choice marked.

Around them: ``detect.FaceFinder`` (a detector and a landmarker: main face, face near),
``identity`` (embeddings and scores), ``tone`` (colour mode, contrast and chroma measured
and matched), ``jpeg`` (outputs saved the way their source was, greyscale and an earlier compression
included),
``models`` (where weights live), ``worker`` (the per-process ``Engine``), ``pool`` (the
process pool the scheduler awaits), ``ray_pool`` (the same as Ray actors, with ``--ray``;
only then is ray imported).
"""

from __future__ import annotations

from runner.backends.faceswap.pool import FaceSwapPool
from runner.backends.faceswap.result import FaceSwapError, SwapResult, SwapVariant

__all__ = ["FaceSwapError", "FaceSwapPool", "SwapResult", "SwapVariant"]
