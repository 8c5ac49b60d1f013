"""The PyTorch side: ``TokenDataset`` (``dataset.py``), one pass of it (``iterator.py``, ``pipeline.py``, ``feed.py``),
packing (``packing.py``, ``encode.py``), its batch count (``length.py``) and resume state (``resume.py``,
``docrefs.py``), ``to_device`` (``device.py``), ``threads_for`` (``cores.py``). May import streaming, text,
sources and the core; never serve or cli.
"""
