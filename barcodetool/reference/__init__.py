"""Reference indexes: labelled, embedded barcodes with their k-mer index and calibrated decision thresholds.

    index.py        ReferenceIndex: the data, its identity layer (distinct sequences, k-mer index) and HDF5 file
    build.py        build_reference, open_reference (tables and FASTA indexed once and cached), BuildOptions
    decide.py       the decision rules (k-NN vote, identity rule) and their Thresholds
    candidates.py   the identity rule's candidates: k-mer and embedding searches scored by identity, identity_hits
    calibrate.py    thresholds set on the reference itself by leave-out searches (KnnCalibration,
                    IdentityCalibration; thresholds_for, calibrate_thresholds)
    update.py       records added to an index, indexes merged, without a rebuild (add_records, merge_indexes)
"""

from .build import (CACHE_GENERATION, BuildOptions, build_reference, cache_key, index_model_name, open_reference,
                    read_reference_records, reference_cache_dir, resolve_model_for_reference)
from .calibrate import (CALIBRATIONS, LEVELS, NOVEL_LEVEL, PRECISION_LEVEL, Calibration,
                        IdentityCalibration, KnnCalibration, calibrate_bin, calibrate_ranks, calibrate_thresholds,
                        calibration, precision_threshold, rejection_threshold, taxon_present, thresholds_for)
from .candidates import (IdentityHits, ScoredCandidates, embedding_needed, identity_hits, kmer_fallback, kmer_hits,
                         merge_ranked, nearest_bins, oriented_kmer_hits, search_candidates)
from .decide import (DEFAULT_K, DEFAULT_MIN_CONFIDENCE, DEFAULT_PRECISION, IDENTITY_CANDIDATES_EMBEDDING,
                     IDENTITY_CANDIDATES_KMER, IDENTITY_CANDIDATES_WIDE, IDENTITY_EMBED_BELOW, IDENTITY_WIDEN_BELOW,
                     IDENTITY_WIDEN_SCORED, MIN_NAMED_COLUMNS, NO_WIDENING, IdentityThresholds, KnnThresholds,
                     Thresholds, Votes, gate, identity_decide, vote, widen_parts, widen_setting)
from .index import (REFERENCE_FORMAT, REFERENCE_FORMAT_VERSION, IdentityLayer, ReferenceIndex, is_reference_file,
                    representative_records)
from .update import RECALIBRATE_SHARE, add_records, merge_indexes

__all__ = [
    "CACHE_GENERATION", "BuildOptions", "build_reference", "cache_key", "index_model_name", "open_reference",
    "read_reference_records", "reference_cache_dir", "resolve_model_for_reference",
    "CALIBRATIONS", "LEVELS", "NOVEL_LEVEL", "PRECISION_LEVEL", "Calibration",
    "IdentityCalibration", "KnnCalibration", "calibrate_bin", "calibrate_ranks", "calibrate_thresholds",
    "calibration", "precision_threshold", "rejection_threshold", "taxon_present", "thresholds_for",
    "IdentityHits", "ScoredCandidates", "embedding_needed", "identity_hits", "kmer_fallback", "kmer_hits",
    "oriented_kmer_hits",
    "merge_ranked", "nearest_bins", "search_candidates",
    "DEFAULT_K", "DEFAULT_MIN_CONFIDENCE", "DEFAULT_PRECISION", "IDENTITY_CANDIDATES_EMBEDDING",
    "IDENTITY_CANDIDATES_KMER", "IDENTITY_CANDIDATES_WIDE", "IDENTITY_EMBED_BELOW", "IDENTITY_WIDEN_BELOW",
    "IDENTITY_WIDEN_SCORED", "MIN_NAMED_COLUMNS", "IdentityThresholds", "KnnThresholds", "Thresholds",
    "NO_WIDENING", "Votes", "gate", "identity_decide", "vote", "widen_parts", "widen_setting",
    "REFERENCE_FORMAT", "REFERENCE_FORMAT_VERSION", "IdentityLayer", "ReferenceIndex", "is_reference_file",
    "representative_records",
    "RECALIBRATE_SHARE", "add_records", "merge_indexes",
]
