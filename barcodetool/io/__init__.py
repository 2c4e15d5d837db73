"""Reading barcodes and writing outputs: record readers, format sniffing, atomic outputs, interruption state.

`readers` reads barcodes (cleaning, checks, ReadOptions, ReadStats); `sniff` opens an input and recognises its
compression and format; `fasta` and `tables` parse the two kinds of input (and `fasta` writes FASTA); `records`
holds the record type; `hdf5` opens barcodetool's own HDF5 files; `atomic`, `interrupts` and `streaming` serve
the outputs and the chunked reading of the commands.
"""

from ..taxonomy import SINTAX_RANKS
from .fasta import parse_fasta_header, parse_sintax_taxonomy, sintax_header, write_fasta
from .sniff import detect_format
from .readers import FORMATS, ReadOptions, ReadStats, clean_sequence, read_barcodes, read_fasta_taxonomy
from .records import MISSING_VALUES, BarcodeRecord

__all__ = ["FORMATS", "MISSING_VALUES", "SINTAX_RANKS", "BarcodeRecord", "ReadOptions", "ReadStats", "clean_sequence",
           "detect_format", "parse_fasta_header", "parse_sintax_taxonomy", "read_barcodes", "read_fasta_taxonomy",
           "sintax_header", "write_fasta"]
