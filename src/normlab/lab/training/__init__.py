"""Training: one run of the lab, from its typed configuration to its metrics and curves.

The data (:mod:`.data`, the user's model and data: :mod:`.inputs`), the models (:mod:`.models`: the ConvNet, the
character transformer), the one training loop (:mod:`.loop`, budgets branched off one trajectory), the probes
(:mod:`.probes`), packs of runs trained as one model (:mod:`.packed`), the ranks of a distributed run
(:mod:`.distributed_run`), the user's model (:mod:`.user_model`) and the entry point that picks among them
(:mod:`.train`).

May import: the norms (``normlab.nn``, ``normlab.registry``, ``normlab.transform``) and the lab's base modules
(:mod:`normlab.lab.config`, :mod:`normlab.lab.metrics`, :mod:`normlab.lab.store`). Nothing here imports the sweep,
the judging or a study: every file here is training code, hashed into each stored run's key
(:data:`normlab.lab.store.TRAINING_CODE`).
"""
