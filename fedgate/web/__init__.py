"""The web consoles' shared foundation: accounts (``auth``), sessions (``session``), the page
shell with CSRF and security headers (``app``), strings (``i18n``), protobuf views and forms
(``protoview``) and embedded serving (``serve``). The consoles themselves live with their hosts:
``adapters.console`` (staff, on each agency node) and the gateway's auditor console."""

from __future__ import annotations

__all__: list[str] = []
