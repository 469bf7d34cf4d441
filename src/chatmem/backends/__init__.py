"""Storage backends, one module per system; see chatmem.registry."""
