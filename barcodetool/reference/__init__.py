"""Reference indexes: labelled, embedded barcodes with their k-mer index and calibrated decision thresholds."""

from .index import *  # noqa: F401,F403
from .index import ReferenceIndex, build_reference, open_reference  # noqa: F401
