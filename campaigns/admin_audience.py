"""The audience (recipients) in the admin: list, search and CSV upload.

Imported by campaigns/admin.py so that admin autodiscovery registers it.
"""

from __future__ import annotations
