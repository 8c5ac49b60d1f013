"""The PyTorch side: ``TokenDataset``, its pipeline threads, packing, resume state and the device path.

``dataset.py`` is ``TokenDataset`` (an ``IterableDataset`` of packed ``(inputs, targets)``),
``pipeline.py`` its tokenize and assembly threads, ``packing.py`` BOS-aligned best-fit
packing, ``resume.py`` the ``state_dict`` format and how a load is planned, ``device.py``
``to_device``, the pinned CUDA ring and ``threads_for``. Only ``dataset.py`` and
``device.py`` import torch; the rest is numpy.

May import: ``nanostream.streaming``, ``nanostream.text``, ``nanostream.sources`` and
the core. Never: ``serve``, ``cli``.
"""
