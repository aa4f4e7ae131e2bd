"""The one user-facing error type.

Anything the user can fix (a bad config, a missing file, a malformed data line) is raised as
`LlmftError`; the CLI prints its message as one paragraph on stderr and exits with status 2,
without a traceback. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class LlmftError(Exception):
    """An error the user can fix. The message says where (file, line or key) and what to do."""

    exit_code = 2
