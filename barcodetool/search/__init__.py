"""Search primitives: exact blocked cosine k-NN over embeddings (knn), sequences encoded once (sequences), the
k-mer candidate index (kmer_index), the offsets of sequence pairs voted by shared k-mers (anchors), and anchored
pairwise identity, re-ranking and identity clustering (identity)."""

from .identity import (FALLBACKS, IUPAC_MODES, PairIdentity, aligned_identity, anchored_identity, candidate_union,
                       coverage_score, identity_graph_cluster, neighbour_pairs, pair_identity, rank_scored, rerank,
                       score_candidates)
from .kmer_index import (KMER_FALLBACK_BELOW, KMER_FALLBACK_DF, KMER_K, KMER_MAX_DF, KMER_QUERY_STRIDE, KmerIndex,
                         shared_kmer_counts)
from .knn import SEARCH_BLOCK_ELEMENTS, knn_search, largest_columns, normalize, sequence_groups
from .sequences import SequenceStore, as_store, decode, encode, reverse_complement

__all__ = ["FALLBACKS", "IUPAC_MODES", "PairIdentity", "aligned_identity", "anchored_identity", "candidate_union",
           "coverage_score", "identity_graph_cluster", "neighbour_pairs", "pair_identity", "rank_scored", "rerank",
           "score_candidates", "KMER_FALLBACK_BELOW", "KMER_FALLBACK_DF", "KMER_K", "KMER_MAX_DF",
           "KMER_QUERY_STRIDE", "KmerIndex", "shared_kmer_counts", "SEARCH_BLOCK_ELEMENTS", "knn_search",
           "largest_columns", "normalize",
           "sequence_groups", "SequenceStore", "as_store", "decode", "encode", "reverse_complement"]
