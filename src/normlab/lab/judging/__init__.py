"""Judging: from stored runs to verdicts and the report.

:mod:`.study` is what a study is (its claims, configs and analysis helpers); :mod:`.fairness` tunes each compared
setting's learning rate and judges each verdict over budgets; :mod:`.verdicts` holds the paired tests and the rule
that settles a verdict; :mod:`.published` the published numbers; :mod:`.report` writes the HTML report.

May import: the lab's base modules and, for a study's data and configs, :mod:`normlab.lab.training`. Never the
sweep: judging reads stored rows, however they were trained.
"""
