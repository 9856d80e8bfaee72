"""Getting Kvasir-SEG (download, safe extraction, pairing), splitting it, and loading it for PyTorch."""
