"""Readers of real datasets on local disk, one module per format, each behind
:class:`~diffprobe.data.dataset.ClipDataset` and registered in :data:`diffprobe.data.registry.DATASETS`."""
