"""The attack corpus (issue 11): each test reproduces one finding of the security review against the real code.

Fixtures shared by the security tests live here; the project-wide ones (`free_port`, `require_service`, media
stores) come from tests/conftest.py.
"""
