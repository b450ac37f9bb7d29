"""mailrider.ipc."""
