"""lmforge: corpus to released, evaluated language model, with lineage on every artifact."""

__version__ = "0.1.0"
