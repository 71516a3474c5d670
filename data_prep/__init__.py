"""data_prep: every way data enters the benchmark ends in one dataset directory (see manifest.py)."""
from .errors import DataPrepError
from .manifest import SLICE_LABELS, Stack, load_image, read_manifest, write_dataset

__all__ = ["DataPrepError", "SLICE_LABELS", "Stack", "load_image", "read_manifest", "write_dataset"]
