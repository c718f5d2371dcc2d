"""The content calendar: plans of posts, the writers that produce them, and the reels rendered from them."""
