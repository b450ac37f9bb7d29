"""mailrider.table: the table API, the built-in backends and the registry.

Import the pieces from their modules (``table.base``, ``table.registry``,
...); this package imports nothing itself so that a process needing only
one backend loads only that one.
"""
