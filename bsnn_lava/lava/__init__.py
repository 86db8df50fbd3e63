"""Lava integration: import-time compatibility fixes (``compat``); processes and the network builder
arrive in ``procs`` and ``build``."""
