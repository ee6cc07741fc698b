"""The study of the user's own model and data (``normlab compare --model``) and the advice read from reports.

:mod:`.study` is the study itself (:class:`~.study.UserSpec` says what to compare); :mod:`.prepare` checks every
input before any run (the preflight); :mod:`.advise` answers ``normlab advise`` from the built-in studies' and the
user's reports.

May import: :mod:`normlab.lab.training`, :mod:`normlab.lab.judging` and the lab's base modules; it sits at the top
of the lab, under only the lab's facade (:mod:`normlab.lab`).
"""
