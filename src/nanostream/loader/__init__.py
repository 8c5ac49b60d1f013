"""The PyTorch side: ``TokenDataset``, its pipeline threads, packing, resume state and the device path.

``dataset.py`` is ``TokenDataset`` (an ``IterableDataset`` of packed ``(inputs, targets)``, one
dataset or a weighted mix), ``length.py`` its batch count, ``sharer.py`` how nodes tell each other
row-group counts through torch.distributed's store, ``iterator.py`` one pass of it, ``feed.py`` one
source's tokenize thread and packing buffer, ``pipeline.py`` the assembly thread (each row from
one source), ``threads.py`` the threads' stop-aware queues, ``encode.py`` a tokenizer's output as
BOS-first flat token arrays, ``packing.py`` BOS-aligned best-fit packing, ``resume.py`` the ``state_dict`` format and how a load is planned, ``device.py``
``to_device`` and the pinned CUDA ring, ``cores.py`` ``threads_for``. Only ``dataset.py``,
``iterator.py``, ``device.py``, ``cores.py`` and ``sharer.py`` import torch; the rest is numpy.

May import: ``nanostream.streaming``, ``nanostream.text``, ``nanostream.sources`` and
the core. Never: ``serve``, ``cli``.
"""
