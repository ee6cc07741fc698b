"""The built-in studies, one file each; ``STUDIES`` is the name -> study table ``normlab compare`` runs in order.

A study file reads top to bottom: its claim, its configs, its analysis, its verdicts. May import: the judging
(:mod:`normlab.lab.judging`), the lab's base modules and, for data and configs, :mod:`normlab.lab.training`.
"""

from . import batch_dependence, batch_size, contrast, distributed, learning_rate, online, sequence, weight_decay

STUDIES = {
    m.STUDY.name: m.STUDY
    for m in (batch_size, online, learning_rate, weight_decay, batch_dependence, contrast, sequence, distributed)
}

__all__ = ["STUDIES"]
