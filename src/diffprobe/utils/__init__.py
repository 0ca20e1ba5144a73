"""Small shared helpers: atomic file writes, device selection, seeding."""
