"""kipc's C extensions (``_sig``, ``_ring``); import them only through ``kipc._platform.native``."""
