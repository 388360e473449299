"""What the judge asks: the VIEScore question texts and the images sent with them.

Adapted from the VIEScore paper's prompts (Ku et al., 2024). SC (semantic consistency) asks
about prompt following (t2i: one score; an edit: [edit success, no over-editing], with
source and result shown); PQ (perceptual quality) asks [naturalness, no artifacts] of the
result alone.

The emulator tells the questions apart by the number of images and by the words
"naturalness"/"artifact" (see ``runner.emulator.judge``): the SC texts below must never use
those words, the PQ text must.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from runner.images import open_image

JPEG_QUALITY = 90

CONTEXT = (
    "You are a professional digital artist. You will have to evaluate the effectiveness of "
    "the AI-generated image(s) based on given rules. All the input images are AI-generated. "
    "All humans in the images are AI-generated too, so you need not worry about privacy. "
    "Give your output in exactly this form, a JSON object and nothing else: "
    '{"score": [...], "reasoning": "..."} (keep the reasoning concise and short).'
)

T2I_SC = (
    "RULES: The image is an AI-generated image made from the text prompt below. The objective "
    "is to evaluate how successfully the image has been generated.\n"
    "From scale 0 to 10: a score from 0 to 10 will be given based on the success in following "
    "the prompt (0: the image does not follow the prompt at all; 10: the image follows the "
    "prompt perfectly).\n"
    "Put the score in a list such that output score = [score].\n\n"
    "Text prompt: {prompt}"
)

EDIT_SC = (
    "RULES: Two images will be provided: the first is the original image and the second an "
    "edited version of the first. The objective is to evaluate how successfully the editing "
    "instruction has been executed in the second image. Note that sometimes the two images "
    "might look identical due to the failure of the edit.\n"
    "From scale 0 to 10: a score from 0 to 10 will be given based on the success of the "
    "editing (0: the edited image does not follow the instruction at all; 10: it follows the "
    "instruction perfectly).\n"
    "A second score from 0 to 10 will rate the degree of overediting in the second image "
    "(0: the edited image is completely different from the original; 10: the edited image is "
    "a minimal yet effective edit of the original).\n"
    "{extra}"
    "Put the scores in a list such that output score = [score1, score2], where score1 rates "
    "the editing success and score2 the degree of overediting.\n\n"
    "Editing instruction: {prompt}"
)

VTTIE_EXTRA = (
    "The instruction edits text shown in the image: the edit succeeds when exactly the named "
    "text is added, removed or replaced as asked and spelled correctly; overediting includes "
    "a changed font, size or colour of the text and any change to the other text.\n"
)

PQ = (
    "RULES: The image is an AI-generated image. The objective is to evaluate how successfully "
    "the image has been generated.\n"
    "From scale 0 to 10: a score from 0 to 10 will be given based on image naturalness (0: "
    "the scene does not look natural at all, e.g. a wrong sense of distance, wrong shadows or "
    "wrong lighting; 10: the image looks natural).\n"
    "A second score from 0 to 10 will rate the image artifacts (0: the image contains a large "
    "portion of distortion, watermarks, scratches, blurred faces, unusual body parts or "
    "subjects that are not harmonized; 10: the image has no artifacts).\n"
    "Put the scores in a list such that output score = [naturalness, artifacts]."
)

REASK = (
    "Your previous answer could not be used. Answer again with only the JSON object "
    '{{"score": [...], "reasoning": "..."}}, where score holds exactly {n} number(s) from 0 to '
    "10."
)


def question(
    task_type: str, prompt: str, result_uri: str, source_uri: str | None
) -> tuple[list[dict[str, Any]], int]:
    """The SC question for a t2i or edit row: its message parts and how many scores it asks."""
    if source_uri is None:
        return [image_part(result_uri), text_part(T2I_SC.format(prompt=prompt))], 1
    extra = VTTIE_EXTRA if task_type == "vttie" else ""
    text = EDIT_SC.format(prompt=prompt, extra=extra)
    return [image_part(source_uri), image_part(result_uri), text_part(text)], 2


def pq_question(result_uri: str) -> list[dict[str, Any]]:
    """The PQ question's message parts: the result alone."""
    return [image_part(result_uri), text_part(PQ)]


def data_uri(path: Path, max_side: int) -> str:
    """Blocking: the image shrunk to ``max_side`` as a JPEG data URI (judges need no more)."""
    img = open_image(path, max_side=max_side)  # decoded at a reduced scale where it can be
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), resample=3)  # 3 = BICUBIC, cheap and good enough
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_part(uri: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": uri}}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}
