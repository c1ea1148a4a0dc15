"""Integrations with training frameworks (Lightning, Hugging Face), each an optional import.

Empty for now: each integration will be a module here that imports its framework only when used, so that
``import diagnostics`` never imports them. It may import :mod:`diagnostics.recording` and
:mod:`diagnostics.store`; nothing imports it but the user's code.
"""
