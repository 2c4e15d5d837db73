"""Reading barcodes and writing outputs: record readers, format sniffing, atomic outputs, interruption state."""

from .readers import (FORMATS, MISSING_VALUES, SINTAX_RANKS, BarcodeRecord, ReadOptions, ReadStats, clean_sequence,
                      parse_fasta_header, parse_sintax_taxonomy, read_barcodes, read_fasta_taxonomy, sintax_header,
                      write_fasta)

__all__ = ["FORMATS", "MISSING_VALUES", "SINTAX_RANKS", "BarcodeRecord", "ReadOptions", "ReadStats", "clean_sequence",
           "parse_fasta_header", "parse_sintax_taxonomy", "read_barcodes", "read_fasta_taxonomy", "sintax_header",
           "write_fasta"]
