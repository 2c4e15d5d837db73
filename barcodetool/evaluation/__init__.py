"""The benchmark protocol of the BarcodeMAE/BarcodeBERT papers, side by side with VSEARCH and BLAST."""
