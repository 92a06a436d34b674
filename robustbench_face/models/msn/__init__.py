"""The Modular Siamese Network: region masks, the network and its training."""
