"""The VIEScore judge: asks a vision-language model to score candidates, as GEdit-Bench does.

``reference`` (lmms-eval's own question texts and answer parser, read by path; ``builtin``
stands in without the wheel), ``questions`` (the request's layout and images), ``answers``
(reading an answer, the arithmetic, the pick), ``pacing`` (the judge models' quotas, requests
and tokens a minute), ``usage`` (calls, tokens, cost; the dry run's estimate), ``scorer``
(the ``Judge``), ``wins`` (which variants and models win; --learned).
"""
