"""mailrider.proc."""
