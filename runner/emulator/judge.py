"""The emulated Qwen-VL judge: deterministic VIEScore-style scores from image content.

How the emulator tells which question is asked (all texts of all messages are joined and
case-folded; images are every ``image_url`` part, in order):

* 2 or more images -> **edit** (semantic consistency of an edit): the first image is the
  source, the last the edited result. Answer ``score: [edit_success, over_editing]``.
* 1 image and the text mentions both "naturalness" and "artifact" -> **pq** (perceptual
  quality). Answer ``score: [naturalness, artifacts]``.
* 1 image otherwise -> **t2i** (prompt following). Answer ``score: [prompt_following]``.
* no image -> ``score: [0]`` with a reasoning that says so.

The answer's form is the config's ``judge_answers`` (``Verdict.as_content``): the bare JSON
object, or the forms real VLMs give that the reference's parser reads (a fenced object in
prose, a bare list, an unquoted value).

Scores are integers 0-10, computed on a grey copy shrunk to at most 512 px:

* sharpness ``s`` = clamp((log10(var(Laplacian) + 1) - 0.5) / 2.5): blur lowers it.
* structure ``c`` = clamp((corr - 0.2) / 0.5), corr = correlation of the image with itself
  shifted one pixel: pure noise has corr ~ 0, photos and renders > 0.7.
* flat: grey standard deviation < 4 (a blank picture).
* pq: naturalness = round(10 * c * (0.4 + 0.6 s)), artifacts = round(10 * c * (0.7 + 0.3 s));
  flat images score at most 1 on both. A sharp textured image therefore outscores a blurred
  copy of itself (lower s) and pure noise (c ~ 0 drags both down).
* edit: changed = share of pixels whose mean absolute RGB difference from the source
  (result resized to the source size) exceeds 12. edit_success = round(10 * clamp((changed
  - 0.005) / 0.095)): an unchanged "edit" scores 0, 10 % changed or more scores 10.
  over_editing = 10 up to 30 % changed, falling linearly to 0 at 95 % changed.
* t2i: round(10 * c * (0.3 + 0.4 s + 0.3 e)), e = grey-histogram entropy / 7 bits
  (clamped); flat images score at most 1. It ignores the prompt: any deterministic,
  content-based score serves to test that a pipeline keeps the better candidate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from runner.emulator.images import decode_rgb

Question = Literal["edit", "pq", "t2i", "none"]
AnswerStyle = Literal["json", "fenced", "list", "unquoted"]
_ANALYSIS_SIDE = 512
_PQ_WORDS = ("naturalness", "artifact")


@dataclass(frozen=True)
class Verdict:
    question: Question
    scores: list[int]
    reasoning: str

    def as_content(self, style: AnswerStyle = "json") -> str:
        """The answer as a VLM writes it: ``json`` the bare object; ``fenced`` the object in a
        ```json fence between two sentences; ``list`` the scores alone (``[7, 8]``, one score
        as a bare number); ``unquoted`` the lowest score as a number and the reasoning not
        quoted (``{"score": 7, "reasoning": fine}``, which the reference repairs)."""
        body = json.dumps({"score": self.scores, "reasoning": self.reasoning})
        if style == "fenced":
            return f"Here is my evaluation:\n```json\n{body}\n```\nI hope this helps."
        if style == "list":
            return json.dumps(self.scores) if len(self.scores) > 1 else str(self.scores[0])
        if style == "unquoted":
            text = self.reasoning.replace(",", ";").replace("}", ")").replace('"', "'")
            return f'{{"score": {min(self.scores)}, "reasoning": {text}}}'
        return body


def classify(text: str, n_images: int) -> Question:
    if n_images >= 2:
        return "edit"
    if n_images == 1:
        folded = text.casefold()
        return "pq" if all(w in folded for w in _PQ_WORDS) else "t2i"
    return "none"


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, x))


def _grey(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)


def sharpness(grey: np.ndarray) -> float:
    lap_var = float(cv2.Laplacian(grey, cv2.CV_32F).var())
    return _clamp((math.log10(lap_var + 1.0) - 0.5) / 2.5)


def structure(grey: np.ndarray) -> float:
    a, b = grey[:, :-1].ravel(), grey[:, 1:].ravel()
    if a.std() < 1e-6 or b.std() < 1e-6:
        return 1.0  # perfectly flat: no noise; flatness is penalised separately
    corr = float(np.corrcoef(a, b)[0, 1])
    return _clamp((corr - 0.2) / 0.5)


def _is_flat(grey: np.ndarray) -> bool:
    return float(grey.std()) < 4.0


def _entropy(grey: np.ndarray) -> float:
    hist = np.bincount(grey.astype(np.uint8).ravel(), minlength=256).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log2(p)).sum())


def score_pq(rgb: np.ndarray) -> Verdict:
    grey = _grey(rgb)
    s, c = sharpness(grey), structure(grey)
    nat = round(10 * c * (0.4 + 0.6 * s))
    art = round(10 * c * (0.7 + 0.3 * s))
    note = f"sharpness {s:.2f}, structure {c:.2f}"
    if _is_flat(grey):
        nat, art = min(nat, 1), min(art, 1)
        note += "; the image is nearly blank"
    elif c < 0.3:
        note += "; looks like noise"
    return Verdict("pq", [nat, art], note)


def changed_fraction(source: np.ndarray, edited: np.ndarray) -> float:
    if edited.shape[:2] != source.shape[:2]:
        edited = cv2.resize(
            edited, (source.shape[1], source.shape[0]), interpolation=cv2.INTER_AREA
        )
    diff = np.abs(source.astype(np.int16) - edited.astype(np.int16)).mean(axis=2)
    return float((diff > 12).mean())


def score_edit(source: np.ndarray, edited: np.ndarray) -> Verdict:
    frac = changed_fraction(source, edited)
    success = round(10 * _clamp((frac - 0.005) / 0.095))
    over = round(10 * _clamp((0.95 - frac) / 0.65))
    note = f"{frac * 100:.1f}% of the picture changed"
    if success == 0:
        note += "; the requested edit was not made"
    if over < 5:
        note += "; the edit rewrote most of the picture"
    return Verdict("edit", [success, over], note)


def score_t2i(rgb: np.ndarray) -> Verdict:
    grey = _grey(rgb)
    s, c = sharpness(grey), structure(grey)
    e = _clamp(_entropy(grey) / 7.0)
    score = round(10 * c * (0.3 + 0.4 * s + 0.3 * e))
    note = f"sharpness {s:.2f}, structure {c:.2f}, entropy {e:.2f}"
    if _is_flat(grey):
        score = min(score, 1)
        note += "; the image is nearly blank"
    return Verdict("t2i", [score], note)


def judge(text: str, images: list[bytes]) -> Verdict:
    """Blocking: decodes and scores. Raises ValueError for undecodable images."""
    question = classify(text, len(images))
    if question == "none":
        return Verdict("none", [0], "no image was provided")
    try:
        arrays = [decode_rgb(data, _ANALYSIS_SIDE) for data in (images[0], images[-1])]
    except Exception as exc:  # PIL raises several types for junk input
        raise ValueError(f"cannot decode image: {exc}") from exc
    if question == "edit":
        return score_edit(arrays[0], arrays[1])
    if question == "pq":
        return score_pq(arrays[0])
    return score_t2i(arrays[0])
