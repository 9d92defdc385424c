"""Helpers of the service tier only (imported as tests.service.helpers; fixtures live in conftest.py; what
the tools share with these tests is in support/)."""
from __future__ import annotations

import io
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def upload_data(files: dict[str, bytes]) -> dict:
    """A test client's multipart form data: one file field per lab file."""
    return {name: (io.BytesIO(data), name) for name, data in files.items()}
