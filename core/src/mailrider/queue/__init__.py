"""mailrider.queue."""
