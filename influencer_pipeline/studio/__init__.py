"""The studio: one page listing every persona, its dataset, LoRA, coming posts, accounts and last failure."""
