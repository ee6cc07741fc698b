"""The sweep: which stored runs are missing, packed into work items, trained on processes here or on a Ray cluster.

:mod:`.runner` plans a sweep (what the store already holds, packs, rounds) and runs it; :mod:`.work` is one work
item's life in a worker (train, store the rows); :mod:`.executors` are the engines (local processes, Ray);
:mod:`.checkpoint` saves a run in progress and the stable phase its larger budgets go on from.

May import: :mod:`normlab.lab.training` and the lab's base modules. Not the judging or the studies: a sweep trains
configurations, whoever asked for them.
"""
