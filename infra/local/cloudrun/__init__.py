"""The Cloud Run Admin API v2 stand-in (`CloudRunStandin`): REST and gRPC fronts over one state."""
from .common import MAX_OPERATIONS, ApiError
from .images import DeployFailure, ImageChecker, ImageRef, parse_image
from .standin import CloudRunStandin, main

__all__ = ["MAX_OPERATIONS", "ApiError", "CloudRunStandin", "DeployFailure", "ImageChecker", "ImageRef",
           "main", "parse_image"]
