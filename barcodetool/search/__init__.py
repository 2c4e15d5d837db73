"""Search primitives: exact blocked cosine k-NN over embeddings (knn), anchored pairwise sequence identity and
re-ranking (identity), and the k-mer candidate index (kmer_index)."""
