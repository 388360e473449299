"""Local face swap for the deepfake rows: ``ori_image`` with the face of ``target_image``.

Processors, one module each (FaceFusion's layout): ``detect`` (dlib faces and landmarks),
``classic`` (the offline swapper), ``inswapper`` (insightface), ``blend`` (masks, colour,
light, occluders, Poisson), ``glasses`` (frames removed whole, never half), ``jpeg``
(outputs saved the way their source was), ``enhance`` (GFPGAN / CodeFormer ONNX),
``identity`` (embeddings), ``pool`` (the process pool the scheduler awaits), ``ray_pool``
(the same as Ray actors, with ``--ray``; only then is ray imported).
"""

from __future__ import annotations

from runner.backends.faceswap.pool import FaceSwapPool
from runner.backends.faceswap.result import FaceSwapError, SwapResult

__all__ = ["FaceSwapError", "FaceSwapPool", "SwapResult"]
