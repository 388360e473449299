"""The reference VIEScore judge's own texts and answer parser, read from the lmms-eval wheel.

GEdit-Bench's VIEScore (lmms-eval, ``lmms_eval/tasks/gedit_bench/viescore/``) is the
reference: ``vie_prompts.py`` holds its question texts and ``utils.py`` its tolerant parser
``mllm_output_to_dict``. ``make install`` installs the wheel without its dependencies; the two
files are loaded here BY PATH, never through ``import lmms_eval`` (whose ``__init__`` starts
the whole evaluation framework). When the wheel (or the ``regex`` module its parser imports)
is missing, the project's own equivalents stand in (``builtin``) and ``source`` says so.

The reference composes a question as ``"\\n".join([context, rule, rule_sc])`` with
``<prompt>`` (t2i) or ``<instruction>`` (an edit) replaced by the user's words; PQ is
``"\\n".join([context, pq])``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import structlog

from runner.backends.judge import builtin

log = structlog.get_logger(__name__)

__all__ = ["PACKAGE", "REFERENCE_DIR", "Reference", "reference"]

PACKAGE = "lmms_eval"  # the distribution's name as pip records it (PyPI: lmms-eval)
REFERENCE_DIR = "lmms_eval/tasks/gedit_bench/viescore"
# the names read from vie_prompts.py: ours -> the reference's
_TEXTS = {
    "context": "_context_no_delimit",
    "t2i_rule": "_prompts_0shot_one_image_gen_rule",
    "t2i_sc": "_prompts_0shot_t2i_rule_SC",
    "edit_rule": "_prompts_0shot_two_image_edit_rule",
    "edit_sc": "_prompts_0shot_tie_rule_SC",
    "pq": "_prompts_0shot_rule_PQ",
}


@dataclass(frozen=True)
class Reference:
    """The judge's texts and parser, and where they come from."""

    source: str  # "lmms-eval 0.7.3 (<folder>)" or "built-in (<why>)"
    official: bool  # the reference's own files are in use
    context: str
    t2i_rule: str
    t2i_sc: str
    edit_rule: str
    edit_sc: str
    pq: str
    # an answer text -> a dict holding "score" (and usually "reasoning"), or False
    parse: Callable[[str], Any]

    def t2i_question(self, prompt: str) -> str:
        return "\n".join([self.context, self.t2i_rule, self.t2i_sc]).replace("<prompt>", prompt)

    def edit_question(self, instruction: str) -> str:
        text = "\n".join([self.context, self.edit_rule, self.edit_sc])
        return text.replace("<instruction>", instruction)

    def pq_question(self) -> str:
        return "\n".join([self.context, self.pq])


def _load(path: Path, name: str) -> ModuleType:
    """Execute one file of the wheel as a module of its own (not put in sys.modules)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _quiet(*args: Any, **_: Any) -> None:
    """Stands in for ``print`` inside the reference parser: its notes go to the debug log."""
    log.debug("judge.reference_parser", note=" ".join(str(a) for a in args)[:300])


def _builtin(why: str) -> Reference:
    return Reference(
        source=f"built-in ({why})",
        official=False,
        context=builtin.CONTEXT,
        t2i_rule=builtin.T2I_RULE,
        t2i_sc=builtin.T2I_SC,
        edit_rule=builtin.EDIT_RULE,
        edit_sc=builtin.EDIT_SC,
        pq=builtin.PQ,
        parse=builtin.parse,
    )


def _official() -> Reference:
    """The wheel's files; raises LookupError / ImportError / AttributeError when unusable."""
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise LookupError("lmms-eval is not installed; make install adds it") from None
    folder = Path(str(dist.locate_file(REFERENCE_DIR)))
    prompts_file, utils_file = folder / "vie_prompts.py", folder / "utils.py"
    for f in (prompts_file, utils_file):
        if not f.is_file():
            raise LookupError(f"lmms-eval {dist.version} has no {REFERENCE_DIR}/{f.name}")
    texts = _load(prompts_file, "_runner_reference_vie_prompts")
    utils = _load(utils_file, "_runner_reference_vie_utils")  # imports regex
    parse = utils.mllm_output_to_dict
    # its module-level print is looked up in the module's globals first: silenced there
    utils.print = _quiet  # type: ignore[attr-defined]
    values = {ours: getattr(texts, theirs) for ours, theirs in _TEXTS.items()}
    if not all(isinstance(v, str) for v in values.values()):
        raise AttributeError("vie_prompts.py holds a non-text where a question text belongs")
    return Reference(
        source=f"lmms-eval {dist.version} ({folder})",
        official=True,
        parse=lambda text: parse(text, give_up_parsing=False),  # never a guessed score
        **values,
    )


@cache
def reference() -> Reference:
    """The reference's texts and parser when the wheel is installed, else the built-in ones
    (read once per process)."""
    try:
        return _official()
    except (LookupError, ImportError, AttributeError, OSError, SyntaxError) as exc:
        log.info("judge.reference_missing", reason=str(exc))
        return _builtin(str(exc))
