"""The modules of bench/run: Tern against nginx, HAProxy and the bare backend."""
