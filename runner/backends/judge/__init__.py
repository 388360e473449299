"""The VIEScore judge: asks a vision-language model to score candidates.

``questions`` (what is asked), ``answers`` (parsing, arithmetic, the pick), ``pacing``
(requests and tokens a minute), ``scorer`` (the ``Judge``).
"""
