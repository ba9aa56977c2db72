"""The Cloud Run stand-in's historical module path: the code lives in the `infra.local.cloudrun` package.

CLI: `python -m infra.local.cloudrun_standin --port N --registry-host 127.0.0.1:P [--grpc-port M]`.
"""
from __future__ import annotations

import sys

from .cloudrun import (
    MAX_OPERATIONS,
    ApiError,
    CloudRunStandin,
    DeployFailure,
    ImageChecker,
    ImageRef,
    main,
    parse_image,
)

__all__ = ["MAX_OPERATIONS", "ApiError", "CloudRunStandin", "DeployFailure", "ImageChecker", "ImageRef",
           "main", "parse_image"]

if __name__ == "__main__":
    sys.exit(main())
