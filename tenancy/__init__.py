"""The businesses, who works in which, and the per-business scoping every other app builds on (lowest layer)."""
