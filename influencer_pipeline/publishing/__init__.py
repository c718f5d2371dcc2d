"""Publishing: per-platform publishers, the post ledger that makes publishing exactly-once, and account tokens."""
