"""Token data on disk: stores of tokenised documents and the samples built from them."""
