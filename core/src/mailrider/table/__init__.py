"""mailrider.table."""
